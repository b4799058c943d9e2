"""MinHash signatures of Japanese text: character n-gram shingles and multiply-add-shift hashing, in numpy.

What datatrove lacks for Japanese is the shingle: its MinHash splits words (spaCy + SudachiPy for `ja`) and hashes
each n-gram in Python. Japanese has no spaces, so here a shingle is a character n-gram of the normalized text
(NFKC, lower-case, whitespace/punctuation/symbols dropped: `。、「」・【】★` vanish, `ｶﾅ`/`ＡＢＣ` become
`カナ`/`abc`; by table lookup per character), and a page's n-grams are hashed all at once:

    shingle_i = splitmix64( Σ_k c[i+k] · P^(n-1-k)  mod 2^64 )            c = code points, P an odd constant
    sig_j     = min_i ((a_j · (shingle_i mod 2^32) + b_j) mod 2^64) >> 32     a_j, b_j uniform 64-bit

`sig_j` is multiply-add-shift hashing (Dietzfelbinger 1996, "Universal hashing and k-wise independent random
variables via integer arithmetic without primes"): strongly universal from 32-bit keys to 32-bit values, so
P[sig_j(A) = sig_j(B)] ≈ |A ∩ B| / |A ∪ B| (Broder 1997) as with datasketch's and datatrove's (a·x + b) mod p, but
with no division. `>> 32` is monotone, so the minimum is taken over the 64-bit values and shifted once. Pages
are signed in batches (`minhash_signatures`), since numpy's per-call cost would dominate short pages; on the
Aozora sample that is ~6× datasketch's signatures/s (bench/corpus_minhash.py, LOG.md).
`kamado.corpus.dedup` runs this inside datatrove's sharded dedup stages.
"""

import functools
import unicodedata
from dataclasses import dataclass

import numpy as np

from kamado.config_checks import AT_LEAST_ONE, FRACTION, Range, check_fields

_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling n-gram hash (2^64 / golden ratio)
_MAX_SIG = 0xFFFFFFFE  # datatrove's bucket reader stops at a first row value of 2^32 - 1: clamp below it
_CHUNK = 512  # shingles per block of the signature computation


@dataclass
class DedupConfig:
    """`[dedup]`: exact dedup of normalized text, then MinHash LSH on character n-grams (one document per cluster)."""

    exact: bool = True  # drop documents whose normalized text equals an earlier one's
    minhash: bool = True  # drop near-duplicates found by MinHash LSH
    ngram: int = 5  # characters per shingle (after normalization)
    num_bands: int = 14  # LSH bands b; a candidate pair agrees on all rows of at least one band
    rows_per_band: int = 8  # rows r; b·r hashes; P[candidate] = 1 - (1 - s^r)^b, centred at (1/b)^(1/r) = 0.72
    threshold: float = 0.8  # estimated Jaccard a candidate must reach to be merged; 0: every candidate (datatrove)
    seed: int = 1  # hash parameters; must be equal for every task of a run
    normalize: bool = True  # NFKC + lower-case + drop whitespace, punctuation, symbols, control/format chars

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_hashes(self) -> int:
        return self.num_bands * self.rows_per_band

    def validate(self, prefix: str = "dedup") -> None:
        bands = Range(1, 999)  # datatrove names bucket files with three digits; rows alike: b·r hashes per page
        check_fields(self, prefix, ngram=AT_LEAST_ONE, num_bands=bands, rows_per_band=bands, threshold=FRACTION)
        check_fields(self, prefix, seed=Range(0, 2**32 - 1))


def lsh_candidate_probability(similarity: float, num_bands: int, rows_per_band: int) -> float:
    """P[a pair of Jaccard `similarity` shares at least one band] = 1 - (1 - s^r)^b (Leskovec et al., MMDS §3.4)."""
    return 1.0 - (1.0 - similarity**rows_per_band) ** num_bands


@dataclass(frozen=True)
class _Tables:
    start: np.ndarray  # uint32[0x110000]: where out(c) starts in `flat`
    length: np.ndarray  # uint8[0x110000]: len(out(c)); 0 when c normalizes to nothing (spaces, 。、「」・★…)
    flat: np.ndarray  # uint32: every out(c), concatenated
    context: np.ndarray  # bool[0x110000]: NFKC(c) has a mark (or Hangul jamo) that may compose or reorder


