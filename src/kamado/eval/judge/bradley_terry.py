"""Bradley–Terry ratings from Rakuda-style pairwise judgments, on Rakuda's Elo-like scale (issue 10).

Model. For a battle in which model i's answer was shown first and model j's second,

    P(the first-shown answer wins) = σ(α + β_i − β_j),        σ(x) = 1 / (1 + e^−x),

with β the strengths (natural log-odds units) and α the position bias: the judge's advantage for the answer it
reads first (Rakuda's "home advantage"; α > 0 favours the first answer). A tie counts as half a win for each side
(score 0.5 in the same likelihood), as Rakuda does: it keeps one parameter per model, its ratings comparable with
Rakuda's, and a tie carries the information of half a win plus half a loss; Davidson's tie model would add a
tie parameter for little gain when judges rarely call ties.

Scale. rating = 1000 + 400 · log10(e^β) = 1000 + (400 / ln 10) · β, i.e. 400 points per factor of ten in the
odds, as in Rakuda's ranking script (SCALE 400, BASE 10, INIT_RATING 1000). Ratings are centred (their mean is
1000, Rakuda's sum-to-zero constraint) or, with `anchor`, the anchor model is pinned at 1000 (its interval is then
a point). The position bias is on the same scale without the offset.

How this differs from Rakuda. Rakuda's ranking script fits the same likelihood either by Bayesian MCMC (emcee, flat
box priors) or by maximum likelihood with a bootstrap over individual battles, and reports the median with the 16th
and 84th percentiles. Here the estimate is the (weakly penalised) maximum likelihood, found by Newton's method, and
the intervals are bootstrap percentile intervals (95% by default, `ci_level`) that resample whole questions, so both
answer orders of a question stay together. The
penalty is a Gaussian prior N(0, prior_sd²) on α and every β (default sd 4 ≈ 695 points, far wider than
real gaps): it keeps a model that won every battle finite; `prior_sd=None` gives the plain MLE, which then
refuses separated data. A bootstrap replicate in which a model has no battle (or, for the plain MLE, that has no
finite fit) is dropped; `n_bootstrap` in the result counts the replicates kept.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kamado.errors import DataError

CENTRE = 1000.0
POINTS_PER_LOGIT = 400.0 / math.log(10.0)  # ≈ 173.7 rating points per natural log-odds unit
_SCORE = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5}  # model_a's score
_COUNTS = ("battles", "wins", "losses", "ties")
_MAX_LOGIT = 18.0  # a plain-MLE gap beyond this (~3,100 points, odds 6.6e7) means the data are separated


@dataclass(frozen=True)
class ModelRating:
    model: str
    rating: float
    ci_low: float
    ci_high: float
    battles: int
    wins: int
    losses: int
    ties: int


@dataclass(frozen=True)
class BTResult:
    """Ratings best first; the position bias (first-shown advantage, rating points) and its interval."""

    ratings: tuple[ModelRating, ...]
    position_bias: float
    position_bias_ci: tuple[float, float]
    n_battles: int
    n_questions: int
    n_bootstrap: int  # replicates used (requested minus dropped)
    ci_level: float
    anchor: str | None

    def rating(self, model: str) -> ModelRating:
        for r in self.ratings:
            if r.model == model:
                return r
        raise KeyError(model)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN, e.g. an interval without replicates, becomes None)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "scale": {"centre": CENTRE, "points_per_factor_10": 400.0, "anchor": self.anchor},
            "ratings": [{**vars(r), "ci_low": num(r.ci_low), "ci_high": num(r.ci_high)} for r in self.ratings],
            "position_bias": self.position_bias,
            "position_bias_ci": [num(self.position_bias_ci[0]), num(self.position_bias_ci[1])],
            "n_battles": self.n_battles,
            "n_questions": self.n_questions,
            "n_bootstrap": self.n_bootstrap,
            "ci_level": self.ci_level,
        }


def to_markdown(result: BTResult) -> str:
    pct = f"{100 * result.ci_level:g}%"
    lines = [
        f"| rank | model | rating | {pct} CI | battles | wins | losses | ties |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k, r in enumerate(result.ratings, 1):
        ci = f"{r.ci_low:.0f}–{r.ci_high:.0f}"
        lines.append(f"| {k} | {r.model} | {r.rating:.0f} | {ci} | {r.battles} | {r.wins} | {r.losses} | {r.ties} |")
    lo, hi = result.position_bias_ci
    lines.append("")
    lines.append(
        f"Position bias (first-shown answer): {result.position_bias:+.0f} points ({pct} CI {lo:+.0f} to {hi:+.0f})."
    )
    return "\n".join(lines)


def _parse(battles: Sequence[Mapping[str, Any]]) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, Counter[str]]]:
    """Models (sorted); per battle [first's index, second's index, question index] and first's score; tallies."""
    if not battles:
        raise DataError("no battles to fit")
    rows: list[tuple[str, str, str, float]] = []
    tally: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for n, b in enumerate(battles):
        try:
            a, bb, winner, first, q = b["model_a"], b["model_b"], b["winner"], b["first"], b["question_id"]
        except (KeyError, TypeError) as e:
            raise DataError(f"battle {n}: needs model_a, model_b, winner, first and question_id ({e!r})") from None
        if not (isinstance(a, str) and isinstance(bb, str)) or a == bb:
            raise DataError(f"battle {n}: model_a and model_b must be two different names, got {a!r} and {bb!r}")
        if winner not in _SCORE:
            raise DataError(f"battle {n}: winner must be 'model_a', 'model_b' or 'tie', got {winner!r}")
        if first not in (a, bb):
            raise DataError(f"battle {n}: first must be {a!r} or {bb!r}, got {first!r}")
        score = _SCORE[winner] if first == a else 1.0 - _SCORE[winner]
        rows.append((first, bb if first == a else a, str(q), score))
        for m, s in ((a, _SCORE[winner]), (bb, 1.0 - _SCORE[winner])):
            tally[m].update(("battles", {1.0: "wins", 0.0: "losses", 0.5: "ties"}[s]))
    models = sorted(tally)
    index = {m: k for k, m in enumerate(models)}
    qids = {q: k for k, q in enumerate(sorted({r[2] for r in rows}))}
    idx = np.array([(index[f], index[s], qids[q]) for f, s, q, _ in rows])
    return models, idx, np.array([r[3] for r in rows]), tally


