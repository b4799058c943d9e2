"""Japanese quality filters for extracted web documents: thresholds in `QualityConfig`, one datatrove step.

The rules are those of the Swallow corpus (Okazaki et al. 2024, "Building a Large Japanese Web Corpus for Large
Language Models", section on quality filtering), which keep pages that read like Japanese prose:

| rule                 | statistic                                            | rejects when       |
|----------------------|------------------------------------------------------|--------------------|
| foreign_prose        | prose characters in non-Japanese blocks (kamado's)   | > 0.5 of them      |
| too_short            | non-whitespace characters                            | < 400              |
| low_japanese         | hiragana + katakana + kanji + Japanese punctuation   | < 0.5 of them      |
| low_hiragana         | hiragana (particles, endings: there are sentences)   | < 0.2              |
| high_katakana        | katakana (product lists, keyword stuffing)           | > 0.5              |
| short/long_sentences | mean sentence length in characters                   | < 20 or > 90       |
| longest_sentence     | longest sentence                                     | > 200              |
| ellipsis             | sentences ending in … (truncated teasers)            | > 0.2 of them      |
| ng_words             | characters inside adult/spam expressions             | > 0.05             |

plus Gopher's repetition rules as Swallow applies them (Rae et al. 2021, Table A1: duplicate lines 0.30,
paragraphs 0.30, their characters 0.20/0.20, top n-grams 0.20/0.18/0.16, duplicated n-grams 0.15..0.10), and three
rules in the spirit of HojiChar: advertisement keywords (`ads`), bulletin-board markers (`bbs`) and too few 。
(`rare_kuten`). How the statistics are counted is in `kamado.corpus.quality_rules`; the word lists are in
`kamado.corpus.quality_words`.

Block-level (`prose_only`, the default): the script and sentence rules (`chars` and `sentences` groups:
too_short, low_japanese, low_hiragana, high_katakana, the sentence-length, ellipsis and rare-。 rules) read the
page's prose blocks only (`kamado.corpus.blocks.prose_text`: no code blocks, tables, inline code or URLs), so a
Japanese manual is judged on its sentences, not on its commands; the keyword and repetition rules read the whole
text. Prose blocks with (almost) no Japanese (`min_block_japanese_frac`: English navigation, copyright lines,
untranslated paragraphs) are set aside: the page is decided on how much of its prose they are (`foreign_prose`,
a share of prose characters: a mostly English page with a Japanese menu fails it), and the script and sentence
rules read the Japanese blocks. `JapaneseQualityFilter` cuts those blocks out of a kept page (code and tables stay).

Every threshold is a field; `None` (in Python) or the rule's name in `disabled_rules` (in TOML, which has no null)
switches a rule off. Rules run cheapest first and the first that fails names the drop, so datatrove counts
`dropped_<rule>`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from kamado.config_checks import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, Range, check_fields, check_items
from kamado.corpus import quality_rules as qr
from kamado.corpus.quality_model import ClassifierConfig
from kamado.corpus.quality_rules import Stats
from kamado.errors import ConfigError


@dataclass
class QualityConfig:
    """Thresholds of the quality rules; defaults are the Swallow paper's unless noted."""

    enabled: bool = True
    prose_only: bool = True  # script and sentence rules on the prose blocks (kamado.corpus.blocks); False: whole text
    min_block_japanese_frac: float | None = 0.1  # prose blocks under this share of Japanese are foreign; None: none
    max_foreign_prose_frac: float | None = 0.5  # the page's prose characters in foreign blocks
    disabled_rules: list[str] = field(default_factory=list)  # rule names switched off, e.g. ["too_short"]
    min_chars: int | None = 400
    min_japanese_frac: float | None = 0.5
    min_hiragana_frac: float | None = 0.2
    max_katakana_frac: float | None = 0.5
    max_ng_word_char_frac: float | None = 0.05
    # ads / bbs (HojiChar-style; kamado's thresholds): rejected when there are at least `*_min_hits` matches AND
    # at least `*_hits_per_1k_chars` per 1,000 characters, so one price in a long article is harmless and a
    # short page made of them is not
    ad_min_hits: int | None = 3
    ad_hits_per_1k_chars: float = 5.0
    bbs_min_hits: int | None = 3
    bbs_hits_per_1k_chars: float = 5.0
    max_dup_line_frac: float | None = 0.30  # Gopher
    max_dup_para_frac: float | None = 0.30
    max_dup_line_char_frac: float | None = 0.20
    max_dup_para_char_frac: float | None = 0.20
    min_avg_sentence_chars: float | None = 20.0
    max_avg_sentence_chars: float | None = 90.0
    max_sentence_chars: int | None = 200
    max_ellipsis_sentence_frac: float | None = 0.2
    # HojiChar-style rare-。 rule (kamado's threshold): prose puts a 。 at least every ~100 characters, just above
    # Swallow's longest acceptable mean sentence (90)
    max_chars_per_kuten: float | None = 100.0
    # Gopher n-grams over script-run words (~2.4 characters each, see quality_rules), so n is doubled to span as
    # many characters as Gopher's English word n-grams; thresholds are Gopher's. Empty lists disable.
    top_ngram_sizes: list[int] = field(default_factory=lambda: [4, 6, 8])
    max_top_ngram_char_frac: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    dup_ngram_sizes: list[int] = field(default_factory=lambda: [10, 12, 14, 16, 18, 20])
    max_dup_ngram_char_frac: list[float] = field(default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10])
    # the learned scorer after the rules (`kamado.corpus.quality_model`): `[quality.classifier]` in TOML
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "quality") -> None:
        unknown = sorted(set(self.disabled_rules) - set(RULE_NAMES))
        if unknown:
            raise ConfigError(f"{prefix}.disabled_rules: unknown rule(s) {unknown} (known: {', '.join(RULE_NAMES)})")
        share, least = Range(0, 1, optional=True), Range(0, optional=True)  # None switches the rule off
        shares = [
            f.name for f in fields(self) if f.name.endswith("_frac") and not isinstance(getattr(self, f.name), list)
        ]
        check_fields(self, prefix, **dict.fromkeys(shares, share))
        amounts = ("min_chars", "ad_min_hits", "bbs_min_hits", "max_sentence_chars", "max_chars_per_kuten")
        check_fields(self, prefix, **dict.fromkeys(amounts, least))
        check_fields(self, prefix, min_avg_sentence_chars=least, max_avg_sentence_chars=least)
        check_fields(self, prefix, ad_hits_per_1k_chars=NON_NEGATIVE, bbs_hits_per_1k_chars=NON_NEGATIVE)
        for sizes, limits in (
            ("top_ngram_sizes", "max_top_ngram_char_frac"),
            ("dup_ngram_sizes", "max_dup_ngram_char_frac"),
        ):
            if len(getattr(self, sizes)) != len(getattr(self, limits)):
                raise ConfigError(f"{prefix}.{sizes} and {prefix}.{limits} must have the same length")
            check_items(f"{prefix}.{sizes}", getattr(self, sizes), AT_LEAST_ONE)
            check_items(f"{prefix}.{limits}", getattr(self, limits), FRACTION)
        self.classifier.validate(f"{prefix}.classifier")

    @classmethod
    def for_snippets(cls, **overrides: Any) -> QualityConfig:
        """For text cut to a few hundred characters (the mC4 snippets of the labelled set): the length of a
        fragment says nothing about the page, so `too_short` is off. Every other rule is a ratio and stays."""
        return cls(**{"min_chars": None, **overrides})


