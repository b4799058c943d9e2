"""SHA-256 of files, streamed (a multi-GB source is never held in memory), and remembered by their stat.

`kamado run` fingerprints its source files on every start (`kamado.recipe.inputs`). Hashing terabytes of JSONL
each time would cost minutes, so `HashCache` keeps each file's hash beside its size and modification time (in
nanoseconds) and hashes it again only when either has changed, as git's index and make do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class HashCache:
    """`sha256(path)` from the record at `record` when the file's size and mtime match it, else computed; `save()`
    writes the record back (atomically) if anything was added. An unreadable record is treated as empty."""

    def __init__(self, record: Path):
        self.record = record
        try:
            entries = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = {}
        self.entries: dict[str, Any] = entries if isinstance(entries, dict) else {}
        self.changed = False
        self.hashed = 0  # files hashed by this instance (the rest came from the record)

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns]
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
            return str(entry["sha256"])
        digest = sha256_file(path)
        self.hashed += 1
        self.entries[key] = {"stat": stamp, "sha256": digest}
        self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.record, json.dumps(self.entries, indent=1, ensure_ascii=False) + "\n")
            self.changed = False
