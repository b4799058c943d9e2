"""Rebuild `samples/warc/` (the embedded WARC sample of the corpus pipeline) from the real files in ../shared/data/web.

    python samples/build_warc_sample.py [--shared ../shared/data/web]

- the four real WARC files, copied unchanged: EUC-JP ClueWeb09 shop pages with malformed headers (near-duplicates),
  a multilingual Common Crawl WARC without Japanese, two English wget WARCs;
- `ja-pages.warc.gz`, written here: real Japanese pages (NHK news, a folk-tale site, Yahoo, a Perl manual, Debian
  manuals in UTF-8, pages in Shift_JIS / CP932 / EUC-JP) as HTTP response records, one gzip member per record as
  Common Crawl writes them. Half the legacy pages carry their charset in the HTTP header, half do not (so `<meta>` or
  detection must find it), and one page appears twice under two URLs (an exact duplicate).

Provenance and licences: ../shared/data/web/SOURCES.md, summarised in samples/SOURCES.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
from pathlib import Path

HERE = Path(__file__).parent
DEBIAN_PAGES = 30  # the first N (sorted) Debian manual pages under 40 KB
LEGACY_SUFFIXES = {".html": "text/html", ".txt": "text/plain"}  # the .xml feeds are not pages


def response_record(uri: str, body: bytes, content_type: str) -> bytes:
    http = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    digest = hashlib.sha1(uri.encode() + body).hexdigest()
    head = (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        f"WARC-Record-ID: <urn:uuid:{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}>\r\n"
        f"WARC-Date: 2026-11-27T00:00:00Z\r\nWARC-Target-URI: {uri}\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n"
    )
    return gzip.compress(head.encode() + http + b"\r\n\r\n", mtime=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=HERE.parent / "../shared/data/web")
    args = ap.parse_args()
    web: Path = args.shared.resolve()
    out = HERE / "warc"
    out.mkdir(exist_ok=True)
    for src in sorted((web / "warc").glob("*.warc.gz")):
        shutil.copyfile(src, out / src.name)
    records = []
    for name in ("nhk.or.jp.html", "hukumusume.html", "yahoo-4.html", "perldoc_ja_small.html"):
        body = (web / "html" / name).read_bytes()
        records.append(response_record(f"http://sample.kamado/{name}", body, "text/html; charset=utf-8"))
    records.append(
        response_record("http://mirror.kamado/nhk.html", (web / "html/nhk.or.jp.html").read_bytes(), "text/html")
    )
    debian = sorted(p for p in (web / "html/debian_docs_ja").rglob("*.html") if p.stat().st_size < 40_000)
    for p in debian[:DEBIAN_PAGES]:
        uri = "http://sample.kamado/debian/" + p.relative_to(web / "html/debian_docs_ja").as_posix()
        records.append(response_record(uri, p.read_bytes(), "text/html; charset=utf-8"))
    legacy = sorted(p for p in (web / "legacy_encodings").rglob("*") if p.suffix in LEGACY_SUFFIXES)
    for i, p in enumerate(legacy):
        mime = LEGACY_SUFFIXES[p.suffix]
        label = f"{mime}; charset={p.parent.name}" if i % 2 == 0 else mime
        records.append(response_record(f"http://legacy.kamado/{p.parent.name}/{p.name}", p.read_bytes(), label))
    (out / "ja-pages.warc.gz").write_bytes(b"".join(records))
    total = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"{out}: {len(records)} Japanese response records + {len(list((web / 'warc').glob('*.warc.gz')))} WARCs, "
        f"{total / 1e6:.2f} MB"
    )


if __name__ == "__main__":
    main()
