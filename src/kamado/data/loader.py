"""Packed, mixed, exactly-resumable batches from pre-tokenized sources (see `kamado.data.shards`).

Each source is one flat token stream (documents joined by EOS, as written), cut into windows of seq_len + 1
tokens at stride seq_len, so every token is a target exactly once per epoch and no padding is wasted.

Everything is a pure function of a few integers, so the loader state is tiny and resuming is exact:
  * sample i's source: drawn from a counter-based hash of (seed, i), using the mixture weights of the phase in
    force after i · seq_len consumed tokens (phases switch mid-batch if needed, at exactly start_tokens);
  * a source's j-th window in epoch e: a Feistel permutation of its windows keyed by (seed, source, e), the
    source identified by its name (so reordering or adding sources keeps each one's stream): O(1) memory
    even for a billion windows, unlike np.random.permutation.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from kamado.config import DataConfig, SourceConfig
from kamado.data.shards import ShardSet
from kamado.errors import CheckpointError, ConfigError, DataError

STATE_VERSION = 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ROUNDS = 6  # Feistel rounds; 4 already give a pseudo-random permutation (Luby–Rackoff)
_TABLE_MAX = 1 << 20  # permutations of at most this many windows are tabulated (8 MiB) instead of recomputed


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _keys(*words: int, n: int = 1) -> np.ndarray:
    return np.random.SeedSequence(list(words)).generate_state(n, dtype=np.uint64)


class WindowPermutation:
    """A pseudo-random bijection of [0, n): Feistel network on the next even bit width, with cycle walking."""

    def __init__(self, n: int, *key: int) -> None:
        assert n > 0
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = _keys(*key, n=_ROUNDS)
        self._table: np.ndarray | None = None

    def _round_trip(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = x >> h, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix64(right ^ k) & self.mask)
        return (left << h) | right

    def _walk(self, pos: np.ndarray) -> np.ndarray:
        x = self._round_trip(np.asarray(pos, dtype=np.uint64))
        out = x >= self.n
        while out.any():  # values past n walk the cycle until they land in [0, n); expected < 4 steps
            x[out] = self._round_trip(x[out])
            out = x >= self.n
        return x.astype(np.int64)

    def __call__(self, pos: np.ndarray) -> np.ndarray:
        """Images of positions `pos`. Small domains are tabulated once (same values, less numpy overhead)."""
        if self.n > _TABLE_MAX:
            return self._walk(pos)
        if self._table is None:
            self._table = self._walk(np.arange(self.n))
        return self._table[pos]


def _open_sources(sources: list[SourceConfig], seq_len: int, key: str) -> list[tuple[str, ShardSet]]:
    """Open and check every source; they must share a tokenizer and hold at least one window."""
    if seq_len <= 0:
        raise ConfigError(f"data.seq_len must be positive, got {seq_len}")
    out: list[tuple[str, ShardSet]] = []
    for i, src in enumerate(sources):
        if not src.name or not src.path:
            raise ConfigError(f"{key}[{i}] needs both a name and a path, got name={src.name!r} path={src.path!r}")
        if any(src.name == n for n, _ in out):
            raise ConfigError(f"{key}: source name '{src.name}' is used twice")
        try:
            ss = ShardSet.open(src.path)
        except DataError as e:
            raise DataError(f"source '{src.name}': {e}") from None
        if ss.num_tokens < seq_len + 1:
            raise DataError(
                f"source '{src.name}' ({src.path}) has {ss.num_tokens} tokens, fewer than data.seq_len + 1 = "
                f"{seq_len + 1}; add data or lower data.seq_len"
            )
        first = out[0][1] if out else ss
        if (ss.vocab_size, ss.eos_id) != (first.vocab_size, first.eos_id):
            raise DataError(
                f"sources '{out[0][0]}' and '{src.name}' were tokenized with different tokenizers "
                f"(vocab_size {first.vocab_size} vs {ss.vocab_size}, eos_id {first.eos_id} vs {ss.eos_id})"
            )
        out.append((src.name, ss))
    return out


def _mixture(cfg: DataConfig, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(start token of each phase, normalised cumulative weights [phase, source]); ConfigError if invalid."""
    phases = cfg.phases or []
    starts = [p.start_tokens for p in phases] or [0]
    if starts[0] != 0:
        raise ConfigError(f"data.phases[0].start_tokens must be 0 (got {starts[0]}): some phase must come first")
    if any(b <= a for a, b in itertools.pairwise(starts)):
        raise ConfigError(f"data.phases start_tokens must increase strictly, got {starts}")
    cums = []
    for i, phase in enumerate(phases or [None]):
        weights = phase.weights if phase is not None else {}
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ConfigError(f"data.phases[{i}].weights names unknown sources {unknown} (known: {names})")
        w = np.array([float(weights.get(n, 0.0)) for n in names]) if weights else np.ones(len(names))
        if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"data.phases[{i}].weights must be >= 0 with a positive sum, got {weights}")
        cum = np.cumsum(w) / w.sum()
        cum[int(np.flatnonzero(w)[-1]) :] = np.inf  # rounding can never pick past the last weighted source
        cums.append(cum)
    return np.asarray(starts, dtype=np.int64), np.stack(cums)


