"""Packed loader: windows, determinism, exact resume, mixture weights, phases; validation loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kamado.config import DataConfig, PhaseConfig, SourceConfig
from kamado.data import loader as loader_module
from kamado.data.loader import PackedLoader, ValLoader, WindowPermutation, val_batches
from kamado.data.shards import ShardWriter
from kamado.errors import CheckpointError, ConfigError, DataError

SEQ = 16
EOS = 0
BASES = {"a": 1, "b": 20_000, "c": 40_000}  # source X's ids live in [BASES[X], BASES[X] + 20_000)


def _make_source(path: Path, name: str, n_tokens: int) -> np.ndarray:
    """A source of distinct ids (so a window identifies its source and position); returns its flat stream."""
    docs = np.array_split(np.arange(BASES[name], BASES[name] + n_tokens), max(1, n_tokens // 23))
    with ShardWriter(path, vocab_size=60_000, eos_id=EOS, shard_tokens=200) as w:
        for doc in docs:
            w.add_document(doc)
    return np.concatenate([np.append(d, EOS) for d in docs])


@pytest.fixture
def data(tmp_path: Path) -> tuple[DataConfig, dict[str, np.ndarray]]:
    flats = {n: _make_source(tmp_path / n, n, t) for n, t in (("a", 900), ("b", 1300), ("c", 700))}
    cfg = DataConfig(seq_len=SEQ, seed=7, sources=[SourceConfig(n, str(tmp_path / n)) for n in flats])
    return cfg, flats


def _source_of(row: np.ndarray) -> str:
    top = int(row.max())
    return next(n for n, b in BASES.items() if b <= top < b + 20_000)


def _all(loader: PackedLoader, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        x, y = loader.next_batch()
        out.append(np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1))
    return out


def test_rows_are_aligned_windows_and_targets_shift_inputs(data: tuple[DataConfig, dict]) -> None:
    cfg, flats = data
    loader = PackedLoader(cfg, batch_size=8)
    for _ in range(20):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (8, SEQ) and str(x.dtype) == str(y.dtype) == "torch.int64"
        assert (x[:, 1:] == y[:, :-1]).all()
        for row in np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1):
            flat = flats[_source_of(row)]
            start = int(np.flatnonzero(flat == row[row != EOS][0])[0]) - int(np.argmax(row != EOS))
            assert start % SEQ == 0 and np.array_equal(flat[start : start + SEQ + 1], row)
    assert loader.tokens_consumed == 20 * 8 * SEQ


def test_each_epoch_visits_every_window_once(data: tuple[DataConfig, dict]) -> None:
    cfg, flats = data
    cfg.sources = cfg.sources[:1]
    n = (len(flats["a"]) - 1) // SEQ
    loader = PackedLoader(cfg, batch_size=n)
    epochs = [[int(r[0]) for r in _all(loader, 1)[0]] for _ in range(2)]
    want = sorted(int(flats["a"][w * SEQ]) for w in range(n))
    assert sorted(epochs[0]) == sorted(epochs[1]) == want and epochs[0] != epochs[1]
    assert loader.state_dict()["sources"]["a"] == {"epoch": 2, "cursor": 0, "num_windows": n}


def test_deterministic_from_seed(data: tuple[DataConfig, dict]) -> None:
    cfg, _ = data
    a, b = _all(PackedLoader(cfg, 4), 10), _all(PackedLoader(cfg, 4), 10)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    cfg.seed = 8
    c = _all(PackedLoader(cfg, 4), 10)
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_exact_resume(data: tuple[DataConfig, dict]) -> None:
    cfg, _ = data
    ref = _all(PackedLoader(cfg, 8), 5 + 30)  # 280 samples: every source wraps into a later epoch
    first = PackedLoader(cfg, 8)
    _all(first, 5)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = PackedLoader(cfg, 8)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert all(np.array_equal(p, q) for p, q in zip(_all(resumed, 30), ref[5:], strict=True))
    assert min(s["epoch"] for s in resumed.state_dict()["sources"].values()) >= 1
    # The stream is per sample, not per batch: a different batch size yields the same rows.
    halves = np.concatenate(_all(PackedLoader(cfg, 4), 70))
    assert np.array_equal(halves, np.concatenate(ref))


def test_resume_checks(data: tuple[DataConfig, dict], tmp_path: Path) -> None:
    cfg, _ = data
    first = PackedLoader(cfg, 4)
    _all(first, 3)
    state = first.state_dict()
    cfg.seed += 1
    with pytest.raises(ConfigError, match=r"data\.seed=7"):
        PackedLoader(cfg, 2).load_state_dict(state)
    cfg.seed -= 1
    with pytest.raises(CheckpointError, match="malformed"):
        PackedLoader(cfg, 2).load_state_dict({"version": 1})
    del state["sources"]["c"]  # a source added since the checkpoint starts at its beginning
    resumed = PackedLoader(cfg, 2)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["sources"]["c"]["cursor"] == 0 and resumed.sample_index == 12
    _make_source(tmp_path / "b", "b", 2000)  # re-tokenized with more data: its old stream is gone
    with pytest.raises(DataError, match=r"source 'b' .* changed since the checkpoint"):
        PackedLoader(cfg, 2).load_state_dict(state)


def test_source_stream_is_keyed_by_name(data: tuple[DataConfig, dict]) -> None:
    cfg, _ = data
    only_a = DataConfig(seq_len=SEQ, seed=7, sources=[cfg.sources[0]])
    cfg.sources = [cfg.sources[1], cfg.sources[0]]  # another source in front of 'a', weighted 0
    cfg.phases = [PhaseConfig(0, {"a": 1.0})]
    for p, q in zip(_all(PackedLoader(only_a, 8), 15), _all(PackedLoader(cfg, 8), 15), strict=True):
        assert np.array_equal(p, q)


def test_mixture_weights(data: tuple[DataConfig, dict]) -> None:
    cfg, _ = data
    cfg.phases = [PhaseConfig(0, {"a": 3.0, "b": 1.0})]
    loader = PackedLoader(cfg, batch_size=100)
    names = [_source_of(r) for batch in _all(loader, 20) for r in batch]
    assert "c" not in names and abs(names.count("a") / len(names) - 0.75) < 0.04
    assert loader.samples_per_source == {n: names.count(n) for n in "abc"}
    assert loader.current_weights == {"a": 0.75, "b": 0.25, "c": 0.0}


def test_no_phases_means_equal_weights(data: tuple[DataConfig, dict]) -> None:
    cfg, _ = data
    names = [_source_of(r) for batch in _all(PackedLoader(cfg, 100), 15) for r in batch]
    assert all(abs(names.count(n) / len(names) - 1 / 3) < 0.04 for n in "abc")


def test_phase_switch_at_token_count(data: tuple[DataConfig, dict]) -> None:
    cfg, _ = data
    switch = (2 * 8 + 3) * SEQ  # mid-batch: sample 19 is the first of phase 1
    cfg.phases = [PhaseConfig(0, {"a": 1.0}), PhaseConfig(switch, {"b": 1.0, "c": 1.0})]
    loader = PackedLoader(cfg, batch_size=8)
    assert loader.current_phase == 0
    names = [_source_of(r) for batch in _all(loader, 5) for r in batch]
    assert set(names[:19]) == {"a"} and set(names[19:]) == {"b", "c"}
    assert loader.current_phase == 1 and loader.tokens_consumed == 40 * SEQ


@pytest.mark.parametrize(
    ("phases", "match"),
    [
        ([PhaseConfig(0, {"a": 1.0, "zz": 1.0})], r"unknown sources \['zz'\]"),
        ([PhaseConfig(5, {"a": 1.0})], r"phases\[0\]\.start_tokens must be 0"),
        ([PhaseConfig(0, {}), PhaseConfig(0, {})], "increase strictly"),
        ([PhaseConfig(0, {"a": -1.0, "b": 2.0})], "must be >= 0"),
    ],
)
def test_bad_phases(data: tuple[DataConfig, dict], phases: list[PhaseConfig], match: str) -> None:
    cfg, _ = data
    cfg.phases = phases
    with pytest.raises(ConfigError, match=match):
        PackedLoader(cfg, 2)


def test_bad_sources(data: tuple[DataConfig, dict], tmp_path: Path) -> None:
    cfg, _ = data
    _make_source(tmp_path / "tiny", "a", SEQ)  # one document: SEQ ids + EOS = exactly one window
    PackedLoader(DataConfig(seq_len=SEQ, sources=[SourceConfig("tiny", str(tmp_path / "tiny"))]), 1)
    with pytest.raises(DataError, match=r"source 'tiny' .* fewer than data.seq_len \+ 1"):
        PackedLoader(DataConfig(seq_len=SEQ + 1, sources=[SourceConfig("tiny", str(tmp_path / "tiny"))]), 1)
    with pytest.raises(DataError, match=r"source 'gone': .*manifest\.json not found"):
        PackedLoader(DataConfig(sources=[SourceConfig("gone", str(tmp_path / "gone"))]), 1)
    with pytest.raises(ConfigError, match="used twice"):
        PackedLoader(DataConfig(seq_len=SEQ, sources=[cfg.sources[0], cfg.sources[0]]), 1)
    with pytest.raises(ConfigError, match=r"data\.sources is empty"):
        PackedLoader(DataConfig(), 1)


def test_val_loader_is_sequential_and_repeatable(data: tuple[DataConfig, dict]) -> None:
    cfg, flats = data
    cfg.val_sources = [cfg.sources[2], cfg.sources[0]]
    wc, wa = ((len(flats[n]) - 1) // SEQ for n in "ca")
    assert (wc, wa) == (45, 58)
    val = ValLoader(cfg, batch_size=10)
    assert val.source_names == ["c", "a"]  # in config order, as by_source yields them
    assert len(val) == 5 + 6
    seen = [(name, x.shape[0]) for name, x, _ in val.by_source()]
    assert seen == [("c", 10)] * 4 + [("c", 5)] + [("a", 10)] * 5 + [("a", 8)]
    first = next(iter(val))
    assert np.array_equal(first[0][1].numpy(), flats["c"][SEQ : 2 * SEQ])
    assert np.array_equal(first[1][1].numpy(), flats["c"][SEQ + 1 : 2 * SEQ + 1])
    again = list(val_batches(cfg, 10, max_batches=2))
    assert len(again) == 4 and all(
        np.array_equal(p[0].numpy(), q[0].numpy()) for p, q in zip(again[:2], list(val)[:2], strict=True)
    )
    assert list(ValLoader(DataConfig(), 4)) == []


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_window_permutation_is_a_bijection(n: int) -> None:
    p = WindowPermutation(n, 1, 2, 3)
    image = p(np.arange(n))
    assert sorted(image.tolist()) == list(range(n))
    assert np.array_equal(p._walk(np.arange(n)), image)  # the tabulated and computed paths agree
    if n >= 64:
        assert not np.array_equal(image, WindowPermutation(n, 1, 2, 4)(np.arange(n)))


# --- the stream is part of the checkpoint format -------------------------------------------------------------------


def _splitmix64_finaliser(x: int) -> int:
    """Vigna's SplitMix64 output function, in Python integers (the published algorithm, written out here)."""
    m = (1 << 64) - 1
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_mix64_is_splitmix64() -> None:
    from kamado.data.loader import _mix64

    # splitmix64.c seeded with 0: the first output is the finaliser of 0 + golden ratio = 0xe220a8397b1dcdaf
    assert _splitmix64_finaliser(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    xs = [0, 1, 0x9E3779B97F4A7C15, 2**63 + 12345, 2**64 - 1, 0xDEADBEEF]
    assert _mix64(np.array(xs, dtype=np.uint64)).tolist() == [_splitmix64_finaliser(x) for x in xs]


def _windows(loader: PackedLoader, flats: dict[str, np.ndarray], batches: int) -> list[tuple[str, int]]:
    """(source, window index) of every row served."""
    out = []
    for row in np.concatenate(_all(loader, batches)):
        name = _source_of(row)
        start = int(np.flatnonzero(flats[name] == row[row != EOS][0])[0]) - int(np.argmax(row != EOS))
        out.append((name, start // SEQ))
    return out


def test_the_stream_of_a_seed_is_pinned(data: tuple[DataConfig, dict]) -> None:
    """A checkpoint stores only (sample index, epoch, cursor): what they mean is this exact stream. If this test
    fails, resumed runs from older checkpoints would silently read other data: bump STATE_VERSION with the change."""
    cfg, flats = data
    assert _windows(PackedLoader(cfg, 8), flats, 3) == [
        ("c", 43), ("b", 56), ("c", 42), ("c", 20), ("b", 39), ("b", 54), ("a", 34), ("b", 65),
        ("b", 2), ("a", 45), ("a", 46), ("a", 31), ("a", 26), ("a", 44), ("b", 64), ("b", 8),
        ("a", 38), ("b", 18), ("a", 18), ("a", 24), ("c", 18), ("a", 40), ("b", 68), ("a", 54),
    ]  # fmt: skip
    assert WindowPermutation(10, 1, 2, 3)(np.arange(10)).tolist() == [0, 6, 7, 1, 2, 9, 4, 5, 3, 8]
    # small and boundary sizes (the Feistel half-width changes at 2^k + 1 windows)
    epochs = [[0, 1], [0, 1], [1, 0], [0, 1], [0, 1], [1, 0]]
    assert [WindowPermutation(2, 7, 11, e)(np.arange(2)).tolist() for e in range(6)] == epochs
    epochs = [[2, 1, 0], [0, 2, 1], [1, 0, 2], [0, 2, 1], [0, 2, 1], [1, 0, 2]]
    assert [WindowPermutation(3, 7, 11, e)(np.arange(3)).tolist() for e in range(6)] == epochs
    assert WindowPermutation(5, 1, 2, 3)(np.arange(5)).tolist() == [0, 4, 3, 1, 2]
    assert WindowPermutation(17, 1, 2, 3)(np.arange(17)).tolist() == [
        9, 2, 3, 14, 6, 4, 0, 10, 16, 11, 13, 8, 12, 1, 5, 15, 7
    ]  # fmt: skip


def _first_rows(path: Path, name: str, seed: int) -> list[int]:
    """First token of each row of the first batch of a one-source loader (so only the window order varies)."""
    loader = PackedLoader(DataConfig(seq_len=SEQ, seed=seed, sources=[SourceConfig(name, str(path))]), 20)
    return [int(r[0]) for r in loader.next_batch()[0]]


def test_seed_changes_both_the_mixture_draws_and_the_window_orders(data: tuple[DataConfig, dict]) -> None:
    cfg, _ = data
    a = PackedLoader(cfg, 4)
    cfg.seed = 0  # 0 is a valid seed
    b = PackedLoader(cfg, 4)
    assert not np.array_equal(a.choose_sources(np.arange(200)), b.choose_sources(np.arange(200)))
    assert _first_rows(Path(cfg.sources[0].path), "a", 7) != _first_rows(Path(cfg.sources[0].path), "a", 0)


def test_sources_of_the_same_size_are_shuffled_differently(tmp_path: Path) -> None:
    """The permutation is keyed by the source's name: the same data under two names is read in two orders."""
    _exact_source(tmp_path / "s", 40 * SEQ + 1)
    assert _first_rows(tmp_path / "s", "x", 3) != _first_rows(tmp_path / "s", "y", 3)


def test_window_permutation_is_a_bijection_for_every_small_size() -> None:
    for n in range(1, 300):  # 15, 63, 255: the largest value of the Feistel domain is n itself
        assert sorted(WindowPermutation(n, 9, 8, 7)(np.arange(n)).tolist()) == list(range(n)), n


def test_window_permutation_of_a_large_source_is_computed_not_tabulated() -> None:
    n = (1 << 20) + 3  # above the table limit
    pos = np.array([0, 1, 12345, n - 1])
    image = WindowPermutation(n, 1, 2, 3)(pos)
    assert len(set(image.tolist())) == 4 and ((image >= 0) & (image < n)).all()


# --- windows at the edges of a source ------------------------------------------------------------------------------


def _exact_source(path: Path, n_tokens: int, base: int = 1) -> np.ndarray:
    """One document of n_tokens - 1 distinct ids and its EOS: exactly n_tokens tokens."""
    doc = np.arange(base, base + n_tokens - 1)
    with ShardWriter(path, vocab_size=60_000, eos_id=EOS, shard_tokens=50) as w:
        w.add_document(doc)
    return np.append(doc, EOS)


@pytest.mark.parametrize("n_tokens", [5 * SEQ + 1, 6 * SEQ])  # both hold 5 windows of SEQ + 1 tokens
def test_an_epoch_is_every_whole_window_once(tmp_path: Path, n_tokens: int) -> None:
    flat = _exact_source(tmp_path / "s", n_tokens)
    loader = PackedLoader(DataConfig(seq_len=SEQ, sources=[SourceConfig("s", str(tmp_path / "s"))]), 5)
    assert loader.state_dict()["sources"]["s"]["num_windows"] == 5
    x, _ = loader.next_batch()
    assert sorted(int(r[0]) for r in x) == [int(flat[w * SEQ]) for w in range(5)]
    assert loader.state_dict()["sources"]["s"] == {"epoch": 1, "cursor": 0, "num_windows": 5}
    assert loader.state_dict()["tokens_consumed"] == 5 * SEQ


@pytest.mark.parametrize(("n_tokens", "windows"), [(4 * SEQ + 1, 4), (5 * SEQ - 1, 4), (6 * SEQ - 1, 5)])
def test_validation_batches_cover_whole_windows_only(tmp_path: Path, n_tokens: int, windows: int) -> None:
    flat = _exact_source(tmp_path / "v", n_tokens)
    cfg = DataConfig(seq_len=SEQ, val_sources=[SourceConfig("v", str(tmp_path / "v"))])
    val = ValLoader(cfg, batch_size=2)
    batches = list(val)
    assert len(val) == len(batches) == (windows + 1) // 2  # the last batch may be short, never empty
    rows = np.concatenate([x.numpy() for x, _ in batches])
    assert all(x.dtype == y.dtype == torch.int64 for x, y in batches)
    assert np.array_equal(rows, np.stack([flat[w * SEQ : (w + 1) * SEQ] for w in range(windows)]))
    assert len(ValLoader(cfg, batch_size=1)) == windows  # a batch of one is fine


# --- what a user can get wrong -------------------------------------------------------------------------------------


def test_bad_sizes_and_seeds_are_config_errors(data: tuple[DataConfig, dict]) -> None:
    cfg, _ = data
    for make in (lambda: PackedLoader(cfg, 0), lambda: ValLoader(cfg, 0)):
        with pytest.raises(ConfigError, match="batch_size must be positive, got 0"):
            make()
    cfg.seed = -1
    with pytest.raises(ConfigError, match=r"data\.seed must be >= 0, got -1"):
        PackedLoader(cfg, 2)
    cfg.seed, cfg.seq_len = 7, 0
    with pytest.raises(ConfigError, match=r"data\.seq_len must be positive, got 0"):
        PackedLoader(cfg, 2)
    cfg.seq_len = 1  # one token of context is little, but valid
    assert PackedLoader(cfg, 2).next_batch()[0].shape == (2, 1)


def test_source_errors_name_the_key_and_the_numbers(data: tuple[DataConfig, dict], tmp_path: Path) -> None:
    cfg, _ = data
    with pytest.raises(ConfigError, match=r"^data\.sources\[1\] needs both a name and a path, got name='b' path=''"):
        PackedLoader(DataConfig(seq_len=SEQ, sources=[cfg.sources[0], SourceConfig("b", "")]), 1)
    with pytest.raises(ConfigError, match=r"^data\.val_sources\[0\] needs both a name and a path"):
        ValLoader(DataConfig(seq_len=SEQ, val_sources=[SourceConfig("", cfg.sources[0].path)]), 1)
    _exact_source(tmp_path / "short", SEQ)
    with pytest.raises(DataError, match=rf"has {SEQ} tokens, fewer than data\.seq_len \+ 1 = {SEQ + 1}"):
        PackedLoader(DataConfig(seq_len=SEQ, sources=[SourceConfig("short", str(tmp_path / "short"))]), 1)
    with pytest.raises(ConfigError, match=r"^data\.sources is empty"):
        PackedLoader(DataConfig(seq_len=SEQ), 1)


def test_sources_from_different_tokenizers_are_refused(data: tuple[DataConfig, dict], tmp_path: Path) -> None:
    cfg, _ = data
    with ShardWriter(tmp_path / "other", vocab_size=50_000, eos_id=EOS, shard_tokens=200) as w:
        w.add_document(np.arange(1, 200))
    cfg.sources.append(SourceConfig("other", str(tmp_path / "other")))
    with pytest.raises(DataError, match=r"sources 'a' and 'other' were tokenized with different tokenizers"):
        PackedLoader(cfg, 2)


def test_all_zero_weights_are_refused(data: tuple[DataConfig, dict]) -> None:
    cfg, _ = data
    cfg.phases = [PhaseConfig(0, {"a": 0.0, "b": 0.0})]
    with pytest.raises(ConfigError, match=r"phases\[0\]\.weights must be >= 0 with a positive sum"):
        PackedLoader(cfg, 2)


def test_resume_errors_name_what_is_wrong(data: tuple[DataConfig, dict], tmp_path: Path) -> None:
    cfg, _ = data
    state = PackedLoader(cfg, 2).state_dict()
    with pytest.raises(CheckpointError, match="data loader state version 2, expected 1"):
        PackedLoader(cfg, 2).load_state_dict({**state, "version": 2})
    del state["sources"]["c"]  # a source added since the checkpoint starts at its very beginning
    resumed = PackedLoader(cfg, 2)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["sources"]["c"] == {"epoch": 0, "cursor": 0, "num_windows": 45}
    _make_source(tmp_path / "b", "b", 2000)
    with pytest.raises(DataError, match=r"cannot resume its stream; restore the old data or start a new run$"):
        PackedLoader(cfg, 2).load_state_dict(state)


@pytest.mark.parametrize(
    ("bad", "numbers"),  # c has 45 windows
    [
        ({"cursor": 45}, "epoch 0, cursor 45"),
        ({"cursor": -1}, "epoch 0, cursor -1"),
        ({"epoch": -1}, "epoch -1, cursor 0"),
    ],
)
def test_an_out_of_range_cursor_in_a_checkpoint_is_a_checkpoint_error(
    data: tuple[DataConfig, dict], bad: dict, numbers: str
) -> None:
    cfg, _ = data
    state = PackedLoader(cfg, 2).state_dict()
    state["sources"]["c"].update(bad)
    with pytest.raises(
        CheckpointError, match=rf"^data loader state of source 'c' is out of range \({numbers} of 45 windows\)$"
    ):
        PackedLoader(cfg, 2).load_state_dict(state)


# --- issue 16: mutation-testing survivors (docs/mutation_triage.md) -------------------------------------------------


def test_window_permutation_refuses_an_empty_domain() -> None:
    """A bijection of [0, 0) has no image to give: refused when built, not by an IndexError at the first call."""
    with pytest.raises(AssertionError):
        WindowPermutation(0, 1, 2, 3)


def test_a_draw_on_a_cumulative_weight_goes_to_the_next_source(
    data: tuple[DataConfig, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Source i owns the half-open interval [c_i-1, c_i) of the uniform draw u = (hash >> 11) / 2^53, so its share
    is exactly its weight: a draw of exactly 0 must not pick a zero-weight first source, and u = 1/2 belongs to the
    upper of two equal halves. The hash is forced to hit those points (0 -> u = 0, 2^63 -> u = 2^52 / 2^53)."""
    cfg, _ = data
    cfg.phases = [PhaseConfig(0, {"a": 0.0, "b": 1.0})]
    loader = PackedLoader(cfg, 4)
    monkeypatch.setattr(loader_module, "_mix64", lambda z: np.zeros_like(z))
    assert loader.choose_sources(np.arange(5)).tolist() == [1] * 5  # 'b', never the zero-weight 'a'
    cfg.phases = [PhaseConfig(0, {"a": 1.0, "b": 1.0})]
    loader = PackedLoader(cfg, 4)
    monkeypatch.setattr(loader_module, "_mix64", lambda z: np.full_like(z, 1 << 63))
    assert loader.choose_sources(np.arange(5)).tolist() == [1] * 5  # u = 0.5: 'b' owns [0.5, 1)


def test_a_source_permutation_is_built_once_per_epoch(
    data: tuple[DataConfig, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building one tabulates up to 2^20 windows (~0.1 s): per batch, that would slow training down at every step.
    Source 'a' has 58 windows; 30 batches of 5 = 150 samples are epochs 0, 1 and 2 of it: three permutations."""
    cfg, _ = data
    cfg.sources = cfg.sources[:1]
    built: list[tuple[int, ...]] = []

    class Counting(WindowPermutation):
        def __init__(self, n: int, *key: int) -> None:
            built.append((n, key[-1]))
            super().__init__(n, *key)

    monkeypatch.setattr(loader_module, "WindowPermutation", Counting)
    loader = PackedLoader(cfg, batch_size=5)
    _all(loader, 30)
    assert loader.state_dict()["sources"]["a"] == {"epoch": 2, "cursor": 150 - 2 * 58, "num_windows": 58}
    assert built == [(58, 0), (58, 1), (58, 2)]
