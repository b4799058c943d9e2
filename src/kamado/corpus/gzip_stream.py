"""The decompressed bytes of a WARC file, read so that one corrupt gzip member never costs the rest of the file.

Common Crawl writes `.warc.gz` as one gzip member per record, precisely so that a reader can start at any record
and lose only that record when bytes are damaged. `gzip.GzipFile` throws that away: the first bad member raises
and everything after it is gone. Here a member that fails to decompress is counted (`corrupt_gzip`), the stream
jumps to the next gzip header (`1f 8b 08`), and the reader above sees a *break*: a temporary end of input that
it clears with `resume()` once it has dropped its half-read record. A file that ends inside a member is counted
as `truncated_gzip`. Uncompressed `.warc` files (no gzip magic) pass through unchanged.

Output is decompressed in bounded slices (`zlib.decompressobj(...).decompress(data, max_length)`), so a member
that inflates to gigabytes (a gzip bomb) is read in small pieces like any other.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1 ID2 CM=deflate (RFC 1952 §2.3.1)
CHUNK = 1 << 16  # compressed bytes read from disk at a time
MAX_INFLATE = 1 << 20  # decompressed bytes produced per zlib call


class WarcByteStream:
    """Buffered `readline` / `read` / `skip` over a raw file, gunzipping member by member when it starts gzipped."""

    def __init__(self, raw: BinaryIO, counts: Counter[str]):
        self._raw = raw
        self._counts = counts
        self._buf = bytearray()
        self._pos = 0
        self._pending = raw.read(CHUNK)  # compressed bytes not yet fed to zlib
        self.gzipped = self._pending.startswith(GZIP_MAGIC[:2])
        self._inflater = zlib.decompressobj(31) if self.gzipped else None
        self._in_member = False  # bytes of the current member were fed, its end not seen yet
        self._at_break = False
        self._eof = False

    # -- filling the buffer ---------------------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Append decoded bytes to the buffer; False at end of input or at a break (until `resume`)."""
        if self._at_break or self._eof:
            return False
        if not self.gzipped:
            data = self._pending or self._raw.read(CHUNK)
            self._pending = b""
            if not data:
                self._eof = True
                return False
            self._buf += data
            return True
        return self._fill_gzip()

    def _fill_gzip(self) -> bool:
        assert self._inflater is not None
        while True:
            if not self._pending:
                self._pending = self._raw.read(CHUNK)
                if not self._pending:
                    self._eof = True
                    if self._in_member:
                        self._counts["truncated_gzip"] += 1
                        self._in_member = False
                    return False
            try:
                out = self._inflater.decompress(self._pending, MAX_INFLATE)
            except zlib.error:
                self._counts["corrupt_gzip"] += 1
                self._resync()
                return False
            self._in_member = True
            if self._inflater.eof:  # member complete: the next one starts in unused_data
                self._pending = self._inflater.unused_data
                self._inflater = zlib.decompressobj(31)
                self._in_member = False
            else:
                self._pending = self._inflater.unconsumed_tail
            if out:
                self._buf += out
                return True

    def _resync(self) -> None:
        """After a corrupt member: drop its bytes up to the next gzip header, and signal a break."""
        window = self._pending[1:]
        while True:
            at = window.find(GZIP_MAGIC)
            if at >= 0:
                self._pending = window[at:]
                break
            more = self._raw.read(CHUNK)
            if not more:
                self._pending = b""
                break
            window = window[-(len(GZIP_MAGIC) - 1) :] + more
        self._inflater = zlib.decompressobj(31)
        self._in_member = False
        self._at_break = True

    def resume(self) -> bool:
        """Clear a break so reading continues with the next member; False when the input is really over."""
        if self._at_break:
            self._at_break = False
            del self._buf[: self._pos]
            self._pos = 0
            return True
        return False

    def _compact(self) -> None:
        if self._pos > (1 << 20):
            del self._buf[: self._pos]
            self._pos = 0

    # -- reading ----------------------------------------------------------------------------------------------------

    def readline(self, limit: int) -> bytes:
        """Up to and including the next b"\\n", at most `limit` bytes; b"" at end of input or at a break."""
        self._compact()
        start = self._pos
        while True:
            end = self._buf.find(b"\n", start, self._pos + limit)
            if end >= 0:
                return self._take(end + 1 - self._pos)
            start = max(self._pos, len(self._buf))
            if len(self._buf) - self._pos >= limit or not self._fill():
                return self._take(min(limit, len(self._buf) - self._pos))

    def read(self, n: int) -> bytes:
        """Exactly `n` bytes, or fewer at end of input or at a break."""
        self._compact()
        while len(self._buf) - self._pos < n and self._fill():
            pass
        return self._take(min(n, len(self._buf) - self._pos))

    def skip(self, n: int) -> int:
        """Discard `n` bytes without holding them all in memory; returns how many were discarded."""
        done = 0
        while done < n:
            if self._pos >= len(self._buf):
                self._buf.clear()
                self._pos = 0
                if not self._fill():
                    break
            step = min(n - done, len(self._buf) - self._pos)
            self._pos += step
            done += step
        return done

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return out
