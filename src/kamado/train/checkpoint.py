"""Checkpoints: safetensors tensors + JSON state, an integrity record, written atomically, keep-last-N.

A checkpoint is a folder `step_00000100/` holding
  model.safetensors       model weights (loadable alone, e.g. for generation or export)
  optimizer.safetensors   AdamW moments and step counters, keyed by parameter name
  rng.safetensors         torch's CPU RNG state (a uint8 tensor)
  state.json              step, data-loader position, stability-monitor history, skipped batches, config
  integrity.json          size and SHA-256 of each file above; written last, checked before anything is loaded
It is first written to `step_00000100.tmp`, every file fsync'ed, then renamed into place. Re-saving a step that
exists (a rerun's final save, a save after a rollback) renames the old folder aside to `.old`, renames the new one
in, then deletes the old, so a kill at any point leaves one complete copy: `recover_interrupted_saves` (run by the
writer before it reads or writes) puts it back. Nothing is unpickled on load.

A checkpoint that fails its integrity check (a truncated or deleted file, an interrupted copy) is never loaded:
the newest one that passes is used, with a warning naming what is wrong, and the failed ones are renamed to
`step_XXXXXXXX.corrupt` (kept for inspection, never deleted). Files are created with mode 0644 (less the umask),
like every other file kamado writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from kamado.atomic import atomic_write_text, fsync_dir
from kamado.config import ModelConfig, from_dict
from kamado.errors import CheckpointError, reraise_disk_error
from kamado.faults import failpoint
from kamado.filehash import sha256_file
from kamado.model.transformer import Transformer

_STEP_DIR = re.compile(r"^step_(\d{8})$")
INTEGRITY = "integrity.json"
REQUIRED = ("model.safetensors", "rng.safetensors", "state.json")
REQUIRED_BY_FORMAT = {"safetensors": REQUIRED, "dcp": (".metadata", "state.json")}  # dcp: `kamado.parallel`


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    failpoint("disk.write", path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    except SafetensorError as e:  # safetensors reports a full disk as its own error type, with the errno inside
        reraise_disk_error(e, path)
        raise
    os.chmod(path, 0o666 & ~_umask())  # safetensors creates 0600; kamado's files are all 0644 (less the umask)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten optimizer state to {'<param name>.<state key>': tensor} (names, not positions, so it is readable)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            out[f"{names[id(p)]}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, Any]) -> None:
    params = dict(model.named_parameters())
    optimizer.state.clear()
    for full, value in tensors.items():
        name, key = full.rsplit(".", 1)
        if name not in params:
            raise CheckpointError(f"optimizer state names unknown parameter '{name}'")
        optimizer.state[params[name]][key] = value.to(params[name].device)  # saved from, or onto, a GPU


# ------------------------------------------------------------------------------------------------- saving
def save_checkpoint(
    root: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep_last: int = 3,
) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    recover_interrupted_saves(root)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    tmp.mkdir()
    _save_tensors(dict(model.state_dict()), tmp / "model.safetensors")
    failpoint("checkpoint.after_model")
    if optimizer is not None:
        _save_tensors(optimizer_tensors(model, optimizer), tmp / "optimizer.safetensors")
    _save_tensors({"cpu": torch.get_rng_state()}, tmp / "rng.safetensors")
    atomic_write_text(tmp / "state.json", json.dumps({"step": step, **state}, indent=1))
    failpoint("checkpoint.before_integrity")
    return publish(root, tmp, final, keep_last)


def write_integrity(folder: Path, fmt: str = "safetensors", hashes: bool = True) -> None:
    """The integrity record of a finished folder (written last: its presence marks a finished save). A DCP
    checkpoint records sizes only (`hashes=False`): hashing terabytes on one rank would take longer than the save."""
    files = sorted(p.name for p in folder.iterdir())
    entries = {
        n: {"bytes": (folder / n).stat().st_size, "sha256": sha256_file(folder / n) if hashes else None} for n in files
    }
    atomic_write_text(folder / INTEGRITY, json.dumps({"format": fmt, "files": entries}, indent=1))


def publish(root: Path, tmp: Path, final: Path, keep_last: int, fmt: str = "safetensors", hashes: bool = True) -> Path:
    """Seal `tmp` with its integrity record and rename it to `final`; prune to the newest `keep_last`."""
    write_integrity(tmp, fmt, hashes)
    if final.exists():  # re-saving a step: old aside, new in, old deleted — a kill in between loses neither
        old = root / f"{final.name}.old"
        os.rename(final, old)
        failpoint("checkpoint.resave_between_renames")
        os.rename(tmp, final)
        fsync_dir(root)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
        fsync_dir(root)
    if keep_last > 0:  # only older steps are pruned: a newer one may be a corrupt copy awaiting inspection
        older = [p for p in list_checkpoints(root) if p.name < final.name]
        for p in older[: max(0, len(older) - (keep_last - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    return final


def add_model_weights(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Add `model.safetensors` to a sealed checkpoint (a distributed one, consolidated), then list it in the
    integrity record. A kill in between leaves a file the record does not list: the checkpoint stays valid."""
    _save_tensors(tensors, folder / "model.safetensors")
    record = json.loads((folder / INTEGRITY).read_text(encoding="utf-8"))
    path = folder / "model.safetensors"
    record["files"]["model.safetensors"] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    atomic_write_text(folder / INTEGRITY, json.dumps(record, indent=1))