def _to_tensors(buf: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(buf[:, :-1])), torch.from_numpy(np.ascontiguousarray(buf[:, 1:]))


class PackedLoader:
    """Endless training batches (inputs, targets), int64 [batch_size, seq_len], mixed over cfg.sources."""

    def __init__(self, cfg: DataConfig, batch_size: int) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if not cfg.sources:
            raise ConfigError("data.sources is empty: add at least one source (name and tokenized folder path)")
        if cfg.seed < 0:
            raise ConfigError(f"data.seed must be >= 0, got {cfg.seed}")
        self.cfg, self.seq_len, self.batch_size, self.seed = cfg, cfg.seq_len, batch_size, cfg.seed
        self.sources = _open_sources(cfg.sources, cfg.seq_len, "data.sources")
        self.source_names = [n for n, _ in self.sources]
        self.vocab_size, self.eos_id = self.sources[0][1].vocab_size, self.sources[0][1].eos_id
        self.num_windows = [(ss.num_tokens - 1) // self.seq_len for _, ss in self.sources]
        self._starts, self._cum = _mixture(cfg, self.source_names)
        self._choice_key = _keys(cfg.seed, 0xC401CE)[0]
        self._name_keys = [int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "little") for n in self.source_names]
        self._perms: dict[int, tuple[int, WindowPermutation]] = {}  # source -> (epoch, perm)
        self.sample_index = 0
        self._epoch = [0] * len(self.sources)
        self._cursor = [0] * len(self.sources)

    @property
    def tokens_consumed(self) -> int:
        """Target tokens served so far (seq_len per sample): the clock that phases switch on."""
        return self.sample_index * self.seq_len

    @property
    def current_phase(self) -> int:
        """Index into cfg.phases in force for the next sample (0 when there are no phases)."""
        return int(np.searchsorted(self._starts, self.tokens_consumed, side="right")) - 1

    @property
    def current_weights(self) -> dict[str, float]:
        cum = np.minimum(self._cum[self.current_phase], 1.0)
        return dict(zip(self.source_names, np.diff(cum, prepend=0.0).tolist(), strict=True))

    @property
    def samples_per_source(self) -> dict[str, int]:
        """Windows served from each source so far (for logging how the mixture really came out)."""
        pairs = zip(self._epoch, self._cursor, self.num_windows, strict=True)
        return dict(zip(self.source_names, [e * n + c for e, c, n in pairs], strict=True))

    def choose_sources(self, idx: np.ndarray) -> np.ndarray:
        """Source index of each global sample index: a pure function of (seed, index, phase weights)."""
        idx = np.asarray(idx, dtype=np.int64)
        phase = np.searchsorted(self._starts, idx * self.seq_len, side="right") - 1
        z = _mix64(self._choice_key + (idx.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
        u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
        out = np.empty(len(idx), dtype=np.int64)
        for p in np.unique(phase):
            m = phase == p
            out[m] = np.searchsorted(self._cum[p], u[m], side="right")
        return out

    def _perm(self, s: int) -> WindowPermutation:
        epoch, perm = self._perms.get(s, (-1, None))
        if perm is None or epoch != self._epoch[s]:
            perm = WindowPermutation(self.num_windows[s], self.seed, self._name_keys[s], self._epoch[s])
            self._perms[s] = (self._epoch[s], perm)
        return perm

    def _take(self, s: int, k: int) -> np.ndarray:
        """The next k window indices of source s, starting a new epoch (new permutation) when exhausted."""
        parts = []
        while k > 0:
            n, c = self.num_windows[s], self._cursor[s]
            take = min(k, n - c)
            parts.append(self._perm(s)(np.arange(c, c + take)))
            self._cursor[s], k = c + take, k - take
            if self._cursor[s] == n:
                self._epoch[s], self._cursor[s] = self._epoch[s] + 1, 0
        return np.concatenate(parts)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) int64 [batch_size, seq_len]; targets[:, t] == inputs[:, t + 1] within a row."""
        b, seq = self.batch_size, self.seq_len
        src = self.choose_sources(np.arange(self.sample_index, self.sample_index + b))
        buf = np.empty((b, seq + 1), dtype=np.int64)
        for s in np.unique(src).tolist():
            rows = np.flatnonzero(src == s)
            ss = self.sources[s][1]
            for r, w in zip(rows.tolist(), self._take(s, len(rows)).tolist(), strict=True):
                ss.read_into(w * seq, buf[r])
        self.sample_index += b
        return _to_tensors(buf)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Small JSON-serialisable state; `load_state_dict` on a fresh loader continues the same stream."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "sample_index": self.sample_index,
            "tokens_consumed": self.tokens_consumed,
            "sources": {
                name: {"epoch": self._epoch[i], "cursor": self._cursor[i], "num_windows": self.num_windows[i]}
                for i, name in enumerate(self.source_names)
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume exactly. Sources not in `state` (added since) start fresh; unconfigured ones are dropped."""
        try:
            version, seed, seq_len = state["version"], state["seed"], state["seq_len"]
            sample, per_source = int(state["sample_index"]), dict(state["sources"])
            got = []  # (epoch, cursor, num_windows then) per configured source
            for name, now in zip(self.source_names, self.num_windows, strict=True):
                st = per_source.get(name, {"epoch": 0, "cursor": 0, "num_windows": now})
                got.append((int(st["epoch"]), int(st["cursor"]), int(st["num_windows"])))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"data loader state is malformed ({e!r})") from None
        if version != STATE_VERSION:
            raise CheckpointError(f"data loader state version {version}, expected {STATE_VERSION}")
        if seed != self.seed or seq_len != self.seq_len:
            raise ConfigError(
                f"the checkpoint's data stream used data.seed={seed}, data.seq_len={seq_len}, but the config "
                f"has {self.seed}, {self.seq_len}; set them back to resume (--data.seed, --data.seq_len)"
            )
        for i, (epoch, cursor, then) in enumerate(got):
            if then != self.num_windows[i]:
                raise DataError(
                    f"source '{self.source_names[i]}' ({self.sources[i][1].path}) changed since the "
                    f"checkpoint ({self.num_windows[i]} windows now, {then} then): cannot resume its stream; "
                    "restore the old data or start a new run"
                )
            if not (0 <= cursor < then and epoch >= 0):  # a hand-edited or damaged state, not a kamado bug
                raise CheckpointError(
                    f"data loader state of source '{self.source_names[i]}' is out of range "
                    f"(epoch {epoch}, cursor {cursor} of {then} windows)"
                )
        self._epoch = [g[0] for g in got]
        self._cursor = [g[1] for g in got]
        self.sample_index = sample


