"""pfgen-bench's fluency and truthfulness: character n-gram statistics of an answer against ~1,000 references.

The semantics are upstream's `pfgen_eval.py` (`NgramScorer`, pfnet-research/pfgen-bench @ 03db7c4), restated:

- **Document frequency.** `df(t)` is the number of reference answers that contain the substring `t`, for every
  `t` of 1 to 10 characters.
- **Fluency** of an answer `a` (its first 200 characters): walking the prefixes `a[:m]`, `m = 1, 2, ...`, each
  distinct substring of up to 10 characters adds `df(t)` once, at the first prefix that contains it; the prefix
  scores `cum(m) · (1 − max(m − 100, 0) / 50) / baseline`, and the answer scores its best prefix (at least 0).
  The baseline is the mean fluency (with baseline 1) of the references themselves, so a typical reference
  scores about 1; the length discount makes ~100 characters the target and 150 worthless.
- **Truthfulness**: over the text `"^" + a + "$"` (first 202 characters), each character takes the largest `df`
  of the 3-grams covering it (markers and all, so the first and last characters are covered by fewer), scaled so
  that a 3-gram in 0.5 % of the references counts fully: `min(1, df / refs · 200)`. Punctuation, brackets and the
  markers are skipped; the score is the running mean of the rest, discounted past character 100 as above, taken
  at the last character or, for long answers, at the best position from 100 on.

Upstream builds a Python dict of every reference substring (about a million per reference set, 130 sets) and
walks each answer character by character, in a 50-process pool. Here the substrings of a reference set are
numbered level by level — the n-gram starting at `i` is the pair (number of the (n−1)-gram at `i`, code point at
`i + n − 1`), ranked with one stable sort per level — so building a set is ten sorts of ~100k integers, and an
answer's substrings are found by binary search in those sorted keys: exact (no hashing), and every per-character
loop of upstream is a numpy expression. The arithmetic is upstream's, in its order (`cum · discount / baseline`,
`total / count · discount`, sequential running sums), so every float comes out bit for bit the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLUENCY_N = 10  # upstream's fluency_n_gram
TRUTH_N = 3  # upstream's truthfulness_n_gram
SCORED_CHARS = 200  # both scores read `("^" + answer + "$")[:202]`
SKIPPED = "^$、。・「」『』（）【】［］〈〉《》"  # characters truthfulness does not average over
_SKIPPED = np.array(sorted(ord(c) for c in SKIPPED), dtype=np.int64)


def code_points(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(code points of all `texts` concatenated, the text index of each position)."""
    joined = "".join(texts)
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    doc = np.repeat(np.arange(len(texts)), [len(t) for t in texts])
    return codes, doc


def length_discount(position: np.ndarray) -> np.ndarray:
    """1 − max(position − 100, 0) / 50: full credit up to 100 characters, none at 150, negative beyond."""
    return 1 - np.maximum(position - 100, 0) / 50