def recover_interrupted_saves(root: str | Path) -> None:
    """Finish or undo saves a kill interrupted. Only the process that writes checkpoints may call this."""
    root = Path(root)
    if not root.is_dir():
        return
    for old in sorted(root.glob("step_*.old")):
        final, tmp = old.with_suffix(""), old.with_suffix(".tmp")
        if final.exists():  # killed after the new copy was in place
            shutil.rmtree(old)
        elif tmp.is_dir() and verify_checkpoint(tmp) is None:  # killed between the two renames
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(old, final)
    for tmp in sorted(root.glob("step_*.tmp")):
        final = tmp.with_suffix("")
        if not final.exists() and verify_checkpoint(tmp) is None:  # complete, killed just before its rename
            os.rename(tmp, final)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(root)


# ------------------------------------------------------------------------------------------------- finding
def verify_checkpoint(ckpt: str | Path) -> str | None:
    """None when every file matches the integrity record; else what is wrong, in a few words."""
    ckpt = Path(ckpt)
    try:
        record = json.loads((ckpt / INTEGRITY).read_text(encoding="utf-8"))
        files: dict[str, dict[str, Any]] = record["files"]
    except FileNotFoundError:
        return f"no {INTEGRITY} (the save did not finish, or the folder was copied in part)"
    except (ValueError, KeyError, TypeError):
        return f"{INTEGRITY} is unreadable"
    fmt = record.get("format", "safetensors")
    for name in REQUIRED_BY_FORMAT.get(fmt, REQUIRED):
        if name not in files:
            return f"{INTEGRITY} does not list {name}"
    for name, want in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want.get("bytes"):
            return f"{name} has {size:,} bytes, {want.get('bytes'):,} were written"
        if want.get("sha256") is None and fmt == "dcp":  # sizes only (see `write_integrity`)
            continue
        if sha256_file(path) != want.get("sha256"):
            return f"{name} does not match its SHA-256 (the bytes changed after the save)"
    return None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders (`step_XXXXXXXX`, whether intact or not), oldest first. Reads only."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()), key=lambda p: p.name)


