"""HTTP inside response records: status and headers, de-chunking and content decoding only when the bytes say so."""

from __future__ import annotations

import gzip
import zlib

import pytest

from kamado.corpus.http_message import BodyTooLarge, dechunk, parse_http_response


def test_status_headers_and_body(build) -> None:
    r = parse_http_response(build.http(b"<p>hi</p>", content_type="text/html; charset=EUC-JP"), 1 << 20)
    assert r is not None
    assert (r.status, r.content_type, r.body) == (200, "text/html; charset=EUC-JP", b"<p>hi</p>")


def test_not_http_is_none() -> None:
    assert parse_http_response(b"fetchTimeMs: 12\r\n", 1 << 20) is None
    assert parse_http_response(b"", 1 << 20) is None


def test_malformed_header_lines_are_dropped_not_fatal() -> None:
    r = parse_http_response(b"HTTP/1.0 404 Not Found\r\nbroken line\r\nContent-Type: text/plain\r\n\r\nbody", 100)
    assert r is not None and (r.status, r.content_type, r.body) == (404, "text/plain", b"body")


def test_chunked_body_is_dechunked(build) -> None:
    chunked = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    r = parse_http_response(build.http(chunked, Transfer_Encoding="chunked"), 1 << 20)
    assert r is not None and r.body == b"hello, world"


def test_chunked_header_over_a_plain_body_keeps_the_body(build) -> None:
    r = parse_http_response(build.http(b"<html>already decoded</html>", Transfer_Encoding="chunked"), 1 << 20)
    assert r is not None and r.body == b"<html>already decoded</html>"


def test_truncated_chunk_keeps_what_arrived() -> None:
    assert dechunk(b"a\r\n0123456789\r\n20\r\nonly part") == b"0123456789only part"


def test_gzip_and_deflate_are_decoded_only_when_encoded(build) -> None:
    html = b"<html>" + "日本語".encode() * 100 + b"</html>"
    for encoded, name in ((gzip.compress(html), "gzip"), (zlib.compress(html), "deflate")):
        r = parse_http_response(build.http(encoded, Content_Encoding=name), 1 << 20)
        assert r is not None and r.body == html
    # ClueWeb09 labels already-decoded bodies `Content-Encoding: gzip`
    r = parse_http_response(build.http(html, Content_Encoding="gzip"), 1 << 20)
    assert r is not None and r.body == html


def test_gzip_bomb_is_refused(build) -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)
    with pytest.raises(BodyTooLarge):
        parse_http_response(build.http(bomb, Content_Encoding="gzip"), 1_000_000)
