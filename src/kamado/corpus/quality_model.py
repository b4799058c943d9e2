"""The learned Japanese quality scorer: hashed character n-grams → logistic regression → P(good), stored without
pickle (`kamado corpus train-quality` makes one; `quality_classifier.QualityClassifier` is its datatrove step).

A model folder holds two files, both plain data:

- `model.safetensors`: the non-zero weights of the hashed features (`indices` int32, `weights` float16); for TF-IDF
  features the idf of the buckets seen in training (`idf_indices`, `idf_values`; the rest share `idf_default`);
  when the rules' statistics are features too, their standardisation (`stats_mean`, `stats_scale`) and weights;
- `model.json`: the feature settings, intercept, decision threshold, `idf_default`, cross-validation numbers, the
  training data's SHA-256 and a data card.

Why hashing (scikit-learn's stateless `HashingVectorizer`, MurmurHash3 of each n-gram): there is no vocabulary to
store or to unpickle, so the weights are the whole model, and scoring is one sparse dot product. Character
n-grams rather than words, because Japanese has no spaces and a morphological analyser would cost more than the
rest of the pipeline (the peers that score Japanese pages, e.g. Swallow Corpus v2's classifier, are fastText-style
bags of sub-word units too). Configuration (`ClassifierConfig`) imports neither numpy nor scikit-learn.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kamado.config_checks import Range, check_fields
from kamado.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np
    from scipy.sparse import csr_matrix

DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "quality_ja"
MODEL_FILES = ("model.json", "model.safetensors")
FORMAT = "kamado-quality-classifier/1"


@dataclass
class ClassifierConfig:
    """`[quality.classifier]`: the learned scorer after the rules. `enabled` scores every document
    (`metadata["quality_score"]`), `filter` also drops those below the threshold. `model` "" is the model shipped
    in the package; `threshold` None (leave it out in TOML) is the model's own, chosen by cross-validation."""

    enabled: bool = False
    filter: bool = True
    model: str = ""  # a folder made by `kamado corpus train-quality`
    threshold: float | None = None  # keep documents with P(good) >= threshold

    def validate(self, prefix: str = "quality.classifier") -> None:
        check_fields(self, prefix, threshold=Range(0, 1, optional=True))
        if self.enabled and self.model:
            missing = [f for f in MODEL_FILES if not (Path(self.model) / f).is_file()]
            if missing:
                raise ConfigError(
                    f"{prefix}.model = {self.model!r}: not a quality model folder (missing {', '.join(missing)}); "
                    f'make one with `kamado corpus train-quality`, or use "" for the shipped model'
                )

    def model_dir(self) -> Path:
        return Path(self.model) if self.model else DEFAULT_MODEL_DIR


@dataclass(frozen=True)
class FeatureSettings:
    """How a text becomes a feature vector; saved in `model.json`, so a model is scored as it was trained."""

    ngram_min: int = 1
    ngram_max: int = 3
    n_features_log2: int = 20  # hashed buckets: 2**20, few collisions for ~10^5 distinct n-grams
    binary: bool = False  # n-gram presence instead of counts
    tfidf: bool = False  # 1 + log(count), times the n-gram's idf in the training texts (binary is then ignored)
    max_chars: int = 0  # score only the first characters (0: all); long pages cost linear time otherwise
    rule_stats: tuple[str, ...] = ()  # `kamado.corpus.quality.quality_stats` names used as extra features


def normalize(text: str, max_chars: int) -> str:
    """NFKC (full-width Latin letters and digits, half-width katakana folded), whitespace runs as one space."""
    if max_chars:
        text = text[:max_chars]
    return " ".join(unicodedata.normalize("NFKC", text).split())