class ValLoader:
    """Validation batches: each of cfg.val_sources in turn, its windows in order; the same batches every time.

    `max_batches` caps batches per source (not in total), so every source is measured on the same amount of
    data; a source's last batch may be smaller than batch_size. Batches never mix sources.
    """

    def __init__(self, cfg: DataConfig, batch_size: int, max_batches: int | None = None) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.seq_len, self.batch_size, self.max_batches = cfg.seq_len, batch_size, max_batches
        self.sources = _open_sources(cfg.val_sources, cfg.seq_len, "data.val_sources")
        self.source_names = [n for n, _ in self.sources]

    def _num_batches(self, ss: ShardSet) -> int:
        n = math.ceil((ss.num_tokens - 1) // self.seq_len / self.batch_size)
        return n if self.max_batches is None else min(n, self.max_batches)

    def __len__(self) -> int:
        return sum(self._num_batches(ss) for _, ss in self.sources)

    def by_source(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """(source name, inputs, targets) for per-source validation loss."""
        for name, ss in self.sources:
            num_windows = (ss.num_tokens - 1) // self.seq_len
            for b in range(self._num_batches(ss)):
                windows = range(b * self.batch_size, min(num_windows, (b + 1) * self.batch_size))
                buf = np.empty((len(windows), self.seq_len + 1), dtype=np.int64)
                for r, w in enumerate(windows):
                    ss.read_into(w * self.seq_len, buf[r])
                yield (name, *_to_tensors(buf))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, inputs, targets in self.by_source():
            yield inputs, targets


def val_batches(
    cfg: DataConfig, batch_size: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All validation batches (see `ValLoader`; `max_batches` is per source)."""
    return iter(ValLoader(cfg, batch_size, max_batches))