def _sorted_by_key(key: np.ndarray, at: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(`key` sorted, `at` in the same order), ties in the order of `at`: one sort of `key * size + at` (SIMD
    quicksort, ~20x numpy's stable argsort) when that fits in int64, else a stable argsort."""
    if not len(key) or int(key.max()) < 2**62 // max(size, 1) - 1:
        packed = np.sort(key * size + at)
        return packed // size, packed % size
    order = np.argsort(key, kind="stable")
    return key[order], at[order]


def best_prefix(doc: np.ndarray, end: np.ndarray, gain: np.ndarray, lengths: np.ndarray, baseline: float) -> np.ndarray:
    """Fluency of each answer from its substrings' first ends `end` (in answer `doc`) and their `gain` (df):
    the best prefix score `cum(m) · discount(m) / baseline` over m = 1..min(length, 200), at least 0."""
    width = SCORED_CHARS + 1
    flat = np.bincount(doc * width + end, weights=gain, minlength=len(lengths) * width)
    cum = np.cumsum(flat.reshape(len(lengths), width), axis=1)  # integer-valued floats: exact
    m = np.arange(width)
    score = cum * length_discount(m) / baseline
    score[(m[None, :] > np.minimum(lengths, SCORED_CHARS)[:, None]) | (m[None, :] == 0)] = -np.inf
    return np.maximum(score.max(axis=1, initial=-np.inf), 0.0)


class ReferenceNgrams:
    """The substrings of one set of reference answers (one of a question's R / P / S / T sets), numbered per
    length: `keys[n-1]` holds the sorted keys of the distinct n-grams, `df[n-1]` how many references hold each."""

    def __init__(self, references: Sequence[str], max_n: int = FLUENCY_N) -> None:
        if not references:
            raise ValueError("a reference set needs at least one answer")
        self.n_references = len(references)
        codes, doc = code_points(references)
        self.alphabet, dense = np.unique(codes, return_inverse=True)
        self.base = len(self.alphabet)
        size = len(codes)
        lengths = np.array([len(r) for r in references], dtype=np.int64)
        offset = np.arange(size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        self.keys: list[np.ndarray] = []
        self.df: list[np.ndarray] = []
        firsts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (doc, end, df) for the baseline
        ids = np.full(size, -1, dtype=np.int64)
        for n in range(1, max_n + 1):
            if n == 1:
                at, key = np.arange(size), dense.astype(np.int64)
            else:
                span = max(size - n + 1, 0)
                at = np.flatnonzero((ids[:span] >= 0) & (doc[:span] == doc[n - 1 : n - 1 + span]))
                key = ids[at] * self.base + dense[at + n - 1]
            sorted_key, sorted_at = _sorted_by_key(key, at, size)  # equal n-grams together, in text order
            new_key = np.ones(len(at), dtype=bool)
            new_key[1:] = sorted_key[1:] != sorted_key[:-1]
            rank = np.cumsum(new_key) - 1
            first_in_doc = new_key.copy()
            first_in_doc[1:] |= doc[sorted_at[1:]] != doc[sorted_at[:-1]]
            df = np.bincount(rank[first_in_doc], minlength=int(new_key.sum()))
            self.keys.append(sorted_key[new_key])
            self.df.append(df)
            first = sorted_at[first_in_doc]
            firsts.append((doc[first], offset[first] + n, df[rank[first_in_doc]]))
            ids = np.full(size, -1, dtype=np.int64)
            ids[sorted_at] = rank
        # The baseline: each reference's own fluency (first 200 characters) with baseline 1, averaged in order as
        # upstream's `baseline += ...` does. A substring first seen past character 200 is not in that prefix.
        doc, end, gain = (np.concatenate(parts) for parts in zip(*firsts, strict=True))
        in_prefix = end <= SCORED_CHARS
        fluency = best_prefix(doc[in_prefix], end[in_prefix], gain[in_prefix], lengths, 1.0)
        total = 0.0
        for x in fluency.tolist():
            total += x
        self.baseline = total / len(references)

    def lookup(self, codes: np.ndarray, doc: np.ndarray, max_n: int) -> list[np.ndarray]:
        """For n = 1..max_n: the number of the n-gram starting at each position of `codes` among the references'
        n-grams, -1 where the references do not hold it (or it runs past the end of its text)."""
        pos = np.minimum(np.searchsorted(self.alphabet, codes), len(self.alphabet) - 1)
        dense = np.where(self.alphabet[pos] == codes, pos, -1)
        out = []
        ids = np.full(len(codes), -1, dtype=np.int64)
        for n in range(1, max_n + 1):
            key = np.full(len(codes), -1, dtype=np.int64)
            if n == 1:
                key[:] = dense
            else:
                span = max(len(codes) - n + 1, 0)
                nxt = dense[n - 1 : n - 1 + span]
                ok = (ids[:span] >= 0) & (doc[:span] == doc[n - 1 : n - 1 + span]) & (nxt >= 0)
                key[:span] = np.where(ok, ids[:span] * self.base + nxt, -1)
            table = self.keys[n - 1]
            if len(table):
                pos = np.minimum(np.searchsorted(table, key), len(table) - 1)
                ids = np.where((key >= 0) & (table[pos] == key), pos, -1)
            else:
                ids = np.full(len(codes), -1, dtype=np.int64)
            out.append(ids)
        return out

    def fluency(self, answers: Sequence[str]) -> np.ndarray:
        """Upstream's `score_fluency(answer)[0]` for each answer (its first 200 characters)."""
        texts = [a[:SCORED_CHARS] for a in answers]
        codes, doc = code_points(texts)
        lengths = np.array([len(t) for t in texts], dtype=np.int64)
        offset = np.arange(len(codes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        parts = []
        for n, ids in enumerate(self.lookup(codes, doc, FLUENCY_N), start=1):
            at = np.flatnonzero(ids >= 0)
            _, first = np.unique(doc[at] * len(self.keys[n - 1]) + ids[at], return_index=True)
            at = at[first]  # each distinct n-gram at its first occurrence in its answer
            parts.append((doc[at], offset[at] + n, self.df[n - 1][ids[at]]))
        first_doc, end, gain = (np.concatenate(p) for p in zip(*parts, strict=True))
        return best_prefix(first_doc, end, gain, lengths, self.baseline)

    def truthfulness(self, answers: Sequence[str]) -> np.ndarray:
        """Upstream's `score_truthfulness(answer)` for each answer."""
        texts = [f"^{a}$"[: SCORED_CHARS + 2] for a in answers]
        codes, doc = code_points(texts)
        lengths = np.array([len(t) for t in texts], dtype=np.int64)
        offset = np.arange(len(codes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        width = SCORED_CHARS + 2
        ids = self.lookup(codes, doc, TRUTH_N)[TRUTH_N - 1]
        df = np.where(ids >= 0, self.df[TRUTH_N - 1][np.maximum(ids, 0)], 0)
        covered = np.zeros((len(texts), width + TRUTH_N), dtype=np.int64)
        held = np.zeros((len(texts), width + TRUTH_N), dtype=np.int64)
        held[doc, offset] = df
        for k in range(TRUTH_N):  # each character: the largest df of the 3-grams that cover it
            covered[:, k:] = np.maximum(covered[:, k:], held[:, : held.shape[1] - k])
        covered = covered[:, :width]
        chars = np.zeros((len(texts), width), dtype=np.int64)
        chars[doc, offset] = codes
        inside = np.arange(width)[None, :] < lengths[:, None]
        counted = inside & ~np.isin(chars, _SKIPPED)
        value = np.where(counted, np.minimum(1.0, covered / self.n_references * 200.0), 0.0)
        total = np.cumsum(value, axis=1)
        count = np.cumsum(counted, axis=1)
        n = np.arange(width)
        with np.errstate(invalid="ignore", divide="ignore"):
            running = total / count * length_discount(n)
        best = np.where(counted & (n >= 100), running, -np.inf).max(axis=1, initial=-np.inf)
        best = np.maximum(best, 0.0)
        last_index = np.where(counted, n, -1).max(axis=1)
        last = np.where(last_index >= 0, running[np.arange(len(texts)), np.maximum(last_index, 0)], 0.0)
        return np.maximum(best, last)