def latest_checkpoint(root: str | Path, quarantine: bool = False) -> Path | None:
    """The newest checkpoint that passes `verify_checkpoint`, or None when there is no checkpoint at all.

    Newer ones that fail are reported on stderr; with `quarantine` (the writer's resume) they are renamed to
    `.corrupt` so later saves and pruning never mistake them for progress. CheckpointError when checkpoints exist
    but none is intact."""
    found = list_checkpoints(root)
    bad: list[tuple[Path, str]] = []
    for path in reversed(found):
        problem = verify_checkpoint(path)
        if problem is None:
            for p, why in bad:
                print(f"kamado: warning: checkpoint {p} is corrupt ({why}); using {path.name}", file=sys.stderr)
                if quarantine:
                    os.rename(p, p.with_name(p.name + ".corrupt"))
            return path
        bad.append((path, problem))
    if bad:
        detail = "; ".join(f"{p.name}: {why}" for p, why in bad)
        raise CheckpointError(f"no intact checkpoint in {Path(root)} ({detail})")
    return None


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (verified), or the newest intact one in a run folder (`<run>/checkpoints/step_*`)."""
    p = Path(path)
    if (p / INTEGRITY).is_file() or (p / "state.json").is_file():
        problem = verify_checkpoint(p)
        if problem is not None:
            raise CheckpointError(f"checkpoint {p} is corrupt: {problem}")
        return p
    found = latest_checkpoint(p / "checkpoints")
    if found is None:
        raise CheckpointError(f"{p}: neither a checkpoint folder nor a run folder with checkpoints/step_*")
    return found


# ------------------------------------------------------------------------------------------------- loading
def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_model_weights(model: nn.Module, ckpt: str | Path) -> None:
    path = Path(ckpt)
    if (path / ".metadata").is_file() and not (path / "model.safetensors").is_file():
        raise CheckpointError(
            f"{path} is a distributed (DCP) checkpoint: `kamado checkpoint consolidate {path} --out DIR` writes one "
            "that this command reads"
        )
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"no model weights at {path}")
    tensors = _load_tensors(path)
    own = model.state_dict()
    wrong = [
        f"{k} {list(t.shape)} (model: {list(own[k].shape)})"
        for k, t in tensors.items()
        if k in own and t.shape != own[k].shape
    ]
    if wrong:
        raise CheckpointError(f"{path} holds weights of other shapes than the model config: {', '.join(wrong[:3])}")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the model config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


SHAPE_SETTINGS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "qk_norm")


def check_same_shape(ckpt: str | Path, cfg: ModelConfig) -> None:
    """Before a resume: one CheckpointError naming the model settings that give `ckpt`'s weights another shape than
    `cfg` (a run folder reused with another d_model, say), instead of torch's list of size mismatches. Settings that
    keep the shapes (max_seq_len, rope_theta, ...) may change."""
    try:
        saved = json.loads((Path(ckpt) / "state.json").read_text(encoding="utf-8"))["config"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no saved config to compare with: loading the tensors reports what is wrong
    now = {k: getattr(cfg, k) for k in SHAPE_SETTINGS}
    changed = [f"model.{k} = {saved[k]!r} there, {v!r} now" for k, v in now.items() if k in saved and saved[k] != v]
    if changed:
        raise CheckpointError(
            f"{ckpt} was saved with other model settings ({'; '.join(changed)}): resume with the same settings, "
            "or train into another out_dir"
        )


def load_checkpoint(ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Verify, then restore model, optimizer and RNG in place; return the JSON state (step, loader, ...)."""
    ckpt = Path(ckpt)
    problem = verify_checkpoint(ckpt)
    if problem is not None:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {problem}")
    if optimizer is not None and not (ckpt / "optimizer.safetensors").is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no optimizer state; resuming would restart AdamW's moments")
    load_model_weights(model, ckpt)
    if optimizer is not None:
        load_optimizer_tensors(model, optimizer, _load_tensors(ckpt / "optimizer.safetensors"))
    torch.set_rng_state(_load_tensors(ckpt / "rng.safetensors")["cpu"])
    state: dict[str, Any] = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    return state


def load_model(path: str | Path) -> tuple[Transformer, Path]:
    """Rebuild the model from the config saved in a checkpoint and load its weights (eval mode)."""
    found = find_checkpoint(path)
    state = json.loads((found / "state.json").read_text(encoding="utf-8"))
    model = Transformer(from_dict(ModelConfig, state["config"]["model"]))
    load_model_weights(model, found)
    return model.eval(), found