def _newton(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, prec: float, gauge: np.ndarray, t0: np.ndarray
) -> np.ndarray | None:
    """argmin of Σ w·(log(1+e^d) − y·d) + prec/2·|t|² + 1/2·(gauge·t)², d = x·t; None if it does not converge.

    The gauge term pins Σβ = 0 (the likelihood ignores a common shift), so it never moves the optimum."""

    def f(t: np.ndarray) -> float:
        d = x @ t
        return float(w @ (np.logaddexp(0.0, d) - y * d) + 0.5 * prec * (t @ t) + 0.5 * (gauge @ t) ** 2)

    t, ft = t0.copy(), f(t0)
    for _ in range(100):
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ t)))
        grad = x.T @ (w * (p - y)) + prec * t + gauge * (gauge @ t)
        hess = (x.T * (w * p * (1.0 - p))) @ x + prec * np.eye(len(t)) + np.outer(gauge, gauge)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(step)):
            return None
        if np.max(np.abs(step)) < 1e-9:
            t = t - step
            gaps = [np.ptp(t[gauge > 0]), abs(t[0]) if gauge[0] == 0 else 0.0]
            return t if prec > 0 or max(gaps) < _MAX_LOGIT else None
        s, decrement = 1.0, float(grad @ step)
        if decrement > 1e-10 * (1.0 + abs(ft)):  # far from the optimum: backtrack (near it f is flat to rounding)
            while f(t - s * step) > ft - 1e-4 * s * decrement:
                s /= 2.0
                if s < 1e-8:
                    return None
        t = t - s * step
        ft = f(t)
    return None  # separated data without a prior: the Newton steps stay ~1 logit long


