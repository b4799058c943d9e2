"""Statistics of a Japanese web document that the quality rules (`kamado.corpus.quality`) are thresholds on.

Pure functions of the text, grouped by what they cost, so a filter can stop after the cheap ones. Counting runs
in C: one compiled character-class pattern per script, `str.split`, `collections.Counter` over n-gram strings,
one alternation pattern per word list; the only Python loops are over lines and over repeated n-grams, never over
characters. All of it together: about 0.8 M characters/s on one core (Aozora chunks, 2-core shared CPU), the
n-grams being 90% of that; a typical page costs a few ms, against ~35 ms for its HTML extraction.

Conventions, chosen so the numbers do not depend on how the HTML was laid out:

- `chars` and every character fraction count non-whitespace characters (Markdown indentation, table padding
  and the full-width space are layout, not content);
- a *sentence* ends after a run of 。．！？!? (with its closing bracket) or at a line break (a heading, a list
  item, a table row is a sentence too, as in the line-broken plain text the Swallow paper measured);
- *words*, for Gopher's n-gram statistics, are runs of one script: kanji, hiragana, katakana, Latin letters and
  digits (吾輩|は|猫|である). Japanese has no spaces, and a morphological analyser would cost more than all the
  other rules together; a script change is the cheapest word boundary there is. Characters would be the other
  cheap choice, but character n-grams with Gopher's n are sub-word pieces that repeat in any fluent text
  (している, ることが): with them the duplicated 5..10-gram rules reject 138 of the 211 Aozora Bunko chunks in
  `samples/`. Script runs average 2.4 characters against about 5.5 for an English word and its space, so
  `kamado.corpus.quality` doubles Gopher's n (top 4/6/8-grams, duplicated 10..20-grams) to let an n-gram span as
  many characters as Gopher's did, and keeps Gopher's thresholds: the n-gram rules then flag 2 of the 211 chunks
  (18 with Gopher's n undoubled).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from itertools import accumulate, compress

from kamado.corpus.quality_words import AD_KEYWORDS, BBS_PATTERNS, NG_WORDS

Stats = dict[str, float]

# Unicode blocks. Kanji: CJK unified ideographs (+ extension A and the compatibility block) and 々〆〇;
# katakana includes the long-vowel mark ー and half-width katakana; Japanese punctuation is the CJK symbols block
# (、。「」『』【】〜...), the middle dot ・, the full-width ASCII symbols (！？（）：～...) and … ‥.
HIRAGANA = "\u3041-\u309f"
KATAKANA = "\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9f"
KANJI = "\u3005-\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
JA_PUNCT = "\u3001-\u3004\u3008-\u303f\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\u2025\u2026"

_HIRAGANA_RUNS = re.compile(f"[{HIRAGANA}]+")
_KATAKANA_RUNS = re.compile(f"[{KATAKANA}]+")
_KANJI_RUNS = re.compile(f"[{KANJI}]+")
_PUNCT_RUNS = re.compile(f"[{JA_PUNCT}]+")
_SPACE_RUNS = re.compile(r"\s+")
_WORDS = re.compile(
    f"[{KANJI}]+|[{HIRAGANA}]+|[{KATAKANA}]+|[0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]+"
    f"|[^\\W\\d_{HIRAGANA}{KATAKANA}{KANJI}]+"
)
_SENTENCE_END = re.compile(r"(?<=[。．！？!?])(?![。．！？!?」』）)])|\n")
_ELLIPSES = ("…", "‥", "...", "・・・", "･･･")
_CLOSERS = "。．！？!?」』）)】"
_NG_WORDS = re.compile("|".join(map(re.escape, NG_WORDS)))
_AD_KEYWORDS = re.compile("|".join(map(re.escape, AD_KEYWORDS)))
_BBS = re.compile("|".join(BBS_PATTERNS), re.MULTILINE)

# Gopher's n (2..4 and 5..10 words), doubled because script runs are shorter than English words (module doc)
TOP_NGRAM_SIZES = (4, 6, 8)
DUP_NGRAM_SIZES = (10, 12, 14, 16, 18, 20)


def _covered(pattern: re.Pattern[str], text: str) -> int:
    """Characters of `text` inside matches of `pattern`."""
    return sum(map(len, pattern.findall(text)))


def char_stats(text: str) -> Stats:
    """`chars` (non-whitespace) and the fractions of them that are hiragana, katakana, kanji, and Japanese
    (hiragana + katakana + kanji + Japanese punctuation)."""
    chars = len(text) - _covered(_SPACE_RUNS, text)
    hira, kata, kanji = _covered(_HIRAGANA_RUNS, text), _covered(_KATAKANA_RUNS, text), _covered(_KANJI_RUNS, text)
    japanese = hira + kata + kanji + _covered(_PUNCT_RUNS, text)
    n = max(chars, 1)
    return {
        "chars": float(chars),
        "hiragana_frac": hira / n,
        "katakana_frac": kata / n,
        "kanji_frac": kanji / n,
        "japanese_frac": japanese / n,
    }


def duplicate_fractions(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier item, fraction of the items' characters in those repeats) —
    Gopher's duplicate line / paragraph statistics (Rae et al. 2021, Table A1)."""
    seen: set[str] = set()
    dup_items = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items / max(len(items), 1), dup_chars / max(total_chars, 1)


