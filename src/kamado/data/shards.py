"""On-disk format of pre-tokenized data: a folder of flat token shards plus a JSON manifest.

    manifest.json     {"format_version", "dtype", "vocab_size", "eos_id", "num_tokens", "num_docs",
                       "tokenizer": {free-form}, "shards": [{"file", "num_tokens", "num_docs", "sha256"}]}
    NAME.bin          raw little-endian token ids (uint16 if vocab_size <= 65535, else uint32), every document
                      followed by eos_id; memory-mapped on read, so opening a 100 GB set costs nothing
    NAME.idx          raw little-endian uint64 start offset of each document in NAME.bin, then the end offset

`file` in the manifest is NAME (no extension). A document never straddles two shards, so each shard is
self-contained; the flat view (`ShardSet.read`) still reads any token range across shard boundaries.

Writes are atomic (tmp file, fsync, os.replace) and the manifest is written last, so a folder with a manifest
is always complete, and an interrupted `kamado tokenize` leaves a folder that refuses to open.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from kamado.atomic import atomic_write_bytes, fsync_dir
from kamado.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_TOKENS = 1 << 26  # 64 Mi tokens: 128 MiB per uint16 shard
_SPOT_CHECK = 1 << 16  # tokens checked for id < vocab_size at each end of every shard
_RERUN = "re-run `kamado tokenize`"
_REQUIRED = ("format_version", "dtype", "vocab_size", "eos_id", "num_tokens", "num_docs", "shards")


def dtype_for_vocab(vocab_size: int) -> np.dtype[Any]:
    """Smallest little-endian unsigned dtype that holds every id (half the disk and page cache of uint32)."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


