"""`kamado corpus train-quality`: choose the quality scorer by cross-validation on labelled snippets, train it on
all of them, save it (`kamado.corpus.quality_model`).

Selection, all with one seed: stratified k-fold over the labelled set; for each candidate (n-gram range,
regularisation, rules' statistics or not) and each outer fold, logistic regression (scikit-learn, lbfgs) is fit on
the other folds, and the decision threshold is chosen *inside* those folds (out-of-fold scores of an inner
3-fold split) as the one with the best F1 among those with precision >= `MIN_PRECISION` (the best F1 if none
reaches it). The outer fold is then scored at that threshold, so the reported mean ± s.d. of precision, recall
and F1 never saw the fold's labels. The candidate with the best mean F1 among those whose mean precision reaches
`MIN_PRECISION` (else the best mean F1) is refit on everything, with its threshold chosen the same way on the
whole set's out-of-fold scores.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kamado.corpus.quality_eval import read_labelled
from kamado.corpus.quality_model import (
    FeatureSettings,
    QualityModel,
    apply_idf,
    fit_idf,
    hashed_ngrams,
    rule_stat_matrix,
)
from kamado.errors import DataError

MIN_PRECISION = 0.80
RULE_STATS = (  # length-free statistics of the rules (kamado.corpus.quality_rules)
    "hiragana_frac",
    "katakana_frac",
    "kanji_frac",
    "japanese_frac",
    "ng_word_char_frac",
    "avg_sentence_chars",
    "ellipsis_sentence_frac",
    "chars_per_kuten",
)


@dataclass(frozen=True)
class Candidate:
    name: str
    features: FeatureSettings
    c: float  # inverse L2 strength of the logistic regression


def candidates() -> list[Candidate]:
    """The grid `train-quality` compares. Earlier, wider sweeps (LOG.md, 2026-12-04 and -05) found n-gram presence
    (binary) better than raw counts and sublinear TF-IDF better than both, 1-2/1-3-grams better than 2-4-grams,
    the rules' statistics worth little on top; every candidate reads the first 500 characters (the annotator
    saw 300; speed). The first candidate is session 9's model, kept as the reference."""
    fs = FeatureSettings(ngram_min=1, ngram_max=2, binary=True, max_chars=500)
    out = [Candidate("char1-2 binary C=10", fs, 10.0)]
    for lo, hi, c in ((1, 2, 3.0), (1, 3, 10.0), (1, 3, 30.0)):
        fs = FeatureSettings(ngram_min=lo, ngram_max=hi, tfidf=True, max_chars=500)
        out.append(Candidate(f"char{lo}-{hi} tfidf C={c:g}", fs, c))
    fs = FeatureSettings(ngram_min=1, ngram_max=3, tfidf=True, max_chars=500, rule_stats=RULE_STATS)
    out.append(Candidate("char1-3 tfidf + rules C=10", fs, 10.0))
    return out


@dataclass
class Design:
    """The features of a labelled set for one candidate, computed once and sliced per fold."""

    ngrams: Any  # csr_matrix; for TF-IDF the sublinear counts, weighted by an idf fit on each training part
    stats: np.ndarray  # raw (log1p) rule statistics, standardised per fit
    y: np.ndarray  # 1 = good
    tfidf: bool = False

    @classmethod
    def build(cls, texts: list[str], y: np.ndarray, fs: FeatureSettings) -> Design:
        return cls(hashed_ngrams(texts, fs), rule_stat_matrix(texts, fs.rule_stats, fs.max_chars), y, fs.tfidf)


@dataclass
class Fit:
    """A logistic regression fit on some rows of a Design, with what it learnt from those rows alone: the
    statistics' standardisation and, for TF-IDF, the idf."""

    lr: Any
    mean: np.ndarray
    scale: np.ndarray
    idf: np.ndarray | None


def _fit(d: Design, rows: np.ndarray, c: float) -> Fit:
    from sklearn.linear_model import LogisticRegression

    mean, scale = d.stats[rows].mean(axis=0), d.stats[rows].std(axis=0)
    scale[scale == 0] = 1.0
    idf = fit_idf(d.ngrams[rows]) if d.tfidf else None
    fit = Fit(LogisticRegression(C=c, solver="liblinear", max_iter=1000), mean, scale, idf)
    fit.lr.fit(_matrix(d, rows, fit), d.y[rows])
    return fit


def _matrix(d: Design, rows: np.ndarray, fit: Fit) -> Any:
    from scipy.sparse import csr_matrix, hstack

    ngrams = d.ngrams[rows] if fit.idf is None else apply_idf(d.ngrams[rows], fit.idf)
    if d.stats.shape[1] == 0:
        return ngrams
    return hstack([ngrams, csr_matrix((d.stats[rows] - fit.mean) / fit.scale)], format="csr")


def _predict(d: Design, fit: Fit, rows: np.ndarray) -> np.ndarray:
    return np.asarray(fit.lr.predict_proba(_matrix(d, rows, fit))[:, 1])


