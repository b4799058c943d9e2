"""Shared fixtures: the real web files in ../shared/data/web (skipped when absent, e.g. in a fresh clone) and a
builder for small WARC files with chosen defects."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

WEB_DATA = (Path(__file__).parents[2] / "../shared/data/web").resolve()


@pytest.fixture(scope="session")
def web_data() -> Path:
    if not (WEB_DATA / "warc").is_dir():
        pytest.skip(f"real web data not found at {WEB_DATA} (it lives in the shared folder beside the repository)")
    return WEB_DATA


def warc_record(record_type: str, block: bytes, uri: str = "http://example.jp/", **fields: str) -> bytes:
    """One WARC/1.0 record with a correct Content-Length (unless `fields` overrides it)."""
    headers = {
        "WARC-Type": record_type,
        "WARC-Record-ID": f"<urn:sha1:{hashlib.sha1(record_type.encode() + uri.encode() + block).hexdigest()}>",
        "WARC-Date": "2024-01-01T00:00:00Z",
        "WARC-Target-URI": uri,
        "Content-Length": str(len(block)),
    }
    headers.update({k.replace("_", "-"): v for k, v in fields.items()})
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return b"WARC/1.0\r\n" + head.encode() + b"\r\n" + block + b"\r\n\r\n"


def http_response(
    body: bytes, content_type: str = "text/html; charset=utf-8", status: str = "200 OK", **h: str
) -> bytes:
    headers = {"Content-Type": content_type, **{k.replace("_", "-"): v for k, v in h.items()}}
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def response_record(body: bytes, uri: str = "http://example.jp/", **kw: str) -> bytes:
    return warc_record(
        "response", http_response(body, **kw), uri=uri, Content_Type="application/http; msgtype=response"
    )


def gzip_members(records: list[bytes]) -> bytes:
    """Per-record gzip, as Common Crawl writes it."""
    return b"".join(gzip.compress(r) for r in records)


@pytest.fixture
def build() -> SimpleNamespace:
    """`build.record(...)`, `build.http(...)`, `build.response(...)`, `build.gzip_members([...])`."""
    return SimpleNamespace(record=warc_record, http=http_response, response=response_record, gzip_members=gzip_members)
