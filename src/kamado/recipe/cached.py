"""Results of `kamado run`'s deterministic checks, kept for a rerun: held-out bits/char and the transformers check
of the export are functions of the weights and the texts, so a rerun after a kill or a damaged checkpoint (which
retrains to the same weights) reads them back instead of computing them again (a finished micro run of the fault
suite reran in 4.6 s instead of 9.8 s, LOG.md 2026-12-05).

Each result is kept in the completion record (`kamado.completion`) of its own folder, with a key naming everything
it depends on: the weights' SHA-256, the input files' SHA-256, the settings, kamado's version. A key that differs
in anything recomputes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

import kamado
from kamado.completion import clear_record, read_record, write_record
from kamado.filehash import sha256_file

T = TypeVar("T")


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the state dict's names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
    return h.hexdigest()


def files_sha256(paths: Iterable[Path], sha: Callable[[Path], str] = sha256_file) -> str:
    """SHA-256 over the files' names and SHA-256s (`sha`: a `kamado.filehash.HashCache`'s, say), in the order
    given."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{Path(p).name} {sha(Path(p))}\n".encode())
    return h.hexdigest()


def cached(folder: Path, key: dict[str, Any], compute: Callable[[], T]) -> T:
    """`compute()`, unless `folder` holds a complete record of a result with this very key: then that result.
    The result must survive JSON (a dict of numbers and strings)."""
    key = {**key, "kamado": kamado.__version__}
    info = read_record(folder)
    if info is not None and info.get("key") == key:
        result: T = info["result"]
        return result
    clear_record(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result = compute()
    write_record(folder, {"key": key, "result": result})
    return result
