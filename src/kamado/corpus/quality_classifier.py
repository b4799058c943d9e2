"""The learned quality scorer (`kamado.corpus.quality_model`) as a datatrove step, after the rules.

Every document gets `metadata["quality_score"]` (P(good), rounded to 4 places) so a later mixture can weight by
it; with `filter` on, documents below the threshold are dropped as `dropped_low_quality_score`, which the corpus
report's funnel and drop reasons show like the rules' drops. Documents are scored in batches: one sparse matrix
product per batch instead of one per document.
"""

from __future__ import annotations

from typing import Any

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from kamado.corpus.quality_model import ClassifierConfig, QualityModel

SCORE_KEY = "quality_score"
DROP_REASON = "low_quality_score"


class QualityClassifier(BaseFilter):
    name = "🧮 Quality classifier"

    def __init__(self, config: ClassifierConfig | None = None, filter: bool = True, exclusion_writer: Any = None):
        super().__init__(exclusion_writer, batch_size=256)
        self.config = config or ClassifierConfig(enabled=True)
        self.keep_all = not filter
        self._model: QualityModel | None = None  # loaded in the worker, not pickled with the step

    @property
    def model(self) -> QualityModel:
        if self._model is None:
            self._model = QualityModel.load(self.config.model_dir())
        return self._model

    def warm_up(self) -> None:
        """Import scikit-learn (0.8 s; the model itself loads in 0.06 s) in the process that forks the workers
        (`kamado.corpus.pipeline`), by scoring one text with a model loaded there and not kept on the step; a
        model folder that cannot be read fails here, once, before any worker starts."""
        QualityModel.load(self.config.model_dir()).scores(["warm-up"])

    @property
    def threshold(self) -> float:
        return self.model.threshold if self.config.threshold is None else self.config.threshold

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        scores = self.model.scores([d.text for d in batch])
        out: list[bool | tuple[bool, str]] = []
        for doc, score in zip(batch, scores, strict=True):
            doc.metadata[SCORE_KEY] = round(float(score), 4)
            out.append(True if self.keep_all or score >= self.threshold else (False, DROP_REASON))
        return out
