"""Completion records: a stage's output folder counts as done only when its record, written last, is there and
every file it lists still has the size it had.

A rerun of `kamado run` skips a stage by this record alone, so a half-written output (a kill, a full disk) or a
file deleted since is rebuilt instead of being trusted or failing to load. The record also carries the stage's
small summary (e.g. token counts), so nothing else has to be written after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text

RECORD = "_complete.json"


def clear_record(folder: str | Path) -> None:
    """Call before (re)building a folder: its old record must not vouch for files about to change."""
    (Path(folder) / RECORD).unlink(missing_ok=True)


def write_record(folder: str | Path, info: dict[str, Any] | None = None) -> None:
    """Mark `folder` complete: list every file in it (recursively) with its size; atomic; call last."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RECORD and not p.name.endswith(".tmp")
    }
    atomic_write_text(folder / RECORD, json.dumps({"files": files, "info": info or {}}, ensure_ascii=False, indent=1))


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The stage's `info` when `folder` is complete and intact; None when it must be (re)built."""
    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        files: dict[str, int] = record["files"]
        info: dict[str, Any] = record["info"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return info
