"""Is this page Japanese? A kana count before extraction, a language identifier after it.

Kana appear in virtually every Japanese sentence and in no other language's ordinary text (`kamado.corpus.kana`).
So before paying for HTML extraction, `KanaPrefilter` counts kana in a prefix of the raw page and keeps it only if
kana are at least `min_fraction` of its non-ASCII letters (markup, scripts and English are ASCII, so they neither
help nor hurt) and at least `min_count` in number. It reads each character once, with no parsing and no regex:
about 0.7 ms for a 30 KB page, against about 35 ms for extraction (measured on the ClueWeb pages, 2-core CPU).

After extraction, `JapaneseLanguageFilter` asks py3langid (Lui & Baldwin's langid.py, 97 languages, its model is
inside the PyPI wheel and loaded without pickle) for the language of the Markdown, and keeps `ja` above a
probability threshold: this is what removes an English page that quotes a Japanese phrase, or a Chinese page
whose prefix happens to show a few kana. The classifier is the arbiter; the kana test only decides what is worth
extracting, so its thresholds are set for recall.
"""

from __future__ import annotations

import functools
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from kamado.corpus.kana import kana_stats

PREFIX_CHARS = 64 * 1024  # raw HTML characters the prefilter looks at
LID_CHARS = 4000  # characters of extracted text given to the identifier


def looks_japanese(text: str, min_count: int = 10, min_fraction: float = 0.05) -> bool:
    """The cheap test: at least `min_count` kana, making up at least `min_fraction` of the non-ASCII letters."""
    kana, letters = kana_stats(text[:PREFIX_CHARS])
    return kana >= min_count and kana >= min_fraction * letters


@functools.cache
def _identifier() -> Any:
    """py3langid's bundled model, loaded once per process (0.6 s) with probabilities normalised to [0, 1]."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the most likely language of the first `LID_CHARS` characters."""
    lang, prob = _identifier().classify(text[:LID_CHARS])
    return str(lang), float(prob)


class KanaPrefilter(BaseFilter):
    """Drops documents without enough kana before extraction (reason `no_kana`)."""

    name = "🈂 Kana prefilter"

    def __init__(self, min_count: int = 10, min_fraction: float = 0.05, exclusion_writer: Any = None):
        super().__init__(exclusion_writer)
        self.min_count = min_count
        self.min_fraction = min_fraction

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if looks_japanese(doc.text, self.min_count, self.min_fraction):
            return True
        return False, "no_kana"


class JapaneseLanguageFilter(BaseFilter):
    """Keeps documents identified as Japanese with probability >= `threshold` (drop reason `not_japanese`);
    records `language` and `language_score` in the metadata either way."""

    name = "🗾 Japanese language ID"

    def __init__(self, threshold: float = 0.5, exclusion_writer: Any = None):
        super().__init__(exclusion_writer)
        self.threshold = threshold

    def warm_up(self) -> None:
        """Load the identifier in the process that forks the workers (`kamado.corpus.pipeline`)."""
        _identifier()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang, prob = identify_language(doc.text)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(prob, 4)
        self.stat_update(f"lang_{lang}")  # languages seen, for the report
        if lang == "ja" and prob >= self.threshold:
            return True
        return False, "not_japanese"
