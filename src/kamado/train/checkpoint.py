"""Checkpoints: safetensors tensors + JSON state, written atomically, keep-last-N.

A checkpoint is a folder `step_00000100/` holding
  model.safetensors       model weights (loadable alone, e.g. for generation or export)
  optimizer.safetensors   AdamW moments and step counters, keyed by parameter name
  rng.safetensors         torch's CPU RNG state (a uint8 tensor)
  state.json              step, data-loader position, stability-monitor history, skipped batches, config
It is first written to `step_00000100.tmp`, every file fsync'ed, then renamed: a save killed half-way leaves only a
`.tmp` folder, which is ignored and cleaned up, never a corrupt checkpoint. Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kamado.atomic import fsync_dir
from kamado.config import ModelConfig, from_dict
from kamado.errors import CheckpointError
from kamado.model.transformer import Transformer

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
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
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _save_tensors(dict(model.state_dict()), tmp / "model.safetensors")
    if optimizer is not None:
        _save_tensors(optimizer_tensors(model, optimizer), tmp / "optimizer.safetensors")
    _save_tensors({"cpu": torch.get_rng_state()}, tmp / "rng.safetensors")
    with open(tmp / "state.json", "w", encoding="utf-8") as f:
        json.dump({"step": step, **state}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a rollback): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (`.tmp` leftovers of a killed save are removed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    for leftover in root.glob("step_*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_model_weights(model: nn.Module, ckpt: str | Path) -> None:
    path = Path(ckpt)
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"no model weights at {path}")
    tensors = load_file(str(path))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the model config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def load_checkpoint(ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore model, optimizer and RNG in place; return the JSON state (step, loader, ...)."""
    ckpt = Path(ckpt)
    if not (ckpt / "state.json").is_file():
        raise CheckpointError(f"{ckpt} is not a complete checkpoint (no state.json)")
    load_model_weights(model, ckpt)
    if optimizer is not None and (ckpt / "optimizer.safetensors").is_file():
        load_optimizer_tensors(model, optimizer, load_file(str(ckpt / "optimizer.safetensors")))
    torch.set_rng_state(load_file(str(ckpt / "rng.safetensors"))["cpu"])
    with open(ckpt / "state.json", encoding="utf-8") as f:
        state: dict[str, Any] = json.load(f)
    return state


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the newest one in a run folder (`<run>/checkpoints/step_*`)."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    found = latest_checkpoint(p / "checkpoints")
    if found is None:
        raise CheckpointError(f"{p}: neither a checkpoint folder nor a run folder with checkpoints/step_*")
    return found


def load_model(path: str | Path) -> tuple[Transformer, Path]:
    """Rebuild the model from the config saved in a checkpoint and load its weights (eval mode)."""
    found = find_checkpoint(path)
    state = json.loads((found / "state.json").read_text(encoding="utf-8"))
    model = Transformer(from_dict(ModelConfig, state["config"]["model"]))
    load_model_weights(model, found)
    return model.eval(), found
