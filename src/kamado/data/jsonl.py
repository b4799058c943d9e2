"""Reading documents: JSONL files (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`, `.jsonl.xz`), one `{"text": ...}` object per
line.

Every problem a user can cause (missing file, corrupt compression, bad UTF-8, bad JSON, no "text") is one
DataError naming the file and line: a corpus is never silently truncated.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kamado.errors import DataError

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.xz")  # .xz: pfgen-bench ships its files so


def _open_raw(path: Path) -> tuple[io.BufferedReader, Any]:
    """(raw file, decompressed byte stream): the raw file's position drives the progress bar.

    Lines are decoded one by one (not through a TextIOWrapper, which decodes ahead) so that a UTF-8 error
    names its own line."""
    name = path.name
    if not name.endswith(SUFFIXES):
        raise DataError(f"{path}: expected a file ending in {', '.join(SUFFIXES)}")
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    stream: Any = raw
    if name.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif name.endswith(".xz"):
        stream = lzma.LZMAFile(raw)  # noqa: SIM115 - closed by the caller
    elif name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raw.close()
            raise DataError(f"{path}: reading .zst needs the `zstandard` package (pip install zstandard)") from None
        stream = io.BufferedReader(_ZstdFrames(raw, zstandard), buffer_size=1 << 16)
    return raw, stream


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every zstd frame in `raw`, one after another (as `zstd -d` reads concatenated
    files). A file that ends inside a frame (a copy cut short) raises EOFError, as gzip does, instead of ending
    quietly; bytes that are not zstd raise ValueError. (zstandard's own stream_reader does neither.)"""

    def __init__(self, raw: io.BufferedReader, zstandard: Any) -> None:
        self.raw, self.zstd = raw, zstandard
        self.dctx = zstandard.ZstdDecompressor()
        self.frame: Any = None  # the decompressor of the frame being read; None before the first
        self.pending = b""  # compressed bytes after the end of the last frame
        self.out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.out:
            data, self.pending = self.pending or self.raw.read(1 << 16), b""
            if not data:
                if self.frame is not None and not self.frame.eof:
                    raise EOFError("the file ends inside a zstd frame (it was cut short)")
                return 0
            if self.frame is None or self.frame.eof:
                self.frame = self.dctx.decompressobj()
            try:
                self.out = memoryview(self.frame.decompress(data))
            except self.zstd.ZstdError as e:
                raise ValueError(str(e)) from None
            if self.frame.eof:
                self.pending = self.frame.unused_data
        n = min(len(buffer), len(self.out))
        buffer[:n] = self.out[:n]
        self.out = self.out[n:]
        return n


def iter_records(
    path: Path, raw_pos: list[int] | None = None, text_field: str | None = "text"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) per line; DataError naming file:line for bad JSON, a line that is not an object
    or lacks a string `text_field` (None: any object will do; its fields are the caller's to check), or bad UTF-8.

    Blank lines are skipped. If `raw_pos` is given, raw_pos[0] tracks bytes read from disk (for progress).
    """
    try:
        raw, stream = _open_raw(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    lineno = 0
    with raw, stream:
        while True:
            lineno += 1
            try:
                data = stream.readline()
            except (OSError, EOFError, ValueError, lzma.LZMAError) as e:
                raise DataError(f"{path}:{lineno}: cannot decompress ({e}); the file is corrupt") from None
            if not data:
                return
            if raw_pos is not None:
                raw_pos[0] = raw.tell()
            try:
                line = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                what = e.msg.removesuffix(" at")  # json says "Unterminated string starting at"
                raise DataError(f"{path}:{lineno}: invalid JSON ({what} at column {e.colno})") from None
            if not isinstance(obj, dict) or (text_field is not None and not isinstance(obj.get(text_field), str)):
                need = f' with a string "{text_field}" field' if text_field is not None else ""
                raise DataError(f"{path}:{lineno}: expected an object{need}")
            yield lineno, obj


def iter_texts(path: Path, raw_pos: list[int] | None = None) -> Iterator[str]:
    """Yield each line's "text" (see `iter_records`)."""
    for _, obj in iter_records(path, raw_pos):
        yield obj["text"]


def iter_jsonl_texts(paths: Sequence[str | Path]) -> Iterator[str]:
    """The non-empty texts of several files in order; DataError if there are no files or no text at all."""
    if not paths:
        raise DataError("no input files given")
    n = 0
    for p in paths:
        for text in iter_texts(Path(p)):
            if text:
                n += 1
                yield text
    if n == 0:
        raise DataError(f"the corpus is empty: no text in {', '.join(str(p) for p in paths)}")
