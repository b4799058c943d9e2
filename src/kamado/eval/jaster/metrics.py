"""How llm-jp-eval v1.3 scores an answer: normalisation, exact_match, char_f1, pearson, spearman.

Normalisation (v1.3's evaluator): the model's output is cut at its first blank line ("\\n\\n") and NFKC-normalised
(full-width letters and digits become half-width, half-width katakana full-width); the gold output is
NFKC-normalised. Nothing else — no stripping — so an answer with a leading space does not match.

char_f1 is v1.3's `fuzzywuzzy.fuzz.token_sort_ratio(pred, gold) / 100` with python-Levenshtein installed (as
v1.3's dependencies have it), reimplemented here without the dependency: each string drops the characters
U+0080–U+00FF (fuzzywuzzy's force_ascii), turns every non-word character into a space, is lower-cased, stripped,
split on whitespace and its tokens sorted and joined by one space; the score is the InDel similarity
1 − (|a| + |b| − 2·LCS(a, b)) / (|a| + |b|), as a percentage rounded to an integer (Python's round, computed in
that order, which decides the exact .5 cases as python-Levenshtein does). Two strings equal after that score 1.0
(even empty ones); one empty string scores 0.0. It matched fuzzywuzzy 0.18 + python-Levenshtein on 270,000 test
pairs (random Japanese/ASCII/Latin-1 strings and every exact .5 case up to length 59).

pearson and spearman are computed over a whole test set: golds as floats against `parse_float` of each answer
(digits and dots only; -2.0 when that is not a number), 0.0 when undefined (a constant column), as v1.3 does.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

_LATIN1_SUPPLEMENT = {code: None for code in range(128, 256)}
_NON_WORD = re.compile(r"\W")


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def normalize_answer(output: str) -> str:
    """A model's raw output as v1.3 scores it: up to its first blank line, NFKC-normalised."""
    return normalize(output.split("\n\n")[0])


def exact_match(pred: str, gold: str) -> float:
    """1.0 when the normalised answer equals the normalised gold output, else 0.0 (v1.3's accuracy per sample)."""
    return 1.0 if pred == gold else 0.0


def _token_sort_key(text: str) -> str:
    processed = _NON_WORD.sub(" ", text.translate(_LATIN1_SUPPLEMENT)).lower().strip()
    return " ".join(sorted(processed.split()))


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence, by Hyyrö's bit-parallel algorithm (one big-integer step per
    character of `b`; the zero bits of V mark the matched positions of `a`)."""
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for ch in b:
        u = v & masks.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def char_f1(pred: str, gold: str) -> float:
    """v1.3's char_f1 of two normalised strings, in [0, 1] in steps of 0.01 (see the module docstring)."""
    a, b = _token_sort_key(pred), _token_sort_key(gold)
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    total = len(a) + len(b)
    ratio = 1.0 - (total - 2 * lcs_length(a, b)) / total  # rapidfuzz's float steps: they decide the .5 ties
    return round(100 * ratio) / 100


def parse_float(text: str) -> float:
    """v1.3's reading of a number out of an answer: keep digits and dots; -2.0 when the rest is not a float."""
    cleaned = re.sub(r"[^0-9.]", "", text)
    try:
        return float(cleaned)
    except ValueError:
        return -2.0


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2:
        return 0.0
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum()) / denom if denom > 0 else 0.0


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given the mean of the ranks they span (scipy's rankdata 'average')."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]


def pearson(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Pearson's r between the gold scores and the numbers read from the normalised answers."""
    assert len(preds) == len(golds)
    return _correlation(np.array([float(g) for g in golds]), np.array([parse_float(p) for p in preds]))


def spearman(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Spearman's rho: Pearson's r of the (tie-averaged) ranks."""
    assert len(preds) == len(golds)
    gold = np.array([float(g) for g in golds])
    pred = np.array([parse_float(p) for p in preds])
    return _correlation(_average_ranks(gold), _average_ranks(pred))


STS_RANGE = 5.0  # JSTS similarities are in [0, 5]


def sample_score(metric: str, output: str, gold: str) -> float:
    """One answer's score in [0, 1] under `metric`, from the raw model output and the raw gold output.

    exact_match and char_f1 are v1.3's. pearson and spearman only exist over a test set, so a single JSTS answer
    is scored 1 − |answer − gold| / 5, clipped at 0: a kamado addition for the verifiable reward of on-policy
    DPO, not a v1.3 metric."""
    pred, ref = normalize_answer(output), normalize(gold)
    if metric == "exact_match":
        return exact_match(pred, ref)
    if metric == "char_f1":
        return char_f1(pred, ref)
    if metric in ("pearson", "spearman"):
        return max(0.0, 1.0 - abs(parse_float(pred) - float(ref)) / STS_RANGE)
    raise ValueError(f"unknown metric {metric!r}")