def fit_bradley_terry(
    battles: Sequence[Mapping[str, Any]],
    *,
    anchor: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
    prior_sd: float | None = 4.0,
    position_bias: bool = True,
) -> BTResult:
    """Fit strengths and the position bias (see the module docstring); deterministic given `seed`.

    `battles`: dicts with model_a, model_b, winner ("model_a" | "model_b" | "tie"), first (the model whose answer
    was shown first) and question_id (the bootstrap's unit). `position_bias=False` drops the α term."""
    models, idx, y, tally = _parse(battles)
    n, qi = len(models), idx[:, 2]
    if anchor is not None and anchor not in models:
        raise DataError(f"anchor {anchor!r} is not among the models ({', '.join(models)})")
    if not 0.0 < ci_level < 1.0 or n_bootstrap < 0:
        raise DataError(f"need 0 < ci_level < 1 and n_bootstrap >= 0, got {ci_level} and {n_bootstrap}")
    # The likelihood depends on the battles only through each ordered pair (first, second): its weight (number of
    # battles) and total score. A bootstrap replicate reweights questions, so both are (pairs × questions) @ counts.
    pairs, pi = np.unique(idx[:, :2], axis=0, return_inverse=True)
    pi = pi.reshape(-1)
    n_q, n_p = int(qi.max()) + 1, len(pairs)
    count_pq, score_pq = np.zeros((n_p, n_q)), np.zeros((n_p, n_q))
    np.add.at(count_pq, (pi, qi), 1.0)
    np.add.at(score_pq, (pi, qi), y)
    x = np.zeros((n_p, n + 1))  # column 0: α (dropped without a position bias); then one per model
    x[:, 0] = 1.0
    x[np.arange(n_p), pairs[:, 0] + 1] += 1.0
    x[np.arange(n_p), pairs[:, 1] + 1] -= 1.0
    if np.linalg.matrix_rank(x[:, 1:].T @ x[:, 1:]) < n - 1:  # the comparison graph's Laplacian: connected?
        raise DataError("the models split into groups that never met: their ratings cannot be compared")
    off = 1 if position_bias else 0
    x = x[:, 1 - off :]
    gauge = np.r_[np.zeros(off), np.ones(n)]
    prec = 0.0 if prior_sd is None else 1.0 / prior_sd**2

    def ratings(t: np.ndarray) -> np.ndarray:  # [position bias, rating per model] in points
        beta = t[off:]
        ref = beta[models.index(anchor)] if anchor is not None else beta.mean()
        return np.r_[POINTS_PER_LOGIT * t[0] * off, CENTRE + POINTS_PER_LOGIT * (beta - ref)]

    def fit(q_counts: np.ndarray, t0: np.ndarray) -> np.ndarray | None:
        w, total = count_pq @ q_counts, score_pq @ q_counts
        played = np.bincount(pairs[:, 0], w, n) + np.bincount(pairs[:, 1], w, n)
        if np.any(played == 0):  # a model left out of a bootstrap replicate
            return None
        return _newton(x, np.divide(total, w, out=np.zeros(n_p), where=w > 0), w, prec, gauge, t0)

    t_hat = fit(np.ones(n_q), np.zeros(n + off))
    if t_hat is None:
        raise DataError("no finite maximum-likelihood fit (a model won or lost every battle?): use prior_sd")
    point = ratings(t_hat)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_bootstrap):  # resample whole questions, so both answer orders of a question stay together
        t = fit(np.bincount(rng.integers(0, n_q, size=n_q), minlength=n_q).astype(float), t_hat)
        if t is not None:
            reps.append(ratings(t))
    lo, hi = np.full((2, n + 1), math.nan)
    if reps:
        lo, hi = np.percentile(np.array(reps), [50 * (1 - ci_level), 50 * (1 + ci_level)], axis=0)
    table = [
        ModelRating(m, float(point[k + 1]), float(lo[k + 1]), float(hi[k + 1]), *(tally[m][c] for c in _COUNTS))
        for k, m in enumerate(models)
    ]
    return BTResult(
        ratings=tuple(sorted(table, key=lambda r: (-r.rating, r.model))),
        position_bias=float(point[0]),
        position_bias_ci=(float(lo[0]), float(hi[0])),
        n_battles=len(y),
        n_questions=n_q,
        n_bootstrap=len(reps),
        ci_level=ci_level,
        anchor=anchor,
    )
