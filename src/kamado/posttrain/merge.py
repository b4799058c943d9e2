"""Merge kamado checkpoints into one (`kamado merge`), streamed tensor by tensor.

The last step of PLaMo-100B's post-training merges models trained with different data or settings; mergekit is
the peer this follows (its method names and parameters), for kamado's own checkpoint format. The formulas are the
pure functions of `merge_methods.py`; this file checks the inputs, streams them and writes the result.

Memory holds a few copies of one tensor, never a whole model: every input is opened with `safetensors.safe_open`
and read one tensor at a time (merged in float32, written in the inputs' dtype), and the output file is streamed
too. A safetensors file is an 8-byte header length, a JSON header of names, dtypes, shapes and byte offsets, then
the raw bytes in that order; every offset is known from the inputs' headers before the first tensor is merged, so
the header is written first and each merged tensor appended as it is made (`safetensors.torch.save_file` would need
the whole output model in memory). bench/merge_memory.py measures it: at the peak, 1.1 (slerp, linear) to 3.7
(dare_ties) float32 copies of the largest tensor, besides the input files' pages that safe_open maps (page cache
the kernel can drop).

The output is a run folder laid out like one `kamado import hf` writes, so `kamado generate|chat|serve|export OUT`
and `load_model(OUT)` read it as they read a trained run:
  OUT/tokenizer/                        a copy of the inputs' tokenizer (inputs whose tokenizer.json differs are
                                        refused); an input's tokenizer is <its run folder>/tokenizer, where
                                        `kamado chat` looks for it
  OUT/checkpoints/step_00000000/        model.safetensors, rng.safetensors, state.json (the first input's config),
                                        merge.json (method, inputs with their SHA-256, weights, parameters, seed),
                                        integrity.json (written last, as `save_checkpoint` does)
The first input is --base when the method takes one, else the first of --models. Everything is written into a
hidden sibling folder (`.OUT.merging`) and renamed to OUT at the end, so OUT is either absent or complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from kamado.atomic import atomic_write_text, fsync_dir
from kamado.errors import CheckpointError, ConfigError
from kamado.faults import failpoint
from kamado.filehash import sha256_file
from kamado.posttrain.merge_methods import (
    WITH_DENSITY,
    WITH_LAMBDA,
    WITH_WEIGHTS,
    MergeSpec,
    Resolved,
    check_spec,
    combine,
    sparsify,
)
from kamado.train.checkpoint import INTEGRITY, _save_tensors, find_checkpoint

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
IGNORED_CONFIG_KEYS = frozenset({"init_std"})  # how the weights started, not what they compute
STEP_DIR = "checkpoints/step_00000000"  # a merge carries no training step, as `kamado import hf` writes


# ------------------------------------------------------------------------------------------------- inputs
@dataclass
class Input:
    given: str  # as the user wrote it, for messages
    ckpt: Path
    state: dict[str, Any]
    file: Any = None  # the open safe_open handle while merging


def read_input(given: str) -> Input:
    ckpt = find_checkpoint(given)
    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        state["config"]["model"]["vocab_size"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt}/state.json holds no model config ({type(e).__name__}: {e})") from None
    return Input(given, ckpt, state)


def check_configs(ref: Input, other: Input) -> None:
    a, b = ref.state["config"]["model"], other.state["config"]["model"]
    if a["vocab_size"] != b["vocab_size"]:
        raise ConfigError(
            f"vocabularies differ: {ref.given} has {a['vocab_size']} tokens (embedding rows), "
            f"{other.given} has {b['vocab_size']}; only models with one tokenizer can be merged"
        )
    for key in sorted((set(a) | set(b)) - IGNORED_CONFIG_KEYS):
        if a.get(key) != b.get(key):
            raise ConfigError(
                f"model configs differ: {ref.given} has {key} = {a.get(key)!r}, {other.given} has {b.get(key)!r}"
            )


def tokenizer_dir(inp: Input) -> Path | None:
    """Where `kamado chat` finds this checkpoint's tokenizer: <run folder>/tokenizer."""
    d = inp.ckpt.parent.parent / "tokenizer"
    return d if (d / "tokenizer.json").is_file() else None