# --------------------------------------------------------------------------------------------------------------
# Rules: (name, statistic group, test that is True when the document FAILS). Order = evaluation order.

Check = Callable[[Stats, QualityConfig], bool]


def _below(stat: str, limit: str) -> Check:
    return lambda s, c: getattr(c, limit) is not None and s[stat] < getattr(c, limit)


def _above(stat: str, limit: str) -> Check:
    return lambda s, c: getattr(c, limit) is not None and s[stat] > getattr(c, limit)


def _too_many_hits(stat: str, min_hits: str, per_1k: str) -> Check:
    def check(s: Stats, c: QualityConfig) -> bool:
        least = getattr(c, min_hits)
        return least is not None and s[stat] >= least and s[stat] * 1000 >= getattr(c, per_1k) * s["chars"]

    return check


def _ngram_check(kind: str) -> Check:
    """Fails when any n-gram size is above its limit (Gopher has one threshold per n)."""

    def check(s: Stats, c: QualityConfig) -> bool:
        sizes, limits = getattr(c, f"{kind}_ngram_sizes"), getattr(c, f"max_{kind}_ngram_char_frac")
        return any(s[f"{kind}_{n}gram_char_frac"] > limit for n, limit in zip(sizes, limits, strict=True))

    return check


PROSE_GROUPS = ("chars", "sentences")  # what `prose_only` computes on the (Japanese) prose blocks


def _block_stats(text: str, cfg: QualityConfig) -> Stats:
    from kamado.corpus.blocks import foreign_prose_fraction

    least = cfg.min_block_japanese_frac
    return {"foreign_prose_frac": 0.0 if least is None else foreign_prose_fraction(text, least)}