def hashed_ngrams(texts: list[str], fs: FeatureSettings, idf: np.ndarray | None = None) -> csr_matrix:
    """Rows of l2-normalised hashed character n-gram counts (scikit-learn's HashingVectorizer, stateless). With
    `fs.tfidf`, the counts are sublinear (1 + log) and, when `idf` is given, weighted by it before the norm;
    without `idf` the rows are left unnormalised, as `fit_idf` and `apply_idf` expect."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(
        analyzer="char",
        ngram_range=(fs.ngram_min, fs.ngram_max),
        n_features=2**fs.n_features_log2,
        alternate_sign=False,
        binary=fs.binary and not fs.tfidf,
        norm=None if fs.tfidf else "l2",
        lowercase=True,
        dtype=_float32(),
    )
    x = vectorizer.transform([normalize(t, fs.max_chars) for t in texts])
    if not fs.tfidf:
        return x
    import numpy as np

    x.data = 1.0 + np.log(x.data)
    return x if idf is None else apply_idf(x, idf)


def fit_idf(tf: csr_matrix) -> np.ndarray:
    """Smoothed idf of each hashed n-gram over the rows of `tf`, ln((1 + n) / (1 + df)) + 1, as scikit-learn's
    TfidfTransformer computes it (float32, one per bucket; unseen buckets get the largest value)."""
    import numpy as np

    df = np.asarray((tf > 0).sum(axis=0)).ravel()
    return (np.log((1.0 + tf.shape[0]) / (1.0 + df)) + 1.0).astype(np.float32)


def apply_idf(tf: csr_matrix, idf: np.ndarray) -> csr_matrix:
    """`tf` rows weighted by `idf`, then l2-normalised (a new matrix)."""
    from sklearn.preprocessing import normalize as l2_rows

    x = tf.copy()
    x.data = x.data * idf[x.indices]
    return l2_rows(x, norm="l2", copy=False)


def rule_stat_matrix(texts: list[str], names: tuple[str, ...], max_chars: int = 0) -> np.ndarray:
    """(documents, len(names)) statistics of the quality rules as log(1 + x), float64 (before standardisation):
    the ratios stay near-linear, the lengths (mean sentence, characters per 。) lose their long tails. Only the
    statistic groups that hold `names` are computed (the n-gram group is the costly one)."""
    import numpy as np

    from kamado.corpus.quality import STAT_GROUPS, QualityConfig

    cfg = QualityConfig.for_snippets()
    out = np.zeros((len(texts), len(names)), dtype=np.float64)
    for i, text in enumerate(texts):
        text = text[:max_chars] if max_chars else text
        stats: dict[str, float] = {}
        for group in STAT_GROUPS.values():
            if all(n in stats for n in names):
                break
            stats.update(group(text, cfg))
        out[i] = [stats[n] for n in names]
    return np.log1p(np.clip(out, 0.0, 1e6))


def _float32() -> Any:
    import numpy as np

    return np.float32


@dataclass
class QualityModel:
    """Weights + settings; `scores(texts)` is P(good) per text, `keep(texts)` compares with the threshold."""

    features: FeatureSettings
    weights: np.ndarray  # dense float32, 2**n_features_log2
    intercept: float
    threshold: float
    stats_mean: np.ndarray  # one per rule statistic (empty when none)
    stats_scale: np.ndarray
    stats_weights: np.ndarray
    info: dict[str, Any]  # cross-validation numbers, data hash, data card: carried into model.json as they are
    idf: np.ndarray | None = None  # float32 per bucket, when features.tfidf

    def margins(self, texts: list[str]) -> np.ndarray:
        x = hashed_ngrams(texts, self.features, self.idf) @ self.weights + self.intercept
        if self.features.rule_stats:
            z = rule_stat_matrix(texts, self.features.rule_stats, self.features.max_chars)
            z = (z - self.stats_mean) / self.stats_scale
            x = x + z @ self.stats_weights
        return x

    def scores(self, texts: list[str]) -> np.ndarray:
        """P(good) = sigmoid(w·x + b), float64."""
        import numpy as np

        return 1.0 / (1.0 + np.exp(-self.margins(texts).astype(np.float64)))

    def save(self, out_dir: str | Path) -> None:
        """`model.safetensors` + `model.json`, each written atomically (the json last: it marks a complete model)."""
        import numpy as np
        from safetensors.numpy import save

        from kamado.atomic import atomic_write_bytes, atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        nz = np.flatnonzero(self.weights).astype(np.int32)
        tensors: dict[str, np.ndarray] = {
            "indices": nz,
            "weights": self.weights[nz].astype(np.float16),
            "stats_mean": self.stats_mean.astype(np.float64),
            "stats_scale": self.stats_scale.astype(np.float64),
            "stats_weights": self.stats_weights.astype(np.float64),
        }
        idf_default = None
        if self.idf is not None:  # the buckets seen in training; the rest share the largest (unseen) value
            idf_default = float(self.idf.max())
            seen = np.flatnonzero(self.idf < idf_default).astype(np.int32)
            tensors |= {"idf_indices": seen, "idf_values": self.idf[seen].astype(np.float32)}
        atomic_write_bytes(out / "model.safetensors", save(tensors))
        meta = {
            "format": FORMAT,
            "features": {**asdict(self.features), "rule_stats": list(self.features.rule_stats)},
            "intercept": self.intercept,
            "threshold": self.threshold,
            **({"idf_default": idf_default} if idf_default is not None else {}),
            **self.info,
        }
        atomic_write_text(out / "model.json", json.dumps(meta, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path) -> QualityModel:
        """Read a model folder (no pickle anywhere); DataError naming the folder for anything missing or wrong."""
        import numpy as np
        from safetensors.numpy import load_file

        d = Path(model_dir)
        missing = [f for f in MODEL_FILES if not (d / f).is_file()]
        if missing:
            raise DataError(f"{d}: not a quality model folder (missing {', '.join(missing)})")
        try:
            meta = json.loads((d / "model.json").read_text(encoding="utf-8"))
            t = load_file(str(d / "model.safetensors"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            f = meta["features"]
            fs = FeatureSettings(**{**f, "rule_stats": tuple(f["rule_stats"])})
            weights = np.zeros(2**fs.n_features_log2, dtype=np.float32)
            weights[t["indices"]] = t["weights"].astype(np.float32)
            idf = None
            if fs.tfidf:
                idf = np.full(2**fs.n_features_log2, float(meta["idf_default"]), dtype=np.float32)
                idf[t["idf_indices"]] = t["idf_values"]
            skip = ("format", "features", "intercept", "threshold", "idf_default")
            info = {k: v for k, v in meta.items() if k not in skip}
            model = cls(
                fs,
                weights,
                float(meta["intercept"]),
                float(meta["threshold"]),
                t["stats_mean"],
                t["stats_scale"],
                t["stats_weights"],
                info,
                idf,
            )
        except (ValueError, KeyError, TypeError, IndexError, OSError) as e:
            raise DataError(f"{d}: unreadable quality model ({e})") from e
        if len(model.stats_mean) != len(fs.rule_stats):
            raise DataError(f"{d}: model.json and model.safetensors do not match")
        if not (math.isfinite(model.threshold) and 0 <= model.threshold <= 1):
            raise DataError(f"{d}/model.json: threshold {model.threshold} is not a probability")
        return model