def common_tokenizer(inputs: list[Input]) -> Path | None:
    """The inputs' tokenizer folder (the first found), after checking that every input that has one has the same."""
    found = [(inp, d) for inp, d in zip(inputs, map(tokenizer_dir, inputs), strict=True) if d is not None]
    for inp, d in found[1:]:
        if sha256_file(d / "tokenizer.json") != sha256_file(found[0][1] / "tokenizer.json"):
            raise ConfigError(
                f"vocabularies differ: {found[0][1]}/tokenizer.json ({found[0][0].given}) and {d}/tokenizer.json "
                f"({inp.given}) are not the same tokenizer"
            )
    return found[0][1] if found else None


def check_tensors(ref: Input, other: Input) -> None:
    """Same names, shapes and dtypes in both files, read from the headers alone."""
    names_a, names_b = set(ref.file.keys()), set(other.file.keys())
    for x, y, missing in ((ref, other, names_a - names_b), (other, ref, names_b - names_a)):
        if missing:
            raise CheckpointError(f"tensor '{min(missing)}' is in {x.given} but not in {y.given}")
    for name in sorted(names_a):
        sa, sb = ref.file.get_slice(name), other.file.get_slice(name)
        if sa.get_shape() != sb.get_shape():
            what = "vocabularies differ: " if name in ("embed.weight", "lm_head.weight") else ""
            raise CheckpointError(
                f"{what}tensor '{name}' has shape {sa.get_shape()} in {ref.given} but {sb.get_shape()} in {other.given}"
            )
        if sa.get_dtype() != sb.get_dtype():
            raise CheckpointError(
                f"tensor '{name}' is {sa.get_dtype()} in {ref.given} but {sb.get_dtype()} in {other.given} "
                "(convert one so that every input has the same dtype)"
            )
        if sa.get_dtype() not in DTYPES:
            raise CheckpointError(f"tensor '{name}' in {ref.given} is {sa.get_dtype()}; only float tensors merge")


# ------------------------------------------------------------------------------------------------- output
def write_streamed_safetensors(
    path: Path, layout: list[tuple[str, str, list[int]]], tensors: Callable[[str], torch.Tensor]
) -> None:
    """A safetensors file holding `layout`'s (name, dtype, shape) in order, each tensor asked for and written in
    turn; only one is in memory at a time."""
    assert sys.byteorder == "little"  # safetensors stores little-endian bytes, written here as they are in memory
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in layout:
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    failpoint("disk.write", path)
    with open(path, "wb") as f:  # created 0666 less the umask, like every kamado file
        f.write(len(head).to_bytes(8, "little") + head)
        for name, dtype, shape in layout:
            t = tensors(name).to(DTYPES[dtype]).contiguous()
            assert list(t.shape) == shape, (name, t.shape, shape)
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            del t  # before the next tensor is made
        f.flush()
        os.fsync(f.fileno())


def _merge_record(spec: MergeSpec, p: Resolved, inputs: list[Input], dtypes: list[str]) -> dict[str, Any]:
    def describe(inp: Input) -> dict[str, Any]:
        integrity = json.loads((inp.ckpt / INTEGRITY).read_text(encoding="utf-8"))
        sha = integrity["files"]["model.safetensors"]["sha256"]
        return {"path": inp.given, "checkpoint": str(inp.ckpt.resolve()), "model_sha256": sha}

    base, models = (inputs[0], inputs[1:]) if spec.base is not None else (None, inputs)
    params: dict[str, Any] = {"t": p.t} if p.method == "slerp" else {}
    params |= {"density": p.density} if p.method in WITH_DENSITY else {}
    params |= {"lambda": p.lam} if p.method in WITH_LAMBDA else {}
    params |= {"normalize": p.normalize} if p.method == "linear" else {}
    return {
        "method": p.method,
        "base": describe(base) if base is not None else None,
        "models": [
            describe(m) | ({"weight": w} if p.method in WITH_WEIGHTS else {})
            for m, w in zip(models, p.weights, strict=True)
        ],
        "parameters": params,
        "seed": p.seed if p.method.startswith("dare") else None,
        "dtypes": dtypes,
    }


