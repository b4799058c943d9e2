"""Decoding web pages to text: which charset, in which order of evidence, with Japanese legacy encodings right.

Evidence, strongest first:
1. a byte-order mark (unambiguous; browsers let it override everything, WHATWG Encoding §6 "decode");
2. the HTTP `Content-Type: ...; charset=` header;
3. the page's own `<meta charset>`, `<meta http-equiv="Content-Type" content="...charset=...">` or XML declaration;
4. detection: ISO-2022-JP escapes, strict UTF-8, a Japanese probe, then charset-normalizer.

A declared label is honoured only if it decodes the bytes strictly, or with at most `max_replaced` of the text
replaced (a page with one bad byte is still that charset). A label that names no web charset (`x-foobar`, or a
Python-only codec such as `unicode_escape` or `rot13`) is ignored. ISO-8859-1 / US-ASCII / windows-1252 labels are
*weak*: they are server defaults far more often than the author's choice, and an EUC-JP page decodes "fine" as
windows-1252 into mojibake. So the Japanese probe runs before a weak label is accepted.

Label → codec follows browsers (WHATWG), which is what page authors tested against: `Shift_JIS` means Microsoft's
CP932 (NEC and IBM extensions: ①, Ⅱ, ㈱ are common in Japanese pages and not in JIS X 0208), `EUC-JP` is tried as
`euc_jp` then `euc_jis_2004` (JIS X 0213 adds the NEC row-13 symbols), ISO-2022-JP as `iso2022_jp_ext` (half-width
katakana) then the 2004 variant. Real files checked in tests: shared/data/web/legacy_encodings and the ClueWeb WARC.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from kamado.corpus.kana import kana_count

FAMILIES: dict[str, tuple[str, ...]] = {  # Python codec name → codecs tried in order
    **dict.fromkeys(("shift_jis", "cp932", "shift_jis_2004", "shift_jisx0213"), ("cp932", "shift_jis_2004")),
    **dict.fromkeys(("euc_jp", "euc_jis_2004", "euc_jisx0213"), ("euc_jp", "euc_jis_2004")),
    **dict.fromkeys(
        ("iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_3", "iso2022_jp_ext", "iso2022_jp_2004"),
        ("iso2022_jp_ext", "iso2022_jp_2004", "iso2022_jp_2"),
    ),
    **dict.fromkeys(("ascii", "iso8859-1", "cp1252"), ("cp1252",)),  # WHATWG: latin1 and ascii mean windows-1252
    **dict.fromkeys(("gb2312", "gbk", "gb18030"), ("gb18030",)),
    "big5": ("big5hkscs", "cp950"),
    "euc_kr": ("cp949",),
    "tis-620": ("cp874",),
}
EXTRA_LABELS = {  # web labels Python does not know
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "sjis-win": "cp932",
    "x-euc-jp": "euc_jp",
    "eucjp-ms": "euc_jp",
    "euc-jp-ms": "euc_jp",
    "cp51932": "euc_jp",
    "unicode-1-1-utf-8": "utf-8",
    "x-unicode20utf8": "utf-8",
    "utf8mb4": "utf-8",
}
# codecs that are web charsets; keeps out Python's text transforms (unicode_escape, idna, punycode, utf-7, ...)
_WEB_CODEC = re.compile(
    r"(utf-(8|16|32)(-[lb]e)?|cp\d+|iso8859-\d+|koi8-[rtu]|mac-\w+|gb\w+|big5\w*|hz|johab"
    r"|euc_\w+|shift_jis\w*|iso2022_\w+|ascii|tis-620|kz1048|ptcp154)"
)
WEAK = frozenset({"cp1252"})
_CT_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([^\"';,\s]+)", re.I)
_META_CHARSET = re.compile(rb"<meta[^>]{0,512}?charset\s*=\s*[\"']?\s*([-\w.:]+)", re.I)
_XML_ENCODING = re.compile(rb"<\?xml[^>]{0,200}?encoding\s*=\s*[\"']\s*([-\w.:]+)", re.I)
_ISO2022_ESCAPES = (b"\x1b$B", b"\x1b$@", b"\x1b(J", b"\x1b(I", b"\x1b$(D")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
MARKUP_PREFIX = 4096  # bytes searched for <meta charset>: WHATWG prescans 1024, Japanese pages often need more
DETECT_PREFIX = 64 * 1024


@dataclass(frozen=True, slots=True)
class DecodedPage:
    text: str
    codec: str  # Python codec that produced `text`
    source: str  # "bom" | "http" | "meta" | "detected" | "weak-label"
    replaced: int = 0  # characters replaced by U+FFFD (0 for a strict decode)


def codec_candidates(label: str | None) -> tuple[str, ...]:
    """Python codecs to try for a charset label, best first; () for an unknown or non-web label."""
    if not label:
        return ()
    name = label.strip().strip("\"'").lower()
    name = EXTRA_LABELS.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return ()
    if not getattr(info, "_is_text_encoding", True) or not _WEB_CODEC.fullmatch(info.name):
        return ()
    return FAMILIES.get(info.name, (info.name,))


def charset_from_content_type(content_type: str) -> str | None:
    match = _CT_CHARSET.search(content_type or "")
    return match.group(1) if match else None


def charset_from_markup(payload: bytes) -> str | None:
    """The charset a page declares in its first `MARKUP_PREFIX` bytes (meta tag or XML declaration)."""
    head = payload[:MARKUP_PREFIX]
    match = _META_CHARSET.search(head) or _XML_ENCODING.search(head)
    return match.group(1).decode("ascii") if match else None


def charset_from_bom(payload: bytes) -> str | None:
    return next((codec for bom, codec in _BOMS if payload.startswith(bom)), None)


def _strict(payload: bytes, codec: str) -> str | None:
    try:
        return payload.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def _prefix(payload: bytes, n: int) -> bytes:
    """At most n bytes, cut at a newline when possible so a multi-byte character is not split."""
    if len(payload) <= n:
        return payload
    cut = payload.rfind(b"\n", 0, n)
    return payload[: cut + 1] if cut > n // 2 else payload[:n]


def _obvious_codecs(sample: bytes) -> tuple[str, ...]:
    """Detection that needs no statistics: ISO-2022-JP escapes, ASCII/UTF-8 validity, the Japanese probe."""
    if any(esc in sample for esc in _ISO2022_ESCAPES):
        return FAMILIES["iso2022_jp"]
    if sample.isascii() or _strict(sample, "utf-8") is not None:
        return ("utf-8",)
    probe = japanese_probe(sample)
    return (probe,) if probe else ()


def detect_codecs(payload: bytes) -> tuple[str, ...]:
    """Codecs that detection suggests for undeclared bytes, best first."""
    sample = _prefix(payload, DETECT_PREFIX)
    obvious = _obvious_codecs(sample)
    if obvious:
        return obvious
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    if best is None or not best.encoding:
        return ()
    return codec_candidates(best.encoding) or (best.encoding,)


def japanese_probe(sample: bytes, min_chars: int = 8) -> str | None:
    """'cp932' or 'euc_jp' if the bytes decode strictly as that codec into text with kana; else None.
    (Both can succeed on EUC-JP bytes, but only the right one yields kana: see `kamado.corpus.kana`.)"""
    scores = []
    for codec in ("cp932", "euc_jp"):
        text = _strict(sample, codec)
        if text is not None:
            scores.append((kana_count(text), codec))
    if not scores:
        return None
    count, codec = max(scores)
    return codec if count >= min_chars else None


def decode_page(payload: bytes, content_type: str = "", max_replaced: float = 0.01) -> DecodedPage | None:
    """Decode a page's bytes by the evidence above; None if nothing decodes with at most `max_replaced` of its
    non-ASCII characters replaced."""
    bom = charset_from_bom(payload)
    if bom:
        text = payload.decode(bom, "replace")
        return DecodedPage(text, bom, "bom", text.count("\ufffd"))
    declared = [
        (codec_candidates(label), source)
        for label, source in ((charset_from_content_type(content_type), "http"), (charset_from_markup(payload), "meta"))
    ]
    strong = [(group, source) for group, source in declared if group and group[0] not in WEAK]
    weak = [(group, "weak-label") for group, source in declared if group and group[0] in WEAK]
    for group, source in strong:
        page = _decode(payload, group, source, max_replaced)
        if page:
            return page
    if weak and not payload.isascii():
        obvious = _obvious_codecs(_prefix(payload, DETECT_PREFIX))
        if obvious:
            weak.insert(0, (obvious, "detected"))
    for group, source in weak:
        page = _decode(payload, group, source, max_replaced)
        if page:
            return page
    return _decode(payload, detect_codecs(payload), "detected", max_replaced)


def _decode(payload: bytes, group: tuple[str, ...], source: str, max_replaced: float) -> DecodedPage | None:
    """Strict decoding with each codec of the group, then lenient decoding with the first."""
    for codec in group:
        text = _strict(payload, codec)
        if text is not None:
            return DecodedPage(text, codec, source)
    if not group:
        return None
    try:
        text = payload.decode(group[0], "replace")
    except LookupError:
        return None
    # measured against the non-ASCII characters: Shift_JIS read as UTF-8 in a page that is mostly ASCII markup is
    # a small fraction of the page but nearly all of its Japanese
    replaced = text.count("\ufffd")
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    if replaced <= max_replaced * non_ascii:
        return DecodedPage(text, group[0], source, replaced)
    return None
