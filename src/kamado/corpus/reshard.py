"""Resharding: the deduplicated documents, in a fixed order, cut into uniform-size compressed shards + a manifest.

Earlier stages write one file per task, of whatever size each task's share of WARCs produced. Training readers and
`kamado tokenize` want the opposite: shards of about the same size, so work divides evenly. This last stage reads
the task files in sorted order and starts a new shard whenever the current one reaches `shard_bytes` of
uncompressed JSONL.

Restart safety: every shard and then the manifest are written with `kamado.atomic` (temporary file, fsync, rename).
The order is fixed and gzip's header timestamp is zero, so a run killed anywhere and started again writes
byte-identical shards; shards left from an earlier, different run are removed before the manifest names the new set.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_bytes, atomic_write_text
from kamado.config_checks import AT_LEAST_ONE, Range, check_fields
from kamado.errors import DataError

SHARD_PREFIX = "shard_"
SHARD_SUFFIX = ".jsonl.gz"


@dataclass
class ReshardConfig:
    shard_bytes: int = 64 * 1024 * 1024  # uncompressed JSONL bytes per shard (the last one may be smaller)
    compresslevel: int = 6

    def validate(self, prefix: str = "reshard") -> None:
        check_fields(self, prefix, shard_bytes=AT_LEAST_ONE, compresslevel=Range(1, 9))


def _iter_lines(files: list[Path]) -> Any:
    for path in files:
        try:
            with gzip.open(path, "rb") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield path, lineno, line if line.endswith(b"\n") else line + b"\n"
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read ({e}); re-run the stage that wrote it") from None


def _write_shard(path: Path, lines: list[bytes], compresslevel: int) -> dict[str, Any]:
    data = b"".join(lines)
    compressed = gzip.compress(data, compresslevel=compresslevel, mtime=0)  # mtime 0: identical bytes on re-runs
    atomic_write_bytes(path, compressed)
    return {
        "file": path.name,
        "documents": len(lines),
        "bytes": len(data),
        "compressed_bytes": len(compressed),
        "sha256": hashlib.sha256(compressed).hexdigest(),
    }


def reshard(input_dir: str | Path, out_dir: str | Path, cfg: ReshardConfig) -> dict[str, Any]:
    """Write `out_dir/shard_NNNNN.jsonl.gz` + `out_dir/manifest.json` from `input_dir/*.jsonl.gz`; returns the
    manifest. The manifest counts documents, bytes and characters per shard and lists the source WARC of every
    document (`metadata.file_path` or `metadata.warc_file`, when the reader recorded it)."""
    cfg.validate()
    files = sorted(Path(input_dir).glob("*.jsonl.gz"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    sources: Counter[str] = Counter()
    chars = 0
    pending: list[bytes] = []
    size = 0

    def flush() -> None:
        nonlocal pending, size
        if pending:
            shards.append(
                _write_shard(out / f"{SHARD_PREFIX}{len(shards):05d}{SHARD_SUFFIX}", pending, cfg.compresslevel)
            )
            pending, size = [], 0

    for path, lineno, line in _iter_lines(files):
        try:
            doc = json.loads(line)
            chars += len(doc["text"])
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{lineno}: not a document line") from None
        meta = doc.get("metadata") or {}
        source = meta.get("file_path") or meta.get("warc_file")
        if source:
            sources[Path(str(source)).name] += 1
        pending.append(line)
        size += len(line)
        if size >= cfg.shard_bytes:
            flush()
    flush()
    keep = {s["file"] for s in shards}
    for stale in out.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"):
        if stale.name not in keep:
            stale.unlink()
    manifest = {
        "format": "jsonl.gz",
        "documents": sum(s["documents"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "compressed_bytes": sum(s["compressed_bytes"] for s in shards),
        "characters": chars,
        "shard_bytes": cfg.shard_bytes,
        "shards": shards,
        "source_warcs": dict(sorted(sources.items())),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return manifest