def line_stats(text: str) -> Stats:
    """Duplicate lines and paragraphs (blank-line separated), whitespace-stripped, empty ones ignored."""
    lines = [s for s in (line.strip() for line in text.split("\n")) if s]
    paragraphs = [s for s in (p.strip() for p in re.split(r"\n[ \t\u3000]*\n", text)) if s]
    dup_lines, dup_line_chars = duplicate_fractions(lines)
    dup_paras, dup_para_chars = duplicate_fractions(paragraphs)
    return {
        "dup_line_frac": dup_lines,
        "dup_line_char_frac": dup_line_chars,
        "dup_para_frac": dup_paras,
        "dup_para_char_frac": dup_para_chars,
    }


def words(text: str) -> list[str]:
    """Script runs: 吾輩は猫である。 → [吾輩, は, 猫, である]. Punctuation and symbols are not words."""
    return _WORDS.findall(text)


def ngram_stats(
    tokens: list[str], top_sizes: Sequence[int] = TOP_NGRAM_SIZES, dup_sizes: Sequence[int] = DUP_NGRAM_SIZES
) -> Stats:
    """Gopher's repetition statistics over `tokens` (Rae et al. 2021, Table A1; the Swallow corpus applies them):

    - `top_{n}gram_char_frac`: characters in the occurrences of the most frequent n-gram, over all token
      characters; 0 when no n-gram occurs twice (on a short text a single n-gram is a large share of it, and one
      occurrence is not repetition);
    - `dup_{n}gram_char_frac`: characters of the tokens covered by any n-gram that occurs more than once (each
      character counted once however many duplicates overlap it), over all token characters.

    An n-gram is a slice of the tokens joined with NUL separators, so counting is C-speed string hashing."""
    joined = "".join(t + "\0" for t in tokens)
    ends = list(accumulate((len(t) + 1 for t in tokens), initial=0))  # slice bounds in `joined`
    chars = list(accumulate(map(len, tokens), initial=0))  # token characters before each token
    total = max(chars[-1], 1)
    out: Stats = {}
    for n in top_sizes:
        top = Counter(map(joined.__getitem__, map(slice, ends, ends[n:]))).most_common(1)
        gram, count = top[0] if top else ("", 0)
        out[f"top_{n}gram_char_frac"] = (len(gram) - n) * count / total if count > 1 else 0.0
    for n in dup_sizes:
        grams = list(map(joined.__getitem__, map(slice, ends, ends[n:])))
        counts = Counter(grams)
        covered = reach = 0
        for start in compress(range(len(grams)), map((1).__lt__, map(counts.__getitem__, grams))):
            begin, end = chars[start], chars[start + n]
            if end > reach:
                covered += end - max(begin, reach)
                reach = end
        out[f"dup_{n}gram_char_frac"] = covered / total
    return out


def sentences(text: str) -> list[str]:
    """Sentences: split after a run of 。．！？!? (and its closing bracket) and at line breaks, stripped, empty ones
    dropped."""
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


def ends_with_ellipsis(sentence: str) -> bool:
    """…, ‥, ... or ・・・ at the end, ignoring a final terminator or closing bracket (そうか…。 counts)."""
    return sentence.rstrip(_CLOSERS).endswith(_ELLIPSES)


def sentence_stats(text: str) -> Stats:
    """Sentence count, mean and maximum length in characters, the fraction ending in an ellipsis (Swallow),
    and characters per 。 (HojiChar's rare-kuten rule: prose has a 。 every few dozen characters; menus, lists
    of links and tag clouds have none)."""
    parts = sentences(text)
    lengths = [len(s) for s in parts]
    n = max(len(parts), 1)
    chars = len(text) - _covered(_SPACE_RUNS, text)
    return {
        "sentences": float(len(parts)),
        "avg_sentence_chars": sum(lengths) / n,
        "max_sentence_chars": float(max(lengths, default=0)),
        "ellipsis_sentence_frac": sum(map(ends_with_ellipsis, parts)) / n,
        "chars_per_kuten": chars / max(text.count("。"), 1),
    }


def keyword_stats(text: str) -> Stats:
    """The fraction of non-whitespace characters inside NG expressions, and the number of advertisement-keyword
    and bulletin-board-pattern matches (lists in `kamado.corpus.quality_words`)."""
    chars = max(len(text) - _covered(_SPACE_RUNS, text), 1)
    return {
        "ng_word_char_frac": _covered(_NG_WORDS, text) / chars,
        "ad_hits": float(sum(1 for _ in _AD_KEYWORDS.finditer(text))),
        "bbs_hits": float(sum(1 for _ in _BBS.finditer(text))),
    }