def _write_merge(
    p: Resolved,
    spec: MergeSpec,
    inputs: list[Input],
    tokenizer: Path | None,
    tmp: Path,
    progress: Callable[[int, int, str], None] | None,
) -> None:
    """The whole output run folder, in `tmp`."""
    ref, others = inputs[0], inputs[1:]
    model_inputs = inputs[1:] if spec.base is not None else inputs
    ckpt = tmp / STEP_DIR
    ckpt.mkdir(parents=True)
    with ExitStack() as stack:
        for inp in inputs:
            inp.file = stack.enter_context(safe_open(str(inp.ckpt / "model.safetensors"), framework="pt"))
        for other in others:
            check_tensors(ref, other)
        names = sorted(ref.file.keys())
        layout = [(n, ref.file.get_slice(n).get_dtype(), list(ref.file.get_slice(n).get_shape())) for n in names]
        done = 0

        def merged(name: str) -> torch.Tensor:
            nonlocal done
            base = ref.file.get_tensor(name).float() if spec.base is not None else None
            tensors = []
            for i, inp in enumerate(model_inputs):
                # safetensors maps the file copy-on-write: never write into its tensors, or the pages it copies stay
                # in memory until the file is closed. `x - base` is a new tensor, and the only full delta held:
                # TIES's trim and DARE's drop replace it before the next model is read.
                x = inp.file.get_tensor(name).float()
                tensors.append(x if base is None else sparsify(p, name, i, x - base))
                del x
            result = combine(p, base, tensors)
            done += 1
            if progress is not None:
                progress(done, len(names), name)
            return result

        write_streamed_safetensors(ckpt / "model.safetensors", layout, merged)
    _save_tensors({"cpu": torch.get_rng_state()}, ckpt / "rng.safetensors")  # verify_checkpoint requires one
    atomic_write_text(ckpt / "state.json", json.dumps({"step": 0, "config": ref.state["config"]}, indent=1))
    record = _merge_record(spec, p, inputs, sorted({dtype for _, dtype, _ in layout}))
    atomic_write_text(ckpt / "merge.json", json.dumps(record, indent=1, ensure_ascii=False))
    files = sorted(f.name for f in ckpt.iterdir())
    integrity = {"files": {n: {"bytes": (ckpt / n).stat().st_size, "sha256": sha256_file(ckpt / n)} for n in files}}
    atomic_write_text(ckpt / INTEGRITY, json.dumps(integrity, indent=1))  # last, as save_checkpoint writes it
    if tokenizer is not None:
        shutil.copytree(tokenizer, tmp / "tokenizer")
    fsync_dir(ckpt.parent)
    fsync_dir(tmp)


def merge_checkpoints(
    spec: MergeSpec, out: str | Path, progress: Callable[[int, int, str], None] | None = None
) -> Path:
    """Merge per `spec` into the new run folder `out`; return its checkpoint folder. `progress(done, total, name)`
    is called after each tensor."""
    p = check_spec(spec)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: already exists and is not an empty folder (choose a new one)")
    inputs = [read_input(g) for g in ((spec.base,) if spec.base is not None else ()) + spec.models]
    for other in inputs[1:]:
        check_configs(inputs[0], other)
    tokenizer = common_tokenizer(inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.merging"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a merge that was killed: nothing in it is reused
    try:
        _write_merge(p, spec, inputs, tokenizer, tmp, progress)
        os.rename(tmp, out)  # replaces an empty `out` folder too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    return out / STEP_DIR