def prf(y: np.ndarray, keep: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall, F1 of keeping `keep` when `y` (1 = good) is the truth."""
    tp = float(np.sum(keep & (y == 1)))
    p, r = tp / max(int(keep.sum()), 1), tp / max(int((y == 1).sum()), 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def choose_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The score cut with the best F1 among cuts with precision >= MIN_PRECISION (best F1 when none has)."""
    cuts = np.unique(scores)
    stats = [(prf(y, scores >= t), float(t)) for t in cuts]
    precise = [s for s in stats if s[0][0] >= MIN_PRECISION]
    (_, _, _), best = max(precise or stats, key=lambda s: (s[0][2], -s[1]))
    return best


def _oof_scores(d: Design, rows: np.ndarray, c: float, folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros(len(rows))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, d.y[rows]):
        out[te] = _predict(d, _fit(d, rows[tr], c), rows[te])
    return out


def cross_validate(d: Design, c: float, folds: int, seed: int) -> dict[str, Any]:
    """Per outer fold: precision, recall, F1 at the threshold chosen inside its training folds; mean and s.d."""
    from sklearn.model_selection import StratifiedKFold

    per_fold = []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(d.y, d.y):
        t = choose_threshold(d.y[tr], _oof_scores(d, tr, c, 3, seed))
        per_fold.append((*prf(d.y[te], _predict(d, _fit(d, tr, c), te) >= t), t))
    a = np.array(per_fold)
    names = ("precision", "recall", "f1", "threshold")
    return {n: {"mean": float(a[:, i].mean()), "sd": float(a[:, i].std(ddof=1))} for i, n in enumerate(names)}


def data_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


DATA_CARD = {
    "source": "mC4 Japanese snippets labelled by hand (KanHatakeyama/JapaneseWarcParser, "
    "mc4s/old/annotations/original_data/annotations.txt); the dev half, 838 snippets, as copied in "
    "shared/data/web/mc4_ja_quality_labels.dev.jsonl (a disjoint half is kept back for independent checks)",
    "licence": "MIT (the annotation file's repository); the snippets are web text of their authors",
    "label_meaning": "one person's quick yes/no on the first 300 characters of an mC4 Japanese record, typed "
    "into an annotation prompt (the source's DatasetAnnotator: Enter = bad, anything else = good) to train a "
    "filter that keeps clean mC4 text for LLM pre-training; the source writes down no criteria. Read as: 'good' "
    "= text worth pre-training on, 'bad' = not (in the set: shop/ad copy, menus and keyword lists, adult or "
    "spam text, fragments). One annotator, no agreement measured: the labels are noisy",
    "intended_use": "scoring extracted Japanese web documents in kamado's corpus pipeline; a score, not a fact "
    "about a page. Trained on snippets judged by their head, so a page is scored on its first `max_chars` "
    "characters (features.max_chars in model.json)",
}


def train_quality(
    paths: list[str | Path], out_dir: str | Path, seed: int = 0, folds: int = 5, grid: list[Candidate] | None = None
) -> tuple[QualityModel, list[dict[str, Any]]]:
    """Cross-validate every candidate, refit the chosen one on all data, save it to `out_dir`; (model, CV rows)."""
    files = [Path(p) for p in paths]
    rows = [r for p in files for r in read_labelled(p)]
    y = np.array([label == "good" for _, label in rows], dtype=np.int64)
    if min(int(y.sum()), int(len(y) - y.sum())) < 2 * folds:
        raise DataError(
            f"{', '.join(map(str, files))}: {int(y.sum())} good and {int(len(y) - y.sum())} bad documents; "
            f"{folds}-fold cross-validation needs at least {2 * folds} of each"
        )
    texts = [t for t, _ in rows]
    table = []
    designs: dict[FeatureSettings, Design] = {}
    for cand in grid or candidates():
        d = designs.setdefault(cand.features, Design.build(texts, y, cand.features))
        cv = cross_validate(d, cand.c, folds, seed)
        table.append({"name": cand.name, "c": cand.c, "features": asdict(cand.features), **cv})
    precise = [i for i, r in enumerate(table) if r["precision"]["mean"] >= MIN_PRECISION]
    best = max(precise or range(len(table)), key=lambda i: table[i]["f1"]["mean"])
    cand = (grid or candidates())[best]
    d = designs[cand.features]
    everything = np.arange(len(y))
    threshold = choose_threshold(y, _oof_scores(d, everything, cand.c, folds, seed))
    fit = _fit(d, everything, cand.c)
    n = 2**cand.features.n_features_log2
    coef = fit.lr.coef_[0]
    model = QualityModel(
        features=cand.features,
        weights=coef[:n].astype(np.float16).astype(np.float32),  # what the saved file holds
        intercept=float(fit.lr.intercept_[0]),
        threshold=threshold,
        stats_mean=fit.mean,
        stats_scale=fit.scale,
        stats_weights=np.asarray(coef[n:], dtype=np.float64),
        info={
            "chosen": cand.name,
            "c": cand.c,
            "seed": seed,
            "folds": folds,
            "min_precision": MIN_PRECISION,
            "training_data": [{"path": p.name, "sha256": data_sha256([p])} for p in files],
            "documents": {"good": int(y.sum()), "bad": int(len(y) - y.sum())},
            "cross_validation": table,
            "data_card": DATA_CARD,
        },
        idf=fit.idf,
    )
    model.save(out_dir)
    return model, table


def format_cv_table(table: list[dict[str, Any]]) -> str:
    """One line per candidate: mean ± s.d. over the outer folds of precision, recall, F1 and the threshold."""

    def ms(r: dict[str, Any], k: str) -> str:
        return f"{r[k]['mean']:.3f} ± {r[k]['sd']:.3f}"

    out = [f"{'candidate':<28} {'precision':>13} {'recall':>13} {'F1':>13} {'threshold':>13}"]
    out += [
        f"{r['name']:<28} {ms(r, 'precision'):>13} {ms(r, 'recall'):>13} {ms(r, 'f1'):>13} {ms(r, 'threshold'):>13}"
        for r in table
    ]
    return "\n".join(out)
