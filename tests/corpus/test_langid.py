"""Japanese detection: the kana prefilter and the py3langid decision, on hand-made and real text."""

from __future__ import annotations

from pathlib import Path

from datatrove.data import Document

from kamado.corpus.kana import is_kana, kana_stats
from kamado.corpus.langid import JapaneseLanguageFilter, KanaPrefilter, identify_language, looks_japanese

JA = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
    "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。"
)
ZH = "我们的产品质量可靠，价格合理，欢迎广大客户来电咨询。公司成立于二零零五年，是一家专业生产电子元件的企业。"
EN = "The quick brown fox jumps over the lazy dog. Language models learn from large amounts of web text."


def test_kana_classes() -> None:
    assert all(map(is_kana, "あゖァヺー"))
    assert not any(map(is_kana, "・漢字aｱ、"))  # middle dot, kanji, ASCII, half-width katakana, punctuation


def test_kana_stats_counts_by_hand() -> None:
    assert kana_stats("<p>猫がニャー</p> cat") == (4, 5)  # が ニ ャ ー are kana; 猫 is the fifth letter


def test_prefilter_decisions() -> None:
    assert looks_japanese(f"<html><title>{JA}</title></html>")
    assert not looks_japanese(ZH)
    assert not looks_japanese(EN * 50)
    assert not looks_japanese(ZH * 20 + "の")  # one borrowed の in Chinese marketing text
    assert not looks_japanese(EN * 50 + "こんにちは")  # below min_count


def test_language_identifier() -> None:
    lang, prob = identify_language(JA)
    assert lang == "ja" and prob > 0.9
    assert identify_language(ZH)[0] == "zh"
    assert identify_language(EN)[0] == "en"


def test_filters_keep_japanese_and_say_why_they_drop() -> None:
    docs = [Document(text=t, id=str(i)) for i, t in enumerate([JA, ZH, EN])]
    kept = list(KanaPrefilter()(iter(docs)))
    assert [d.id for d in kept] == ["0"]
    lid = JapaneseLanguageFilter()
    kept = list(lid(iter([Document(text=t, id=str(i)) for i, t in enumerate([JA, ZH, EN])])))
    assert [d.id for d in kept] == ["0"]
    assert kept[0].metadata["language"] == "ja"
    assert lid.stats["dropped_not_japanese"].total == 2


def test_real_japanese_pages_pass_the_prefilter(web_data: Path) -> None:
    for name in ("nhk.or.jp.html", "hukumusume.html", "yahoo-4.html", "perldoc_ja_small.html"):
        assert looks_japanese((web_data / "html" / name).read_text(encoding="utf-8", errors="replace")), name
