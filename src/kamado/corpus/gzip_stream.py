"""The decompressed bytes of a WARC file, read so that one corrupt gzip member never costs the rest of the file.

Common Crawl writes `.warc.gz` as one gzip member per record, precisely so that a reader can start at any record
and lose only that record when bytes are damaged. `gzip.GzipFile` throws that away: the first bad member raises
and everything after it is gone. Here a member that fails to decompress is counted (`corrupt_gzip`), the stream
jumps to the next gzip header (`1f 8b 08`) after the *start* of the bad member, and the reader above sees a
*break*: a temporary end of input that it clears with `resume()` once it has dropped its half-read record. The
search starts at the bad member's first byte, not where zlib noticed the damage: a member cut short is followed by
the next member's header, which zlib has already swallowed as deflate data by the time it fails (it can run on for
kilobytes of garbage output). That needs a seekable file (local files and fsspec's are); otherwise the search
starts where zlib stopped. A file that ends inside a member is counted as `truncated_gzip`, and the same search
runs from the member's start, in case the member was cut short and valid members follow it.

Gzipped or not is decided by the first bytes: gzip magic → gzipped, `WARC/` → plain. A file that starts with
neither (damage at the very start) is gzipped if the first `1f 8b 08` in the first 64 KiB inflates to a WARC
version line; the bytes before it are then a corrupt member like any other. Plain `.warc` files pass through
unchanged (a raw gzip HTTP body inside one must stay as it is, so there is no member detection in plain files).

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


def looks_gzipped(head: bytes) -> bool:
    """Whether a file starting with `head` is read as gzip (see the module docstring)."""
    if head.startswith(GZIP_MAGIC[:2]):
        return True
    text = head.find(b"WARC/")
    at = _find_member(head)
    while at >= 0 and (text < 0 or at < text):
        try:
            first = zlib.decompressobj(31).decompress(head[at:], 64)
        except zlib.error:
            first = b""
        if first.lstrip().startswith(b"WARC/"):
            return True
        at = _find_member(head, at + 1)
    return False


def _find_member(data: bytes, start: int = 0) -> int:
    """The first gzip header in `data` from `start` (magic, and the flag bits RFC 1952 reserves clear), or -1."""
    at = data.find(GZIP_MAGIC, start)
    while at >= 0 and at + 3 < len(data) and data[at + 3] & 0xE0:
        at = data.find(GZIP_MAGIC, at + 1)
    return at


class WarcByteStream:
    """Buffered `readline` / `read` / `peek` over a raw file, gunzipping member by member when it is
    gzipped; `unread` steps back over bytes just returned (the reader re-reads a block whose length was wrong)."""

    def __init__(self, raw: BinaryIO, counts: Counter[str]):
        self._raw = raw
        self._counts = counts
        self._buf = bytearray()
        self._pos = 0
        self._seekable = raw.seekable()
        self._raw_at = raw.tell() if self._seekable else 0  # file offset just past the bytes read so far
        self._pending = self._read_raw()  # compressed bytes not yet fed to zlib: always a suffix of those read
        self.gzipped = looks_gzipped(self._pending)
        self._inflater = zlib.decompressobj(31) if self.gzipped else None
        self._member_at = 0  # file offset where the current member starts
        self._in_member = False  # bytes of the current member were fed, its end not seen yet
        self._at_break = False
        self._eof = False

    @property
    def broken(self) -> bool:
        """At a break: the bytes before it end where a member failed, not where the input ends."""
        return self._at_break

    # -- filling the buffer ---------------------------------------------------------------------------------------

    def _read_raw(self) -> bytes:
        data = self._raw.read(CHUNK)
        self._raw_at += len(data)
        return data

    def _fill(self) -> bool:
        """Append decoded bytes to the buffer; False at end of input or at a break (until `resume`)."""
        if self._at_break or self._eof:
            return False
        if not self.gzipped:
            data = self._pending or self._read_raw()
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
                self._pending = self._read_raw()
                if not self._pending:
                    if self._in_member:
                        self._counts["truncated_gzip"] += 1
                        return self._resync()
                    self._eof = True
                    return False
            if not self._in_member:
                self._member_at = self._raw_at - len(self._pending)
            try:
                out = self._inflater.decompress(self._pending, MAX_INFLATE)
            except zlib.error:
                self._counts["corrupt_gzip"] += 1
                return self._resync()
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

    def _resync(self) -> bool:
        """After a corrupt or cut member: go to the next gzip header after the member's first byte, and signal a
        break (the bytes before it are not known to be whole: the reader drops what it was reading). Returns
        False, as `_fill` does at a break."""
        if self._seekable:
            self._raw.seek(self._member_at + 1)
            self._raw_at = self._member_at + 1
            window = b""
        else:
            window = self._pending[1:]
        while True:
            at = _find_member(window)
            if at >= 0:
                self._pending = window[at:]
                break
            more = self._read_raw()
            if not more:
                self._pending = b""
                break
            window = window[-(len(GZIP_MAGIC) - 1) :] + more
        self._inflater = zlib.decompressobj(31)
        self._in_member = False
        self._at_break = True
        return False

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

    def peek(self, n: int) -> bytes:
        """The next `n` bytes (fewer at end of input or at a break), left to be read."""
        while len(self._buf) - self._pos < n and self._fill():
            pass
        return bytes(self._buf[self._pos : self._pos + n])

    def unread(self, n: int) -> None:
        """Step back over the last `n` bytes returned by the latest `readline` or `read` (they are still held)."""
        assert 0 <= n <= self._pos, "unread past the bytes still held"
        self._pos -= n

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return out