STAT_GROUPS: dict[str, Callable[[str, QualityConfig], Stats]] = {
    "blocks": _block_stats,
    "chars": lambda text, cfg: qr.char_stats(text),
    "keywords": lambda text, cfg: qr.keyword_stats(text),
    "lines": lambda text, cfg: qr.line_stats(text),
    "sentences": lambda text, cfg: qr.sentence_stats(text),
    "ngrams": lambda text, cfg: qr.ngram_stats(qr.words(text), cfg.top_ngram_sizes, cfg.dup_ngram_sizes),
}
RULES: tuple[tuple[str, str, Check], ...] = (
    ("foreign_prose", "blocks", _above("foreign_prose_frac", "max_foreign_prose_frac")),
    ("too_short", "chars", _below("chars", "min_chars")),
    ("low_japanese", "chars", _below("japanese_frac", "min_japanese_frac")),
    ("low_hiragana", "chars", _below("hiragana_frac", "min_hiragana_frac")),
    ("high_katakana", "chars", _above("katakana_frac", "max_katakana_frac")),
    ("ng_words", "keywords", _above("ng_word_char_frac", "max_ng_word_char_frac")),
    ("ads", "keywords", _too_many_hits("ad_hits", "ad_min_hits", "ad_hits_per_1k_chars")),
    ("bbs", "keywords", _too_many_hits("bbs_hits", "bbs_min_hits", "bbs_hits_per_1k_chars")),
    ("dup_lines", "lines", _above("dup_line_frac", "max_dup_line_frac")),
    ("dup_paragraphs", "lines", _above("dup_para_frac", "max_dup_para_frac")),
    ("dup_line_chars", "lines", _above("dup_line_char_frac", "max_dup_line_char_frac")),
    ("dup_paragraph_chars", "lines", _above("dup_para_char_frac", "max_dup_para_char_frac")),
    ("short_sentences", "sentences", _below("avg_sentence_chars", "min_avg_sentence_chars")),
    ("long_sentences", "sentences", _above("avg_sentence_chars", "max_avg_sentence_chars")),
    ("longest_sentence", "sentences", _above("max_sentence_chars", "max_sentence_chars")),
    ("ellipsis", "sentences", _above("ellipsis_sentence_frac", "max_ellipsis_sentence_frac")),
    ("rare_kuten", "sentences", _above("chars_per_kuten", "max_chars_per_kuten")),
    ("top_ngram", "ngrams", _ngram_check("top")),
    ("dup_ngram", "ngrams", _ngram_check("dup")),
)
RULE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in RULES)


def quality_stats(text: str, cfg: QualityConfig | None = None) -> Stats:
    """Every statistic the rules look at (the n-gram sizes come from `cfg`)."""
    cfg = cfg or QualityConfig()
    prose = _prose(text, cfg)
    return {k: v for name, group in STAT_GROUPS.items() for k, v in group(_input(name, text, prose), cfg).items()}


def _prose(text: str, cfg: QualityConfig) -> str:
    """What the script and sentence rules read: the prose of the Japanese blocks, or the whole text."""
    from kamado.corpus.blocks import cut_foreign_blocks, prose_text

    if not cfg.prose_only:
        return text
    least = cfg.min_block_japanese_frac
    return prose_text(text if least is None else cut_foreign_blocks(text, least)[0])


def _input(group: str, text: str, prose: str) -> str:
    return prose if group in PROSE_GROUPS else text


def failed_rules(stats: Stats, cfg: QualityConfig) -> list[str]:
    """Names of every enabled rule that `stats` fail, in evaluation order."""
    if not cfg.enabled:
        return []
    return [name for name, _, fails in RULES if name not in cfg.disabled_rules and fails(stats, cfg)]


def first_failed_rule(stats: Stats, cfg: QualityConfig) -> str | None:
    """The rule a filter would name for this document, or None if it is kept."""
    failed = failed_rules(stats, cfg)
    return failed[0] if failed else None


def check_text(text: str, cfg: QualityConfig) -> tuple[str | None, Stats]:
    """(first failed rule or None, the statistics computed so far): groups are computed only when an enabled
    rule needs them, so a page rejected by the character counts never pays for the n-grams."""
    stats: Stats = {}
    done: set[str] = set()
    if not cfg.enabled:
        return None, stats
    prose = _prose(text, cfg)
    for name, group, fails in RULES:
        if name in cfg.disabled_rules:
            continue
        if group not in done:
            stats.update(STAT_GROUPS[group](_input(group, text, prose), cfg))
            done.add(group)
        if fails(stats, cfg):
            return name, stats
    return None, stats
