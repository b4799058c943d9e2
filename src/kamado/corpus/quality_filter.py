"""The quality rules as a datatrove step (the rules and their thresholds are in `kamado.corpus.quality`, which
does not import datatrove, so configs load without it)."""

from __future__ import annotations

from typing import Any

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from kamado.corpus.quality import QualityConfig, check_text

METADATA_STATS = ("chars", "hiragana_frac", "japanese_frac", "avg_sentence_chars")


class JapaneseQualityFilter(BaseFilter):
    """Drops documents that fail a rule of `QualityConfig`, naming the first failed rule, so the step's stats
    hold `dropped_<rule>` counts (and an exclusion writer gets `metadata["filter_reason"]`). Kept documents get
    four rounded statistics in `metadata["quality"]` (length, hiragana and Japanese fractions, mean sentence
    length): enough to look at what was kept, small enough for every record. A kept page then loses its prose
    blocks with (almost) no Japanese (`min_block_japanese_frac`; stat and `metadata["blocks_cut"]`)."""

    name = "🎌 Japanese quality"

    def __init__(self, config: QualityConfig | None = None, exclusion_writer: Any = None):
        super().__init__(exclusion_writer)
        self.config = config or QualityConfig()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        failed, stats = check_text(doc.text, self.config)
        if failed is not None:
            return False, failed
        if self.config.enabled and self.config.min_block_japanese_frac is not None:
            from kamado.corpus.blocks import cut_foreign_blocks

            # the page is judged whole (its prose, English paragraphs included); a kept page loses them
            text, cut = cut_foreign_blocks(doc.text, self.config.min_block_japanese_frac)
            if cut:
                doc.text = text
                doc.metadata["blocks_cut"] = cut
                self.stat_update("blocks_cut", value=cut)
        doc.metadata["quality"] = {k: round(stats[k], 3) for k in METADATA_STATS if k in stats}
        return True