class ShardWriter:
    """Streams documents into shards of about `shard_tokens` tokens; `close()` writes the manifest."""

    def __init__(
        self,
        out_dir: str | Path,
        vocab_size: int,
        eos_id: int,
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        tokenizer_info: dict[str, Any] | None = None,
    ) -> None:
        assert vocab_size > 0 and 0 <= eos_id < vocab_size and shard_tokens > 0
        self.out_dir = Path(out_dir)
        self.vocab_size, self.eos_id, self.shard_tokens = vocab_size, eos_id, shard_tokens
        self.dtype = dtype_for_vocab(vocab_size)
        self.tokenizer_info = dict(tokenizer_info or {})
        self.shards: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._offsets: list[int] = [0]
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # An old manifest would vouch for shards we are about to overwrite: drop it until ours is complete.
        (self.out_dir / MANIFEST).unlink(missing_ok=True)

    @property
    def num_tokens(self) -> int:
        return sum(s["num_tokens"] for s in self.shards) + self._offsets[-1]

    @property
    def num_docs(self) -> int:
        return sum(s["num_docs"] for s in self.shards) + len(self._offsets) - 1

    def _name(self) -> str:
        return f"shard_{len(self.shards):05d}"

    def add_document(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append one document's token ids; EOS is added after it (the loader packs across documents)."""
        assert not self._closed, "ShardWriter is closed"
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise DataError(
                f"{self.out_dir}: token id {int(arr.max())} is outside the vocabulary "
                f"(size {self.vocab_size}); the tokenizer and vocab_size passed to the writer disagree"
            )
        buf = np.empty(arr.size + 1, dtype=self.dtype)
        buf[:-1] = arr
        buf[-1] = self.eos_id
        if self._file is None:
            self._file = open(self.out_dir / f"{self._name()}.bin.tmp", "wb")  # noqa: SIM115 - closed in _finish
        data = buf.tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._offsets.append(self._offsets[-1] + buf.size)
        if self._offsets[-1] >= self.shard_tokens:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._file is not None and len(self._offsets) > 1
        name = self._name()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self.out_dir / f"{name}.bin.tmp", self.out_dir / f"{name}.bin")
        atomic_write_bytes(self.out_dir / f"{name}.idx", np.asarray(self._offsets, dtype="<u8").tobytes())
        self.shards.append(
            {
                "file": name,
                "num_tokens": self._offsets[-1],
                "num_docs": len(self._offsets) - 1,
                "sha256": self._hash.hexdigest(),
            }
        )
        self._hash = hashlib.sha256()
        self._offsets = [0]

    def close(self) -> dict[str, Any]:
        """Finish the last shard, remove stale shards of an earlier run, and write the manifest (last)."""
        assert not self._closed, "ShardWriter.close() called twice"
        if self._file is not None:
            self._finish_shard()
        self._closed = True
        keep = {s["file"] for s in self.shards}
        for p in self.out_dir.glob("shard_*"):
            if p.name.split(".")[0] not in keep or p.name.endswith(".tmp"):
                p.unlink()
        manifest = {
            "format_version": FORMAT_VERSION,
            "dtype": "uint16" if self.dtype.itemsize == 2 else "uint32",
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "num_tokens": self.num_tokens,
            "num_docs": self.num_docs,
            "tokenizer": self.tokenizer_info,
            "shards": self.shards,
        }
        atomic_write_bytes(self.out_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        fsync_dir(self.out_dir)
        return manifest

    def abort(self) -> None:
        """Drop the shard being written; the folder stays without a manifest, so nothing will read it."""
        if self._file is not None:
            self._file.close()
            self._file = None
            (self.out_dir / f"{self._name()}.bin.tmp").unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


def _valid_entry(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and isinstance(e.get("file"), str)
        and isinstance(e.get("num_tokens"), int)
        and isinstance(e.get("num_docs"), int)
    )


class ShardSet:
    """A validated, memory-mapped view of one folder written by `ShardWriter`. Use `ShardSet.open(dir)`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.dtype = np.dtype("<u2") if manifest["dtype"] == "uint16" else np.dtype("<u4")
        self.vocab_size: int = manifest["vocab_size"]
        self.eos_id: int = manifest["eos_id"]
        self.num_tokens: int = manifest["num_tokens"]
        self.num_docs: int = manifest["num_docs"]
        self.tokenizer_info: dict[str, Any] = manifest.get("tokenizer", {})
        self.shard_names: list[str] = [s["file"] for s in manifest["shards"]]
        sizes = [s["num_tokens"] for s in manifest["shards"]]
        # flat offset of each shard's first token, then num_tokens
        self.shard_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._tokens: dict[int, np.memmap[Any, np.dtype[Any]]] = {}
        self._views: dict[int, np.ndarray] = {}

    @property
    def num_shards(self) -> int:
        return len(self.shard_names)

    @classmethod
    def open(cls, path: str | Path) -> ShardSet:
        """Read and check the manifest and every shard's size; spot-check token ids. Raises DataError."""
        root = Path(path)
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise DataError(
                f"{mpath} not found: {root} is not a finished tokenized data folder "
                "(run `kamado tokenize` to create it, or re-run it if it was interrupted)"
            )
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{mpath}: not valid JSON ({e}); {_RERUN}") from None
        missing = [k for k in _REQUIRED if not isinstance(manifest, dict) or k not in manifest]
        if missing:
            raise DataError(f"{mpath}: missing keys {missing}; {_RERUN}")
        if manifest["format_version"] != FORMAT_VERSION:
            raise DataError(
                f"{mpath}: format_version {manifest['format_version']} but this kamado reads {FORMAT_VERSION}; {_RERUN}"
            )
        if manifest["dtype"] not in ("uint16", "uint32"):
            raise DataError(f"{mpath}: dtype {manifest['dtype']!r} must be 'uint16' or 'uint32'")
        vocab, eos = manifest["vocab_size"], manifest["eos_id"]
        if not (isinstance(vocab, int) and isinstance(eos, int) and 0 <= eos < vocab):
            raise DataError(f"{mpath}: vocab_size {vocab!r} / eos_id {eos!r} are not valid; {_RERUN}")
        if manifest["dtype"] == "uint16" and vocab > 65535:
            raise DataError(f"{mpath}: dtype uint16 cannot hold ids of a {vocab}-token vocabulary; {_RERUN}")
        entries = manifest["shards"]
        if not isinstance(entries, list) or not all(_valid_entry(e) for e in entries):
            raise DataError(f"{mpath}: malformed 'shards' list; {_RERUN}")
        if sum(s["num_tokens"] for s in entries) != manifest["num_tokens"]:
            raise DataError(f"{mpath}: shard num_tokens do not add up to num_tokens; {_RERUN}")
        shards = cls(root, manifest)
        for i in range(shards.num_shards):
            shards._check_shard(i)
        return shards

    def _check_shard(self, i: int) -> None:
        entry = self.manifest["shards"][i]
        n, docs, width = entry["num_tokens"], entry["num_docs"], self.dtype.itemsize
        for ext, expect, what in (
            (".bin", n * width, f"{n} tokens × {width} bytes ({self.dtype.name})"),
            (".idx", (docs + 1) * 8, f"{docs + 1} uint64 document offsets"),
        ):
            p = self.path / f"{entry['file']}{ext}"
            if not p.is_file():
                raise DataError(f"{p}: shard file listed in {self.path / MANIFEST} is missing; {_RERUN}")
            size = p.stat().st_size
            if size != expect:
                raise DataError(
                    f"{p}: {size} bytes on disk, but the manifest says {what} = {expect} bytes; the file is "
                    f"truncated or was written with another dtype — {_RERUN}"
                )
        if n == 0 or docs == 0:
            raise DataError(f"{self.path / entry['file']}.bin: empty shard; {_RERUN}")
        tok = self.tokens(i)
        head, tail = tok[:_SPOT_CHECK], tok[-_SPOT_CHECK:]
        top = max(int(head.max()), int(tail.max()))
        if top >= self.vocab_size:
            raise DataError(
                f"{self.path / entry['file']}.bin: token id {top} >= vocab_size {self.vocab_size}; the shard "
                f"does not belong to this manifest's tokenizer or is corrupt — {_RERUN}"
            )
        off = self.doc_offsets(i)
        if int(off[0]) != 0 or int(off[-1]) != n or int(tok[-1]) != self.eos_id:
            raise DataError(f"{self.path / entry['file']}.idx: document index is inconsistent; {_RERUN}")

    def tokens(self, i: int) -> np.memmap[Any, np.dtype[Any]]:
        """Shard i's tokens, memory-mapped read-only (mapped once, then cached)."""
        if i not in self._tokens:
            n = int(self.shard_starts[i + 1] - self.shard_starts[i])
            p = self.path / f"{self.shard_names[i]}.bin"
            self._tokens[i] = np.memmap(p, dtype=self.dtype, mode="r", shape=(n,))
        return self._tokens[i]

    def _flat(self, i: int) -> np.ndarray:
        """Shard i as a plain ndarray view of its map: slicing a np.memmap costs ~5x more per call."""
        if i not in self._views:
            self._views[i] = self.tokens(i).view(np.ndarray)
        return self._views[i]

    def doc_offsets(self, i: int) -> np.ndarray:
        """Shard i's document boundaries: doc j is tokens(i)[off[j]:off[j+1]], its last token being EOS."""
        p = self.path / f"{self.shard_names[i]}.idx"
        return np.fromfile(p, dtype="<u8")

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Fill `out` with flat tokens [start, start + len(out)), crossing shard boundaries as needed."""
        end = start + len(out)
        if not 0 <= start <= end <= self.num_tokens:
            raise IndexError(f"token range [{start}, {end}) outside [0, {self.num_tokens}) of {self.path}")
        pos, filled = start, 0
        i = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        while filled < len(out):
            lo = pos - int(self.shard_starts[i])
            take = min(len(out) - filled, int(self.shard_starts[i + 1]) - pos)
            out[filled : filled + take] = self._flat(i)[lo : lo + take]
            filled, pos, i = filled + take, pos + take, i + 1

    def read(self, start: int, end: int) -> np.ndarray:
        """Flat tokens [start, end) as a fresh array of the shard dtype."""
        out = np.empty(max(0, end - start), dtype=self.dtype)
        self.read_into(start, out)
        return out

    def iter_documents(self) -> Iterator[np.ndarray]:
        """Every document in order, without its trailing EOS (for inspection and tests)."""
        for i in range(self.num_shards):
            tok, off = self.tokens(i), self.doc_offsets(i)
            for a, b in itertools.pairwise(off):
                yield np.asarray(tok[int(a) : int(b) - 1])

    def verify_checksums(self) -> None:
        """Re-hash every shard (reads all data) and raise DataError on a mismatch with the manifest."""
        for i, entry in enumerate(self.manifest["shards"]):
            want = entry.get("sha256")
            if not want:
                continue
            h, tok, step = hashlib.sha256(), self.tokens(i), 1 << 24
            for a in range(0, len(tok), step):
                h.update(tok[a : a + step].tobytes())
            if h.hexdigest() != want:
                raise DataError(f"{self.path / entry['file']}.bin: sha256 mismatch; {_RERUN}")
