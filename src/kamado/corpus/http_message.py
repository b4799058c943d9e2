"""The HTTP response inside a WARC `response` record: status, headers, and the body as the server meant it.

Crawlers disagree on what they store. Common Crawl removes chunking and content-encoding and renames the headers
(`X-Crawler-Transfer-Encoding`); wget keeps the chunked bytes as received (see `dolma-en-sample-*.warc.gz`);
ClueWeb09 says `Content-Encoding: gzip` over a body that is already plain. So the headers are only a hint: a body
is de-chunked only if it parses as chunks, and gunzipped only if it starts with the gzip magic. Decompression is
bounded by `max_body_bytes`, so a gzip bomb is reported as `oversized` instead of filling memory.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from kamado.corpus.warc import parse_header_fields

MAX_HEAD_BYTES = 64 * 1024
_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)?[ \t]+(\d{3})")


class BodyTooLarge(ValueError):
    """The decoded body would exceed the size limit."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def _split_head(block: bytes) -> tuple[bytes, bytes] | None:
    block = block.lstrip(b"\r\n")
    ends = [(at, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (at := block.find(sep, 0, MAX_HEAD_BYTES)) >= 0]
    if not ends:
        return (block, b"") if len(block) < MAX_HEAD_BYTES and block.startswith(b"HTTP/") else None
    at, size = min(ends)
    return block[:at], block[at + size :]


def dechunk(body: bytes) -> bytes | None:
    """Undo `Transfer-Encoding: chunked` (RFC 9112 §7.1); None if the body is not chunked after all.
    A body cut off mid-chunk (a truncated capture) keeps the bytes that arrived."""
    out = bytearray()
    pos = 0
    while True:
        eol = body.find(b"\n", pos, pos + 1024)
        if eol < 0:
            return bytes(out) if out else None
        size_field = body[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            return bytes(out) if out else None
        if size == 0:
            return bytes(out)
        start = eol + 1
        out += body[start : start + size]
        if start + size >= len(body):
            return bytes(out)
        pos = start + size
        pos += 2 if body.startswith(b"\r\n", pos) else 1 if body.startswith(b"\n", pos) else 0


def inflate(body: bytes, max_bytes: int, wbits: int) -> bytes | None:
    """Bounded zlib/gzip/deflate decompression; None if the data is not valid in that format."""
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error:
        return None
    if len(out) > max_bytes:
        raise BodyTooLarge(f"decoded body exceeds {max_bytes} bytes")
    return out


def decode_content(body: bytes, content_encoding: str, max_bytes: int) -> bytes:
    """Apply `Content-Encoding` when the bytes really are encoded; otherwise return them unchanged."""
    encoding = content_encoding.strip().lower()
    if encoding in ("gzip", "x-gzip") and body.startswith(b"\x1f\x8b"):
        return inflate(body, max_bytes, 31) or body
    if encoding == "deflate":
        return inflate(body, max_bytes, 15) or inflate(body, max_bytes, -15) or body
    return body


def parse_http_response(block: bytes, max_body_bytes: int) -> HttpResponse | None:
    """The response in a WARC response record's content block; None if it has no HTTP status line.

    Malformed header lines are dropped rather than fatal: a page with one odd header is still a page. Raises
    `BodyTooLarge` when content decoding would exceed `max_body_bytes`."""
    parts = _split_head(block)
    if parts is None:
        return None
    head, body = parts
    status_line, _, rest = head.partition(b"\n")
    match = _STATUS_LINE.match(status_line.strip())
    if not match:
        return None
    headers: dict[str, str] = {}
    for line in rest.split(b"\n"):
        if not line.strip():
            continue
        fields = parse_header_fields([line])
        for name, value in (fields or {}).items():
            headers.setdefault(name, value)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunked = dechunk(body)
        body = body if chunked is None else chunked
    body = decode_content(body, headers.get("content-encoding", ""), max_body_bytes)
    return HttpResponse(status=int(match.group(1)), headers=headers, body=body)
