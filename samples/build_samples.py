"""Rebuild the embedded sample corpus (`samples/*.jsonl.gz`) from the shared raw data.

Run once by developers, never at run time: `python samples/build_samples.py [--data ../shared/data]`.
Only the standard library is used, and the output is byte-for-byte deterministic (gzip mtime=0, stable order),
so a rebuild that changes the files means the inputs or this script changed. See `samples/SOURCES.md`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"

MIN_DOC, TARGET_DOC, MAX_DOC = 1000, 2000, 4000  # characters per Japanese document
HELDOUT_FRACTION = 0.10
MIN_EN_CHARS = 500

# ------------------------------------------------------------------------------------------------------------
# Japanese: Aozora Bunko texts.

_GAIJI = re.compile(r"※［＃[^］]*?(?:U\+([0-9A-Fa-f]{4,6})|第[34]水準(\d)-(\d+)-(\d+))[^］]*］")
_ANNOTATION = re.compile(r"［＃[^］]*］")  # layout notes: indentation, heading marks, page breaks
_RUBY = re.compile(r"《[^》]*》")


def _gaiji(m: re.Match[str]) -> str:
    """Aozora writes characters outside JIS X 0208 as notes; put the real character back."""
    if m.group(1):
        return chr(int(m.group(1), 16))
    plane, row, cell = (int(g) for g in m.group(2, 3, 4))
    raw = (b"\x8f" if plane == 2 else b"") + bytes([0xA0 + row, 0xA0 + cell])
    return raw.decode("euc_jis_2004")


def clean_aozora(text: str) -> str:
    """Strip Aozora markup (header legend, ruby, layout notes, colophon) so only the prose remains."""
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    parts = re.split(r"^-{20,}$", text, maxsplit=2, flags=re.M)
    if len(parts) == 3:  # title block, legend of symbols, body
        text = parts[0] + parts[2]
    text = re.split(r"^底本：", text, maxsplit=1, flags=re.M)[0]
    text = _GAIJI.sub(_gaiji, text)
    text = _ANNOTATION.sub("", text)
    text = _RUBY.sub("", text).replace("｜", "")
    return text


def paragraphs(text: str) -> list[str]:
    """Lines are paragraphs in Aozora texts; blank lines (chapter breaks) become "" markers."""
    out: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if line:
            out.append(line)
        elif out and out[-1]:
            out.append("")
    return out


def _split_long(par: str) -> Iterator[str]:
    """A paragraph longer than MAX_DOC is cut after a full stop so no document overflows."""
    while len(par) > MAX_DOC:
        cut = par.rfind("。", 0, MAX_DOC) + 1 or MAX_DOC
        yield par[:cut]
        par = par[cut:]
    yield par


def chunk(pars: list[str]) -> list[str]:
    """Group paragraphs into ~1-4k character documents, preferring to end at chapter breaks."""
    docs: list[str] = []
    cur: list[str] = []
    size = 0
    for par in pars:
        if not par:  # chapter break
            if size >= MIN_DOC:
                docs.append("\n".join(cur))
                cur, size = [], 0
            continue
        for piece in _split_long(par):
            if cur and size + len(piece) + 1 > MAX_DOC:
                docs.append("\n".join(cur))
                cur, size = [], 0
            cur.append(piece)
            size += len(piece) + (size > 0)
            if size >= TARGET_DOC:
                docs.append("\n".join(cur))
                cur, size = [], 0
    if cur:
        docs.append("\n".join(cur))
    return docs


def split_heldout(text: str) -> tuple[str, str]:
    """Cut off the last HELDOUT_FRACTION of characters, at the first paragraph boundary after the mark."""
    mark = int(len(text) * (1 - HELDOUT_FRACTION))
    cut = text.find("\n", mark)
    cut = len(text) if cut < 0 else cut + 1
    return text[:cut], text[cut:]


# ------------------------------------------------------------------------------------------------------------
# English: WARC response records -> visible text.


def iter_warc_responses(path: Path) -> Iterator[tuple[str, dict[str, str], bytes]]:
    """Yield (target URI, HTTP headers, body) for each HTTP response record of a (gzipped) WARC file."""
    with gzip.open(path, "rb") as f:
        stream = io.BufferedReader(f)
        while True:
            line = stream.readline()
            if not line:
                return
            if not line.startswith(b"WARC/"):
                continue
            headers: dict[str, str] = {}
            while (line := stream.readline()).strip():
                k, _, v = line.decode("utf-8", "replace").partition(":")
                headers[k.strip().lower()] = v.strip()
            block = stream.read(int(headers.get("content-length", "0")))
            if headers.get("warc-type") != "response" or "msgtype=response" not in headers.get("content-type", ""):
                continue
            head, _, body = block.partition(b"\r\n\r\n")
            http = {}
            for h in head.decode("latin-1").split("\r\n")[1:]:
                k, _, v = h.partition(":")
                http[k.strip().lower()] = v.strip()
            if "chunked" in http.get("transfer-encoding", "").lower():
                body = _dechunk(body)
            yield headers.get("warc-target-uri", "").strip("<>"), http, body


def _dechunk(body: bytes) -> bytes:
    out, pos = bytearray(), 0
    while pos < len(body):
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            break
        size = int(body[pos:eol].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += body[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2
    return bytes(out)


class _TextExtractor(html.parser.HTMLParser):
    """Visible text only: script/style/nav and other non-prose subtrees are dropped; blocks become lines."""

    SKIP = frozenset({"script", "style", "nav", "noscript", "svg", "template", "head", "iframe", "button"})
    BLOCK = frozenset(
        {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section"}
        | {"article", "header", "footer", "aside", "blockquote", "pre", "figure", "figcaption", "dd", "dt"}
        | {"dl", "main", "form", "hr", "title"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skip_depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = (re.sub(r"\s+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


def english_docs(warcs: list[Path]) -> list[dict[str, str]]:
    docs, seen = [], set()
    for path in warcs:
        for uri, http, body in iter_warc_responses(path):
            ctype = http.get("content-type", "")
            if "html" not in ctype:
                continue
            m = re.search(r"charset=([\w-]+)", ctype)
            try:
                markup = body.decode(m.group(1) if m else "utf-8", "replace")
            except LookupError:
                markup = body.decode("utf-8", "replace")
            text = html_to_text(markup)
            if len(text) < MIN_EN_CHARS or text in seen:  # the same page is captured twice in places
                continue
            seen.add(text)
            docs.append({"text": text, "source": uri})
    return docs


# ------------------------------------------------------------------------------------------------------------


def write_jsonl_gz(path: Path, docs: list[dict[str, str]]) -> None:
    """Deterministic gzip: mtime=0 and no file name in the header."""
    payload = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(payload)
    chars = sum(len(d["text"]) for d in docs)
    print(f"{path.name}: {len(docs)} docs, {chars} chars, {path.stat().st_size} bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared raw data folder")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    text_dir, warc_dir = args.data / "text", args.data / "web" / "warc"

    neko = clean_aozora((text_dir / "wagahai_wa_neko_de_aru.utf8.txt").read_text(encoding="utf-8"))
    kojiki = clean_aozora((text_dir / "kojiki_gendaigoyaku.utf8.txt").read_text(encoding="utf-8"))
    neko_train, neko_held = split_heldout(neko)
    src_neko, src_kojiki = "aozora/wagahai_wa_neko_de_aru", "aozora/kojiki_gendaigoyaku"
    ja = [{"text": t, "source": src_neko} for t in chunk(paragraphs(neko_train))]
    ja += [{"text": t, "source": src_kojiki} for t in chunk(paragraphs(kojiki))]
    held = [{"text": t, "source": src_neko} for t in chunk(paragraphs(neko_held))]

    en = english_docs(sorted(warc_dir.glob("dolma-en-sample-000[01].warc.gz")))
    # Hold out by a hash of the URL (not position) so the slice is stable and spread over both files.
    ranked = sorted(en, key=lambda d: hashlib.sha1(d["source"].encode()).hexdigest())
    held_urls = {d["source"] for d in ranked[: max(1, round(len(en) * HELDOUT_FRACTION))]}

    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl_gz(args.out / "ja_aozora.jsonl.gz", ja)
    write_jsonl_gz(args.out / "ja_heldout.jsonl.gz", held)
    write_jsonl_gz(args.out / "en_web.jsonl.gz", [d for d in en if d["source"] not in held_urls])
    write_jsonl_gz(args.out / "en_heldout.jsonl.gz", [d for d in en if d["source"] in held_urls])


if __name__ == "__main__":
    main()