@functools.cache
def _normalization_tables() -> _Tables:
    """out(c) = NFKC(c), lower-cased, without Z* (spaces), P* (。、「」・), S* (★♪※〒), Cc, Cf (ZWSP, BOM) characters.

    Per-character NFKC equals NFKC of the text unless canonical composition or reordering applies, which needs a
    combining mark (category M: U+3099 dakuten, ﾞ → U+3099) or a Hangul vowel/trailing jamo after NFKC; `context`
    flags those. Built once per process (~1 s): NFKC of all code points, each behind a NUL (which composes with
    nothing), then one category lookup per output character."""
    n = 0x110000
    dropped = np.fromiter(
        ((k[0] in "ZPS" or k in ("Cc", "Cf")) for k in map(unicodedata.category, map(chr, range(n)))), bool, n
    )
    marks = np.fromiter((unicodedata.category(chr(c))[0] == "M" for c in range(n)), bool, n)
    marks[0x1161:0x1176] = marks[0x11A8:0x11C3] = True  # Hangul V and T jamo compose algorithmically
    parts = ["\0", *unicodedata.normalize("NFKC", "\0".join(map(chr, range(1, n)))).lower().split("\0")]
    flat = np.frombuffer("".join(parts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lengths = np.fromiter(map(len, parts), np.int64, n)  # >= 1: no character normalizes to nothing
    starts = np.cumsum(lengths) - lengths
    context = np.logical_or.reduceat(marks[flat], starts)
    keep = ~dropped[flat]
    kept = np.add.reduceat(keep, starts)
    return _Tables(
        start=(np.cumsum(kept) - kept).astype(np.uint32),
        length=kept.astype(np.uint8),
        flat=flat[keep],
        context=context,
    )


def _map_code_points(cps: np.ndarray) -> np.ndarray:
    """Per-character NFKC + lower-case + removal, by table lookup (CPython's NFKC costs ~0.13 µs a character)."""
    t = _normalization_tables()
    lengths = t.length[cps]
    if lengths.max(initial=0) <= 1:  # the usual case: every character maps to at most one
        return t.flat[t.start[cps[lengths == 1]]]
    ends = np.cumsum(lengths, dtype=np.int64)  # else gather each character's run of `flat`
    offsets = np.repeat(t.start[cps].astype(np.int64) - ends + lengths, lengths)
    return t.flat[offsets + np.arange(ends[-1])]


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def normalized_code_points(text: str, normalize: bool = True) -> np.ndarray:
    """The text as uint32 code points; if `normalize`, NFKC + lower-case with spaces, punctuation, symbols and
    control/format characters removed."""
    cps = _code_points(text)
    if normalize and _normalization_tables().context[cps].any():  # rare in Japanese: combining marks, ﾞﾟ
        cps = _code_points(unicodedata.normalize("NFKC", text))
    return _map_code_points(cps) if normalize else cps


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al. 2014), a bijection on uint64 that avalanches every input bit."""
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _window_hashes(cps: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every n-character window (Horner's rule, all windows at once); empty if fewer than n."""
    c = cps.astype(np.uint64)
    m = len(c) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    h = c[:m].copy()
    for k in range(1, n):
        h *= _POLY
        h += c[k : k + m]
    return _splitmix64(h)


def shingles(text: str, cfg: DedupConfig) -> np.ndarray:
    """Sorted distinct uint64 hashes of the character `cfg.ngram`-grams of the normalized text (empty if shorter)."""
    h = np.sort(_window_hashes(normalized_code_points(text, cfg.normalize), cfg.ngram))
    return h[np.concatenate((h[:1] == h[:1], h[1:] != h[:-1]))]  # np.unique, 4× faster (numpy 2.4)


@dataclass(frozen=True)
class MinhashParameters:
    """The b·r functions h_j(x) = ((a_j·x + b_j) mod 2^64) >> 32; `a` and `b` are tiled to a block because
    same-shape arithmetic runs about twice as fast in numpy as broadcast arithmetic (the shingle keys are tiled
    too, one copy per block: cheaper than the broadcast multiply it replaces)."""

    a: np.ndarray  # uint64[H, _CHUNK], uniform per row, constant along it
    b: np.ndarray  # uint64[H, _CHUNK], likewise


def minhash_parameters(num_hashes: int, seed: int) -> MinhashParameters:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=(num_hashes, 1), dtype=np.uint64)
    b = rng.integers(0, 2**64, size=(num_hashes, 1), dtype=np.uint64)
    tile = (num_hashes, _CHUNK)
    return MinhashParameters(
        a=np.ascontiguousarray(np.broadcast_to(a, tile)), b=np.ascontiguousarray(np.broadcast_to(b, tile))
    )


