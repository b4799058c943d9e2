"""WARC record framing (ISO 28500, WARC/0.17 to 1.1), tolerant of what real crawls contain.

A WARC file is a sequence of records: a version line (`WARC/1.0`), header fields up to a blank line, then exactly
`Content-Length` bytes of content block and two CRLFs. Everything else in a header is advisory, so this reader
needs only the version line and a usable `Content-Length`; everything else is kept as-is. That is what lets it read
the ClueWeb09 file in `shared/data/web/warc/` (WARC/0.18, dates like `2008-10-294T05:21:46-0700`, empty
`WARC-Identified-Payload-Type`, `WARC-Warcinfo-ID` without angle brackets) and wget's `<...>`-quoted target URIs.

A record that cannot be framed is never fatal: it is skipped, counted in `counts` under one of `SKIP_REASONS`,
and reading goes on at the next line that starts with `WARC/` (or, in a gzipped file, the next gzip member; see
`gzip_stream`). warcio 1.8, for one, raises at a record without Content-Length and loses the rest of the file
(checked when this was written); a corpus job over 100k files must not.
"""

from __future__ import annotations

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


def _read_header_lines(stream: WarcByteStream) -> list[bytes] | None:
    """Header lines after the version line, up to the blank line; None if it is missing or too long."""
    lines: list[bytes] = []
    while len(lines) <= MAX_HEADER_FIELDS:
        line = stream.readline(MAX_HEADER_LINE)
        if not line.endswith(b"\n"):
            return None  # end of input, a break, or a line over MAX_HEADER_LINE
        if not line.strip():
            return lines
        lines.append(line)
    return None


def _content_length(fields: dict[str, str]) -> int | None:
    value = fields.get("content-length", "").strip()
    if not value.isascii() or not value.isdigit():
        return None
    return int(value)


def iter_records(
    raw: BinaryIO, counts: Counter[str], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[WarcRecord]:
    """Every record of an open `.warc` / `.warc.gz` file that can be framed; problems go to `counts`.

    `counts` also gets `records` (framed records yielded) so a caller can check that every record was read or
    counted as skipped."""
    stream = WarcByteStream(raw, counts)
    index = 0
    resyncing = False  # inside garbage after a bad record: count it once, not once per line
    while True:
        line = stream.readline(MAX_HEADER_LINE)
        if not line:
            if stream.resume():
                resyncing = False
                continue
            return
        if not line.startswith(b"WARC/"):
            if line.strip() and not resyncing:
                counts["malformed_header"] += 1
                resyncing = True
            continue
        resyncing = False
        version = line[5:].decode("ascii", "replace").strip()
        header_lines = _read_header_lines(stream)
        fields = parse_header_fields(header_lines) if header_lines is not None else None
        length = _content_length(fields) if fields is not None else None
        if fields is None or length is None:
            counts["malformed_header"] += 1
            resyncing = True
            continue
        if length > max_record_bytes:
            counts["oversized"] += 1
            if stream.skip(length) < length:
                counts["truncated_record"] += 1
            continue
        block = stream.read(length)
        if len(block) < length:
            counts["truncated_record"] += 1
            continue
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
