"""Tokenize JSONL corpora into a shard folder (see `kamado.data.shards`) once, before training.

Training then memory-maps token ids instead of re-tokenizing text every epoch. Input: one JSON object per line
with a "text" field, in `.jsonl`, `.jsonl.gz`, or `.jsonl.zst` (the last needs the `zstandard` package).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from kamado.config_checks import AT_LEAST_ONE, check_value
from kamado.data.jsonl import SUFFIXES, iter_texts
from kamado.data.shards import DEFAULT_SHARD_TOKENS, ShardWriter
from kamado.errors import DataError


class TokenizerLike(Protocol):
    """What tokenizing needs: `kamado.tokenizer.Tokenizer` has it; tests use a byte-level encoder."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...


def tokenize_files(
    inputs: Sequence[str | Path],
    tokenizer: TokenizerLike,
    out_dir: str | Path,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_docs: int = 1024,
    progress: bool = True,
    tokenizer_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokenize every document of `inputs` (in order) into `out_dir`; return stats.

    Stats: files, docs, skipped (empty texts), chars, tokens (EOS included, = manifest num_tokens), shards,
    seconds, chars_per_token (EOS excluded: the compression figure to compare tokenizers on Japanese).
    On an error (a malformed line found halfway) what this run added goes again: the folders it made, or in a
    folder that was there, the files it added; nothing that was there before is removed.
    """
    check_value("shard_tokens", shard_tokens, AT_LEAST_ONE)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise DataError("no input files given to tokenize")
    for p in paths:  # fail before writing anything
        if not p.is_file():
            raise DataError(f"{p}: input file not found")
        if not p.name.endswith(SUFFIXES):
            raise DataError(f"{p}: expected a file ending in {', '.join(SUFFIXES)}")
    info = {"vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, **(tokenizer_info or {})}
    info.setdefault("inputs", [str(p) for p in paths])
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another output folder")
    made = _missing_ancestor(out)
    before = set(os.listdir(out)) if made is None else set()
    try:
        return _tokenize(paths, tokenizer, out, shard_tokens, batch_docs, progress, info)
    except BaseException:  # a malformed line, a full disk, Ctrl-C: take back what this run added, nothing else
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        else:
            for name in set(os.listdir(out)) - before:
                with contextlib.suppress(OSError):
                    (out / name).unlink()
        raise


def _missing_ancestor(path: Path) -> Path | None:
    """The outermost folder of `path` (itself included) that does not exist yet, or None when `path` exists."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            return missing
        missing = p
    return missing


def _tokenize(
    paths: list[Path],
    tokenizer: TokenizerLike,
    out_dir: Path,
    shard_tokens: int,
    batch_docs: int,
    progress: bool,
    info: dict[str, Any],
) -> dict[str, Any]:
    t0 = time.perf_counter()
    docs = skipped = chars = 0
    writer = ShardWriter(out_dir, tokenizer.vocab_size, tokenizer.eos_id, shard_tokens, tokenizer_info=info)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with writer, Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("tokenizing", total=sum(p.stat().st_size for p in paths))
        done = 0  # bytes of finished files
        for p in paths:
            bar.update(task, description=f"tokenizing {p.name}")
            pos = [0]
            batch: list[str] = []
            for text in iter_texts(p, pos):
                if not text:
                    skipped += 1
                    continue
                batch.append(text)
                if len(batch) >= batch_docs:
                    chars += _flush(batch, tokenizer, writer)
                    docs += len(batch)
                    batch = []
                    bar.update(task, completed=done + pos[0])
            chars += _flush(batch, tokenizer, writer)
            docs += len(batch)
            done += p.stat().st_size
            bar.update(task, completed=done)
        if docs == 0:
            raise DataError(f"no documents in {', '.join(map(str, paths))}: every line was blank or had an empty text")
    tokens = writer.num_tokens
    seconds = time.perf_counter() - t0
    return {
        "files": len(paths),
        "docs": docs,
        "skipped": skipped,
        "chars": chars,
        "tokens": tokens,
        "shards": len(writer.shards),
        "seconds": seconds,
        "chars_per_token": chars / max(1, tokens - docs),
    }


def _flush(batch: list[str], tokenizer: TokenizerLike, writer: ShardWriter) -> int:
    """Encode and write one batch of texts; returns its character count."""
    if not batch:
        return 0
    encoded = tokenizer.encode_batch(batch)
    assert len(encoded) == len(batch), "encode_batch must return one id list per text"
    for ids in encoded:
        writer.add_document(ids)
    return sum(len(t) for t in batch)
