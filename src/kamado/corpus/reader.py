"""WARC records → datatrove `Document`s holding a decoded page: the first step of the corpus pipeline.

Only records that carry a page become documents: `response` (HTTP 2xx, HTML or plain text), `resource` (a stored
file, e.g. wget's text logs) and `conversion` (Common Crawl WET text). `request`, `metadata`, `warcinfo` and
`revisit` records are read and counted, nothing more. Every record that does not become a document is counted
under the reason it was dropped, so a run's stats account for every record of every file.

The document's text is the decoded page (HTML or plain text, see `charset.decode_page`); `metadata["kind"]` says
which, so the extractor knows whether to run trafilatura on it or pass it through.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.logging import logger

from kamado.corpus.charset import decode_page
from kamado.corpus.http_message import BodyTooLarge, parse_http_response
from kamado.corpus.warc import DEFAULT_MAX_RECORD_BYTES, WarcRecord, iter_records

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"text/plain"})
PAGE_RECORD_TYPES = frozenset({"response", "resource", "conversion"})
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<title", b"<meta")


def mime_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def looks_binary(payload: bytes) -> bool:
    """NUL bytes or many control characters early on: an image, archive or executable whatever its label says.
    (ESC is allowed: ISO-2022-JP text uses it. UTF-16 pages have NULs but start with a BOM, checked first.)"""
    head = payload[:4096]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls > len(head) // 10


def sniff_kind(payload: bytes) -> str | None:
    """'html' if the first KiB looks like HTML, else None (unlabelled bytes are not trusted as text)."""
    head = payload[:1024].lstrip().lower()
    return "html" if any(marker in head for marker in _HTML_MARKERS) else None


def record_to_document(record: WarcRecord, source: str, max_body_bytes: int) -> tuple[Document | None, str]:
    """(document, "document") for a page; (None, reason) otherwise — reasons are stat names."""
    if record.record_type not in PAGE_RECORD_TYPES:
        return None, "not_a_page"
    content_type = record.content_type
    status = None
    body = record.block
    if record.record_type == "response":
        try:
            response = parse_http_response(record.block, max_body_bytes)
        except BodyTooLarge:
            return None, "oversized_body"
        if response is None:
            return None, "malformed_http"
        status, body = response.status, response.body
        if not 200 <= status < 300:
            return None, "http_not_ok"
        content_type = response.content_type or record.headers.get("warc-identified-payload-type", "")
    if not body.strip():
        return None, "empty_payload"
    mime = mime_type(content_type)
    kind = "html" if mime in HTML_TYPES else "text" if mime in TEXT_TYPES else None
    if record.record_type == "conversion":
        kind = "text"
    elif kind is None and mime in ("", "application/octet-stream", "unknown/unknown"):
        kind = sniff_kind(body)
    if kind is None:
        return None, "not_text"
    if looks_binary(body):
        return None, "binary_payload"
    page = decode_page(body, content_type)
    if page is None:
        return None, "undecodable"
    metadata: dict[str, Any] = {
        "url": record.target_uri,
        "date": record.date,
        "warc_type": record.record_type,
        "kind": kind,
        "charset": page.codec,
        "charset_source": page.source,
    }
    if status is not None:
        metadata["http_status"] = status
    doc_id = record.record_id or f"{source}#{record.index}"
    return Document(text=page.text, id=doc_id, metadata=metadata), "document"


class WarcPageReader(BaseDiskReader):
    """Reads `.warc` / `.warc.gz` files (any mix, found under `data_folder`) into page documents.

    Stats: `warc_records`, one `warc_<type>` per record type, each skip reason of `kamado.corpus.warc` and each
    drop reason of `record_to_document`; `input_bytes` (file sizes). Whole files are counted too, never fatal: one
    that cannot be opened (`unreadable_file`), and a non-empty one without a single WARC record in it
    (`not_warc_file`: not a WARC file, or damaged throughout), so that input which gives nothing says why."""

    name = "🕷 WARC pages"

    def __init__(
        self,
        data_folder: Any,
        paths_file: Any = None,
        limit: int = -1,
        skip: int = 0,
        file_progress: bool = False,
        doc_progress: bool = False,
        default_metadata: dict[str, Any] | None = None,
        recursive: bool = True,
        glob_pattern: str | None = None,
        shuffle_files: bool = False,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ):
        super().__init__(
            data_folder,
            paths_file,
            limit,
            skip,
            file_progress,
            doc_progress,
            default_metadata=default_metadata,
            recursive=recursive,
            glob_pattern=glob_pattern,
            shuffle_files=shuffle_files,
        )
        self.max_record_bytes = max_record_bytes

    def read_file(self, filepath: str) -> Iterator[Document]:
        counts: Counter[str] = Counter()
        try:
            size = self.data_folder.size(filepath)
            self.stat_update("input_bytes", value=size)
            with self.data_folder.open(filepath, "rb") as f:
                for record in iter_records(f, counts, self.max_record_bytes):
                    self.stat_update(f"warc_{record.record_type or 'untyped'}")
                    with self.track_time():
                        doc, outcome = record_to_document(record, filepath, self.max_record_bytes)
                    if doc is None:
                        if outcome != "not_a_page":
                            self.stat_update(outcome)
                        continue
                    if self.add_file_path:
                        doc.metadata["file_path"] = self.data_folder.resolve_paths(filepath)
                    if self.default_metadata:
                        doc.metadata = self.default_metadata | doc.metadata
                    yield doc
            if size and not counts["records"]:
                self.stat_update("not_warc_file")
                logger.warning(f"{filepath}: {size} bytes without a WARC record in them; skipped")
        except OSError as e:
            self.stat_update("unreadable_file")
            logger.warning(f"{filepath}: cannot read ({e}); skipped")
        finally:
            for reason, n in counts.items():
                self.stat_update("warc_records" if reason == "records" else reason, value=n)