def _segment_minhash(x: np.ndarray, starts: np.ndarray, params: MinhashParameters) -> np.ndarray:
    """uint32[H, k]: min of h_j over each of the k non-empty segments x[starts[i]:starts[i+1]] of 32-bit keys.

    Blocks of `_CHUNK` shingles keep the (hashes × shingles) matrix in L2 (112 × 512 uint64 is 460 KB); a block
    that spans several segments is reduced per segment (`np.minimum.reduceat`)."""
    num_hashes = len(params.a)
    best = np.full((num_hashes, len(starts)), np.iinfo(np.uint64).max, dtype=np.uint64)
    buf = np.empty(num_hashes * min(_CHUNK, len(x)), dtype=np.uint64)
    keys = np.empty_like(buf)
    for lo in range(0, len(x), _CHUNK):
        n = min(_CHUNK, len(x) - lo)
        block = buf[: num_hashes * n].reshape(num_hashes, n)
        tiled = keys[: num_hashes * n].reshape(num_hashes, n)
        tiled[:] = x[lo : lo + n]
        np.multiply(params.a[:, :n], tiled, out=block)
        np.add(block, params.b[:, :n], out=block)
        first, last = np.searchsorted(starts, [lo, lo + n - 1], side="right") - 1
        cuts = np.concatenate(([0], starts[first + 1 : last + 1] - lo))
        np.minimum(best[:, first : last + 1], np.minimum.reduceat(block, cuts, axis=1), out=best[:, first : last + 1])
    return np.minimum(best >> np.uint64(32), _MAX_SIG).astype(np.uint32)


def _key(shingle_hashes: np.ndarray) -> np.ndarray:
    """The 32-bit key h_j hashes: the low half of the shingle hash."""
    return shingle_hashes & np.uint64(0xFFFFFFFF)


def minhash_signature(shingle_hashes: np.ndarray, params: MinhashParameters) -> np.ndarray:
    """uint32[b·r]: sig_j = min_i h_j(key(shingle_i)); all 2^32 - 2 for no shingles."""
    if len(shingle_hashes) == 0:
        return np.full(len(params.a), _MAX_SIG, dtype=np.uint32)
    return _segment_minhash(_key(shingle_hashes), np.zeros(1, dtype=np.int64), params)[:, 0]


def minhash_signatures(texts: list[str], cfg: DedupConfig, params: MinhashParameters) -> tuple[np.ndarray, np.ndarray]:
    """(uint32[len(texts), b·r] signatures, bool[len(texts)] has shingles), equal row by row to `minhash_signature(
    shingles(text))` but computed for the batch at once: numpy's per-call cost (~1 µs, ~40 calls a document) would
    otherwise dominate short pages. Repeated shingles are not removed (a sort costs more than they do): they cannot
    change a minimum."""
    raw = _code_points("".join(texts))
    if not cfg.normalize:
        cps, lengths = raw, np.fromiter(map(len, texts), np.int64, len(texts))
    elif _normalization_tables().context[raw].any():  # normalize page by page
        pages = [normalized_code_points(t) for t in texts]
        cps, lengths = np.concatenate([raw[:0], *pages]), np.fromiter(map(len, pages), np.int64, len(texts))
    else:
        cps = _map_code_points(raw)
        out_ends = np.concatenate(([0], np.cumsum(_normalization_tables().length[raw], dtype=np.int64)))
        lengths = np.diff(out_ends[np.cumsum([0, *map(len, texts)])])
    windows = np.maximum(lengths - cfg.ngram + 1, 0)  # n-grams inside each page
    inside = np.arange(len(cps)) - np.repeat(np.cumsum(lengths) - lengths, lengths) < np.repeat(windows, lengths)
    h = _window_hashes(cps, cfg.ngram)
    has = windows > 0
    sigs = np.full((len(texts), len(params.a)), _MAX_SIG, dtype=np.uint32)
    if has.any():
        sigs[has] = _segment_minhash(_key(h[inside[: len(h)]]), (np.cumsum(windows) - windows)[has], params).T
    return sigs, has


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal signature values: an unbiased estimate of the Jaccard similarity of the shingle sets."""
    return float(np.mean(sig_a == sig_b))
