"""Kana: the characters that tell Japanese apart, used both to check a decoding and to pre-select pages.

Hiragana and katakana appear in virtually every Japanese sentence (particles, okurigana, loanwords) and in no other
language's ordinary text; kanji alone do not tell Japanese from Chinese. A wrong Japanese codec does not produce
them either: EUC-JP bytes read as CP932 give half-width katakana (U+FF61..U+FF9F) and kanji, never hiragana.
"""

from __future__ import annotations


def is_kana(ch: str) -> bool:
    """Hiragana ぁ..ゖ, katakana ァ..ヺ and the long-vowel mark ー; not the middle dot ・ (also used in Chinese)
    and not half-width katakana."""
    return "\u3041" <= ch <= "\u3096" or "\u30a1" <= ch <= "\u30fa" or ch == "\u30fc"


def kana_count(text: str) -> int:
    return sum(1 for ch in text if is_kana(ch))


def kana_stats(text: str) -> tuple[int, int]:
    """(kana, non-ASCII letters) in `text`; kana are letters too, so the first never exceeds the second."""
    kana = letters = 0
    for ch in text:
        if ch.isascii():
            continue
        if is_kana(ch):
            kana += 1
            letters += 1
        elif ch.isalpha():
            letters += 1
    return kana, letters
