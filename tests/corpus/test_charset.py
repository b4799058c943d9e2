"""Charset resolution on real Japanese legacy pages and on the label/decoding cases that break naive decoders."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from kamado.corpus.charset import codec_candidates, decode_page, detect_codecs
from kamado.corpus.http_message import parse_http_response
from kamado.corpus.kana import is_kana
from kamado.corpus.warc import read_warc_file

# folder of shared/data/web/legacy_encodings → the codec that is the truth for its files
LEGACY = {"EUC-JP": "euc_jp", "SHIFT_JIS": "cp932", "CP932": "cp932"}
_DECLARATIONS = re.compile(rb"(encoding|charset)\s*=\s*[\"']?[-\w]+", re.I)

JAPANESE = "日本語の文章です。カタカナもひらがなも入っています。"


def legacy_files(web_data: Path) -> list[tuple[Path, str]]:
    return [
        (p, codec)
        for folder, codec in LEGACY.items()
        for p in sorted((web_data / "legacy_encodings" / folder).iterdir())
    ]


def test_legacy_pages_decode_as_declared_and_as_detected(web_data: Path) -> None:
    files = legacy_files(web_data)
    assert len(files) == 62
    for path, codec in files:
        raw = path.read_bytes()
        page = decode_page(raw)
        assert page is not None and page.text == raw.decode(codec), path.name
        # without any declaration, detection alone must find the same text
        bare = _DECLARATIONS.sub(b"", raw)
        page = decode_page(bare)
        assert page is not None and page.source == "detected"
        assert page.text == bare.decode(codec), path.name


def test_clueweb_euc_jp_pages_decode_to_japanese(web_data: Path) -> None:
    sources: Counter[str] = Counter()
    for record in read_warc_file(web_data / "warc" / "clueweb09-ja-eucjp-quirky.warc.gz"):
        if record.record_type != "response":
            continue
        response = parse_http_response(record.block, 1 << 24)
        assert response is not None
        page = decode_page(response.body, response.content_type)
        assert page is not None and page.replaced == 0 and "\ufffd" not in page.text
        sources[f"{page.codec}/{page.source}"] += 1
        title = re.search(r"<title>(.*?)</title>", page.text, re.S)
        assert title and sum(map(is_kana, title.group(1))) >= 5, record.target_uri  # e.g. ブラウニー リュック L【…】
        assert "お買い物かご" in page.text and "パスワードをご入力ください" in page.text
        # detection agrees with the header
        assert decode_page(response.body).text == page.text  # type: ignore[union-attr]
    assert sources == {"euc_jp/http": 29}


@pytest.mark.parametrize(
    ("label", "first"),
    [
        ("Shift_JIS", "cp932"),
        ("x-sjis", "cp932"),
        ("windows-31j", "cp932"),
        ("EUC-JP", "euc_jp"),
        ("x-euc-jp", "euc_jp"),
        ("ISO-2022-JP", "iso2022_jp_ext"),
        ("iso-8859-1", "cp1252"),
        ("gb2312", "gb18030"),
        ("UTF8", "utf-8"),
    ],
)
def test_web_labels_map_to_browser_codecs(label: str, first: str) -> None:
    assert codec_candidates(label)[0] == first


@pytest.mark.parametrize("label", ["x-foobar", "", "unicode_escape", "rot13", "base64", "utf-7", "idna"])
def test_bad_or_non_web_labels_give_no_codec(label: str) -> None:
    assert codec_candidates(label) == ()


def test_bad_label_falls_back_to_detection() -> None:
    raw = f"<html><body>{JAPANESE}</body></html>".encode("euc_jp")
    page = decode_page(raw, "text/html; charset=x-foobar")
    assert page is not None and (page.codec, page.source) == ("euc_jp", "detected") and JAPANESE in page.text


def test_wrong_label_falls_through_to_meta() -> None:
    raw = f'<meta charset="Shift_JIS"><p>{JAPANESE * 5}</p>'.encode("cp932")
    page = decode_page(raw, "text/html; charset=EUC-JP")
    assert page is not None and (page.codec, page.source) == ("cp932", "meta")


def test_latin1_server_default_does_not_turn_euc_jp_into_mojibake() -> None:
    raw = f"<p>{JAPANESE}</p>".encode("euc_jp")
    page = decode_page(raw, "text/html; charset=ISO-8859-1")
    assert page is not None and page.codec == "euc_jp" and JAPANESE in page.text
    utf8 = decode_page(f"<p>{JAPANESE}</p>".encode(), "text/html; charset=ISO-8859-1")
    assert utf8 is not None and JAPANESE in utf8.text
    german = decode_page("<p>Grüße aus Köln</p>".encode("latin-1"), "text/html; charset=ISO-8859-1")
    assert german is not None and german.text == "<p>Grüße aus Köln</p>"


def test_shift_jis_label_decodes_nec_extensions() -> None:
    text = "①株式会社㈱ローマ数字Ⅱ"
    raw = text.encode("cp932")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("shift_jis")
    page = decode_page(raw, "text/html; charset=Shift_JIS")
    assert page is not None and page.text == text and page.replaced == 0


def test_euc_jp_label_falls_back_to_jis_x_0213_for_row_13() -> None:
    text = "丸数字①の入ったEUC-JPの文章"
    raw = text.encode("euc_jis_2004")
    page = decode_page(raw, "text/html; charset=EUC-JP")
    assert page is not None and page.text == text


def test_iso_2022_jp_with_half_width_katakana() -> None:
    text = JAPANESE + "ﾊﾝｶｸｶﾀｶﾅ"
    raw = text.encode("iso2022_jp_ext")
    assert detect_codecs(raw)[0] == "iso2022_jp_ext"
    for content_type in ("text/plain; charset=ISO-2022-JP", ""):
        page = decode_page(raw, content_type)
        assert page is not None and page.text == text


def test_bom_wins_over_a_wrong_header() -> None:
    page = decode_page(b"\xef\xbb\xbf" + JAPANESE.encode(), "text/html; charset=Shift_JIS")
    assert page is not None and (page.text, page.source) == (JAPANESE, "bom")
    page = decode_page(("\ufeff" + JAPANESE).encode("utf-16-le"))
    assert page is not None and page.text == JAPANESE


def test_utf8_header_over_shift_jis_in_mostly_ascii_markup() -> None:
    markup = "<div class='nav'><a href='/index.html'>top</a></div>\n" * 200
    raw = f"<html><body>{markup}<p>{JAPANESE}</p>{markup}</body></html>".encode("cp932")
    page = decode_page(raw, "text/html; charset=utf-8")
    assert page is not None and page.codec == "cp932" and JAPANESE in page.text


def test_a_few_bad_bytes_are_replaced_not_fatal() -> None:
    raw = (JAPANESE * 20).encode() + b"\xff" + (JAPANESE * 20).encode()
    page = decode_page(raw, "text/html; charset=utf-8")
    assert page is not None and page.codec == "utf-8" and page.replaced == 1


def test_random_bytes_are_undecodable_or_harmless() -> None:
    raw = bytes(range(256)) * 50
    page = decode_page(raw, "text/html; charset=utf-8")
    assert page is None or page.codec != "utf-8"
