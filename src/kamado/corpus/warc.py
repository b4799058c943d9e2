"""WARC record framing (ISO 28500, WARC/0.17 to 1.1), tolerant of what real crawls contain.

A WARC file is a sequence of records: a version line (`WARC/1.0`), header fields up to a blank line, then exactly
`Content-Length` bytes of content block and two CRLFs. Everything else in a header is advisory, so this reader
needs only the version line and a usable `Content-Length`; everything else is kept as-is. That is what lets it read
the ClueWeb09 file in `shared/data/web/warc/` (WARC/0.18, dates like `2008-10-294T05:21:46-0700`, empty
`WARC-Identified-Payload-Type`, `WARC-Warcinfo-ID` without angle brackets) and wget's `<...>`-quoted target URIs.

A record that cannot be framed is never fatal: it is skipped, counted in `counts` under one of `SKIP_REASONS`,
and reading goes on at the next version line (or, in a gzipped file, the next gzip member; see `gzip_stream`).
warcio 1.8, for one, raises at a record without Content-Length and loses the rest of the file (checked when this
was written); a corpus job over 100k files must not. Every record the bytes still hold is read:

- A version line is found at the end of a line too (`garbageWARC/1.0`): damage without a final newline (a
  non-WARC gzip member, a record cut short) would otherwise glue the next record's version line onto its last
  line and lose that record.
- `Content-Length` is checked against the framing: the block must be followed by the record end (`CRLF CRLF`, or
  blank lines and the next version line, or the end of the file). When it is not, or the input ends or breaks
  inside the block, the length was wrong and the block may hold the records after it: the record is counted and
  its block is read again as lines, so those records are found. (A wrong length that lands exactly on the end of a
  later record cannot be told from a right one: the records in between are read as that record's block.)
- A record over `max_record_bytes` is not held: its block is passed over line by line, like garbage, so a huge
  wrong length costs that record only (a version line inside such a block is taken for the next record).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kamado.corpus.gzip_stream import WarcByteStream
from kamado.errors import DataError

MAX_HEADER_LINE = 16 * 1024  # one header field line
MAX_HEADER_FIELDS = 256
DEFAULT_MAX_RECORD_BYTES = 8 * 1024 * 1024  # Common Crawl has truncated payloads at 1 MiB; 8 MiB is generous

SKIP_REASONS = (
    "malformed_header",  # no version line where a record should start, no blank line, or no usable Content-Length
    "truncated_record",  # input ended (or a gzip member broke) inside the content block
    "length_mismatch",  # the content block is not followed by the record end: Content-Length is wrong
    "oversized",  # Content-Length above max_record_bytes: skipped without being held in memory
    "corrupt_gzip",  # a gzip member failed to decompress (counted by the stream; usually one record)
    "truncated_gzip",  # the file ended inside a gzip member
)


@dataclass(frozen=True, slots=True)
class WarcRecord:
    """One framed record: its type (`response`, `request`, `resource`, `metadata`, `warcinfo`, ...), its header
    fields (names lower-cased), and the raw content block (for a response: HTTP head + body)."""

    record_type: str
    headers: dict[str, str]
    block: bytes
    index: int  # position among the framed records of its file, from 0
    version: str = "1.0"

    @property
    def target_uri(self) -> str:
        return self.headers.get("warc-target-uri", "").strip().strip("<>")

    @property
    def record_id(self) -> str:
        return self.headers.get("warc-record-id", "").strip()

    @property
    def date(self) -> str:
        return self.headers.get("warc-date", "").strip()

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").strip()


def parse_header_fields(lines: list[bytes]) -> dict[str, str] | None:
    """`Name: value` lines (continuations start with a space or tab) → {lower-cased name: value}; None if a line
    is neither. Repeated names keep the first value. Bytes are UTF-8 (WARC 1.1 §4) with bad bytes replaced."""
    fields: dict[str, str] = {}
    last = ""
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line[:1] in (" ", "\t") and last:
            fields[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or " " in name:
            return None
        if name not in fields:
            fields[name] = value.strip()
        last = name
    return fields


def version_start(line: bytes) -> int:
    """Where a version line starts in `line`: 0 when the line is one, later when bytes without a newline came
    before it (`...garbageWARC/1.0\\r\\n`, `WARC/1.WARC/1.0\\r\\n` from a record cut short), -1 when there is none."""
    at = line.rfind(b"WARC/")
    if at > 0 and _VERSION_TAIL.fullmatch(line, at):
        return at
    return 0 if line.startswith(b"WARC/") else -1


_VERSION_TAIL = re.compile(rb"WARC/[0-9]+\.[0-9]+\r?\n")
_RECORD_END = b"\r\n\r\n"
_PEEK = 4096  # bytes looked at after a block: blank lines, then the next version line


def _read_header_lines(stream: WarcByteStream) -> list[bytes] | None:
    """Header lines after the version line, up to the blank line; None if it is missing or too long, or if the
    next record starts first (a header cut short: its version line is left to be read)."""
    lines: list[bytes] = []
    while len(lines) <= MAX_HEADER_FIELDS:
        line = stream.readline(MAX_HEADER_LINE)
        if not line.endswith(b"\n"):
            return None  # end of input, a break, or a line over MAX_HEADER_LINE
        if not line.strip():
            return lines
        at = version_start(line)
        if at >= 0:
            stream.unread(len(line) - at)
            return None
        lines.append(line)
    return None


def _content_length(fields: dict[str, str]) -> int | None:
    value = fields.get("content-length", "").strip()
    if not value.isascii() or not value.isdigit():
        return None
    return int(value)


def _record_end(stream: WarcByteStream) -> str | None:
    """None if the bytes after a block end the record, else the skip reason. Accepted: `CRLF CRLF` (the
    standard), or any CR/LF run (writers that get the trailer wrong) then the next version line or the end of the
    file (cut inside the trailer). Not the end of a broken gzip member: the block is not known to be whole."""
    after = stream.peek(_PEEK)
    if after.startswith(_RECORD_END):
        return None
    rest = after.lstrip(b"\r\n")
    if rest.startswith(b"WARC/") or (not rest and len(after) < _PEEK and not stream.broken):
        return None
    return "truncated_record" if not rest and stream.broken else "length_mismatch"


def _keep_split_version_line(stream: WarcByteStream, line: bytes) -> None:
    """A line cut at MAX_HEADER_LINE may end inside a version line: leave its last bytes from a `W` to be read
    again with what follows."""
    if len(line) == MAX_HEADER_LINE and not line.endswith(b"\n"):
        at = line.rfind(b"W", len(line) - 16)
        if at > 0:
            stream.unread(len(line) - at)


def iter_records(
    raw: BinaryIO, counts: Counter[str], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[WarcRecord]:
    """Every record of an open `.warc` / `.warc.gz` file that can be framed; problems go to `counts`.

    `counts` also gets `records` (framed records yielded) so a caller can check that every record was read or
    counted as skipped."""
    stream = WarcByteStream(raw, counts)
    index = 0
    resyncing = False  # inside garbage or a skipped block: count it once, not once per line
    while True:
        line = stream.readline(MAX_HEADER_LINE)
        if not line:
            if stream.resume():
                resyncing = False
                continue
            return
        at = version_start(line)
        if (line if at < 0 else line[:at]).strip() and not resyncing:
            counts["malformed_header"] += 1
            resyncing = True
        if at < 0:
            _keep_split_version_line(stream, line)
            continue
        resyncing = True  # whatever goes wrong below is counted once, and the lines after it are passed over
        version = line[at + 5 :].decode("ascii", "replace").strip()
        header_lines = _read_header_lines(stream)
        fields = parse_header_fields(header_lines) if header_lines is not None else None
        length = _content_length(fields) if fields is not None else None
        if fields is None or length is None:
            counts["malformed_header"] += 1
            continue
        if length > max_record_bytes:
            counts["oversized"] += 1  # the block is passed over as lines: a wrong huge length costs this record only
            continue
        block = stream.read(length)
        problem = "truncated_record" if len(block) < length else _record_end(stream)
        if problem:
            counts[problem] += 1
            stream.unread(len(block))  # a wrong length may have run into the next records: read them
            continue
        resyncing = False
        counts["records"] += 1
        yield WarcRecord(
            record_type=fields.get("warc-type", "").strip().lower(),
            headers=fields,
            block=block,
            index=index,
            version=version,
        )
        index += 1


def read_warc_file(
    path: str | Path, counts: Counter[str] | None = None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[WarcRecord]:
    """`iter_records` over a local file; a missing or unreadable file is a DataError (the only fatal case)."""
    counts = Counter() if counts is None else counts
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the generator is exhausted or closed
    except OSError as e:
        raise DataError(f"{path}: cannot open WARC file ({e.strerror})") from None
    with f:
        yield from iter_records(f, counts, max_record_bytes)
