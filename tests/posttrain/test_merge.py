"""`kamado merge`: every method against values worked out by hand on small tensors (not with the code's formulas),
the identities each method must satisfy, the refusals, and one merge of real checkpoints through the command."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kamado.config import ModelConfig, RunConfig, to_dict
from kamado.errors import CheckpointError, ConfigError
from kamado.model.transformer import Transformer
from kamado.posttrain import merge_methods as mm
from kamado.posttrain.commands_merge import METHODS, add_merge_parsers
from kamado.posttrain.merge import MergeSpec, merge_checkpoints, write_streamed_safetensors
from kamado.train.checkpoint import load_model, save_checkpoint, verify_checkpoint

T = torch.tensor


def close(got: torch.Tensor, want: list | torch.Tensor, tol: float = 1e-6) -> None:
    torch.testing.assert_close(got, want if isinstance(want, torch.Tensor) else T(want), atol=tol, rtol=tol)


def params(method: str, **kw) -> mm.Resolved:
    values = {"weights": [1.0, 1.0], "t": 0.5, "density": 1.0, "lam": 1.0, "seed": 0, "normalize": True} | kw
    return mm.Resolved(method, **values)


# ------------------------------------------------------------------------------------------------- linear
def test_linear_is_the_weighted_average_worked_by_hand():
    a, b = T([1.0, 2.0]), T([3.0, -2.0])
    close(mm.linear([a, b], [3.0, 1.0]), [1.5, 1.0])  # (3·1 + 3)/4, (3·2 − 2)/4
    close(mm.linear([a, b], [3.0, 1.0], normalize=False), [6.0, 4.0])  # 3·1 + 3, 3·2 − 2


def test_linear_of_one_model_is_that_model():
    x = torch.randn(3, 5)
    close(mm.linear([x], [0.3]), x)
    assert torch.equal(mm.linear([x], [1.0], normalize=False), x)


# ------------------------------------------------------------------------------------------------- slerp
def test_slerp_of_orthogonal_unit_vectors_at_half_is_their_normalised_bisector():
    a, b = T([[1.0, 0.0], [0.0, 0.0]]), T([[0.0, 0.0], [0.0, 1.0]])  # tensors are seen as flat vectors
    h = math.sqrt(0.5)
    close(mm.slerp(a, b, 0.5), [[h, 0.0], [0.0, h]])


def test_slerp_turns_by_t_of_the_angle_keeping_the_norm():
    a, b = T([2.0, 0.0]), T([2 * math.cos(math.pi / 3), 2 * math.sin(math.pi / 3)])  # 60° apart, both of norm 2
    quarter = math.pi / 12  # a quarter of 60°
    close(mm.slerp(a, b, 0.25), [2 * math.cos(quarter), 2 * math.sin(quarter)])


def test_slerp_at_0_and_1_gives_the_ends():
    torch.manual_seed(0)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    close(mm.slerp(a, b, 0.0), a)
    close(mm.slerp(a, b, 1.0), b)


def test_slerp_of_colinear_tensors_interpolates_linearly():
    a, b = T([1.0, 2.0]), T([2.0, 4.0])  # same direction: no arc, 0.75·a + 0.25·b
    close(mm.slerp(a, b, 0.25), [1.25, 2.5])
    close(mm.slerp(T([0.0, 0.0]), b, 0.25), [0.5, 1.0])  # a zero tensor has no direction either


# ------------------------------------------------------------------------------------------------- task arithmetic
def test_task_arithmetic_worked_by_hand():
    base, m1, m2 = T([1.0, 1.0]), T([2.0, 0.0]), T([1.0, 3.0])
    # deltas [1, −1] and [0, 2]; weights 1 and 2: Σ = [1, 3]; λ = 2: base + [2, 6]
    got = mm.merge_tensor(params("task_arithmetic", weights=[1.0, 2.0], lam=2.0), "w", base, [m1 - base, m2 - base])
    close(got, [3.0, 7.0])


# ------------------------------------------------------------------------------------------------- TIES
BASE6 = torch.ones(6)
D1 = T([3.0, -1.0, 0.5, -2.0, 4.0, 0.1])
D2 = T([-1.5, 2.0, 0.4, -0.2, 2.5, 0.3])


def test_ties_worked_by_hand():
    # density 0.5 keeps 3 of 6: δ1 → [3, 0, 0, −2, 4, 0], δ2 → [−1.5, 2, 0, 0, 2.5, 0]
    # summed [1.5, 2, 0, −2, 6.5, 0] elects signs [+, +, none, −, +, none]
    # agreeing means: [3, 2, 0, −2, (4 + 2.5)/2, 0]; λ = 0.5 on a base of ones
    p = params("ties", density=0.5, lam=0.5)
    close(mm.merge_tensor(p, "w", BASE6, [D1, D2]), [2.5, 2.0, 1.0, 0.0, 2.625, 1.0])
    close(mm.ties(BASE6, [D1, D2], [1.0, 1.0], 0.5, 0.5), [2.5, 2.0, 1.0, 0.0, 2.625, 1.0])


def test_ties_weights_take_part_in_the_election_and_the_mean():
    # weights 1, 3: weighted trimmed deltas [3, 0, 0, −2, 4, 0] and [−4.5, 6, 0, 0, 7.5, 0], summed
    # [−1.5, 6, 0, −2, 11.5, 0]: position 0 now elects −, so only model 2 counts there: −4.5 / 3
    # position 4: (4 + 7.5) / (1 + 3)
    p = params("ties", weights=[1.0, 3.0], density=0.5)
    close(mm.merge_tensor(p, "w", BASE6, [D1, D2]), [-0.5, 3.0, 1.0, -1.0, 3.875, 1.0])
    # a negative weight flips its model's vote; the mean divides by |w|. weights 1, −0.5 on δ1 = [2, −1], δ2 = [1, 3]:
    # wδ = [2, −1] and [−0.5, −1.5]: position 0 elects + (model 1 alone: 2 / 1), position 1 elects − (both:
    # (−1 − 1.5) / (1 + 0.5))
    close(mm.disjoint_merge([T([2.0, -1.0]), T([1.0, 3.0])], [1.0, -0.5]), [2.0, -2.5 / 1.5])


def test_ties_with_no_majority_sign_keeps_the_base():
    p = params("ties")  # deltas +1 and −1 sum to 0: sgn 0 elects no sign, nothing agrees
    close(mm.merge_tensor(p, "w", T([5.0]), [T([1.0]), T([-1.0])]), [5.0])


def test_ties_at_density_1_is_task_arithmetic_where_the_signs_agree():
    torch.manual_seed(0)
    base = torch.randn(4, 5)
    one = torch.randn(4, 5)
    ta = mm.merge_tensor(params("task_arithmetic", weights=[1.0], lam=0.7), "w", base, [one])
    close(mm.merge_tensor(params("ties", weights=[1.0], lam=0.7), "w", base, [one]), ta)
    # several models whose deltas share every sign: the disjoint mean is the plain mean, task arithmetic at 1/N
    d = torch.rand(4, 5) + 0.1
    deltas = [d, 2 * d, 4 * d]
    ta = mm.merge_tensor(params("task_arithmetic", weights=[1 / 3] * 3, lam=0.7), "w", base, deltas)
    close(mm.merge_tensor(params("ties", weights=[1.0] * 3, lam=0.7), "w", base, deltas), ta, tol=1e-5)


def test_kth_largest_magnitude_is_exact_against_a_sort():
    torch.manual_seed(3)
    x = torch.cat([torch.randn(5000), torch.randn(3000) * 1e-30, T([0.0, -0.0, 7.5, -7.5, 7.5]), torch.zeros(100)])
    ranked = x.abs().sort(descending=True).values
    for k in (1, 2, 3, 4, 17, 4000, 5003, 8003, 8005, 8105):
        got = T([mm.kth_largest_magnitude(x, k)], dtype=torch.int32).view(torch.float32)
        assert got.item() == ranked[k - 1].item(), k
    # values that differ only below bit 20 share the first histogram's bucket: the 2nd and 3rd passes decide
    close_values = T([1.0, 1.0 + 2**-5, 1.0 + 2**-10, 1.0 + 2**-20, -(1.0 + 2**-12), 2.0, 0.5])
    ranked = close_values.abs().sort(descending=True).values
    for k in range(1, len(close_values) + 1):
        got = T([mm.kth_largest_magnitude(close_values, k)], dtype=torch.int32).view(torch.float32)
        assert got.item() == ranked[k - 1].item(), k


def test_kth_largest_magnitude_counts_exactly_past_2_to_the_24():
    """A bucket holding 2^24 + 3 entries (a 64 MB tensor; a large model's matrices hold more): a float32 histogram
    would round that count up to 2^24 + 4 and answer 1.0 for the next entry down, 0.5."""
    x = torch.ones(2**24 + 4)
    x[-1] = 0.5
    got = T([mm.kth_largest_magnitude(x, 2**24 + 4)], dtype=torch.int32).view(torch.float32)
    assert got.item() == 0.5


def test_chunked_steps_give_the_same_result_whatever_the_chunk(monkeypatch):
    torch.manual_seed(4)
    deltas, weights = [torch.randn(30, 11), torch.randn(30, 11), torch.randn(30, 11)], [1.0, 0.5, 2.0]

    def run() -> list[torch.Tensor]:
        return [
            mm.trim(deltas[0], 0.3),
            T([mm.kth_largest_magnitude(deltas[1], 100)]),
            mm.disjoint_merge(deltas, weights),
            mm.dare(deltas[2], 0.4, seed=9),
        ]

    whole = run()  # 330 entries: one chunk
    monkeypatch.setattr(mm, "CHUNK", 7)
    for a, b in zip(whole, run(), strict=True):
        assert torch.equal(a, b)
    keep = torch.rand(330, generator=torch.Generator().manual_seed(9)) < 0.4  # DARE's mask: the seed's first draws
    assert torch.equal(whole[3], torch.where(keep.view(30, 11), deltas[2] / 0.4, 0.0))


def test_trim_rounds_the_kept_count_and_keeps_at_least_one():
    assert [mm.keep_count(d, 10) for d in (0.01, 0.25, 0.3, 0.5, 1.0)] == [1, 3, 3, 5, 10]
    close(mm.trim(T([0.1, -5.0, 2.0, -0.3]), 0.5), [0.0, -5.0, 2.0, 0.0])


# ------------------------------------------------------------------------------------------------- DARE
def test_dare_keeps_survivors_rescaled_and_drops_the_rest_at_the_right_rate():
    delta = torch.full((100_000,), 2.0)
    out = mm.dare(delta, 0.3, seed=1)
    kept = out != 0
    assert torch.equal(out[kept], torch.full((int(kept.sum()),), 2.0 / 0.3))  # survivors × 1/density
    assert abs(kept.float().mean().item() - 0.3) < 0.01  # dropped with probability 0.7 (± 7 sd)
    assert abs(out.mean().item() - 2.0) < 0.05  # the rescaling keeps the expected delta (± 5 sd)


def test_dare_is_reproducible_per_seed_tensor_and_model():
    delta = torch.randn(64, 64)
    p = params("dare_linear", density=0.5, seed=7)
    base = torch.zeros(64, 64)
    same = mm.merge_tensor(p, "layers.0.w", base, [delta, delta])
    assert torch.equal(same, mm.merge_tensor(p, "layers.0.w", base, [delta, delta]))
    assert not torch.equal(
        same, mm.merge_tensor(params("dare_linear", density=0.5, seed=8), "layers.0.w", base, [delta, delta])
    )
    assert not torch.equal(same, mm.merge_tensor(p, "layers.1.w", base, [delta, delta]))
    one = mm.merge_tensor(params("dare_linear", weights=[1.0], density=0.5, seed=7), "layers.0.w", base, [delta])
    assert not torch.equal(2 * one, same)  # each model draws its own mask: the two copies are dropped differently


def test_dare_linear_adds_each_surviving_delta_rescaled():
    base, delta = torch.ones(1000), torch.full((1000,), 0.5)
    got = mm.merge_tensor(params("dare_linear", weights=[2.0], density=0.25, lam=3.0), "w", base, [delta])
    # each entry: dropped → base; kept → base + λ·w·δ/density = 1 + 3·2·0.5/0.25 = 13
    assert set(got.unique().tolist()) == {1.0, 13.0}


def test_dare_ties_elects_signs_among_the_survivors():
    base = torch.zeros(20_000)
    got = mm.merge_tensor(params("dare_ties", density=0.5), "w", base, [base + 1.0, base - 3.0])  # the deltas
    # after the drop (×2): δ1 ∈ {0, 2}, δ2 ∈ {0, −6}; both kept sum to −4, electing −: only −6 counts
    values = {v: (got == v).float().mean().item() for v in got.unique().tolist()}
    assert set(values) == {0.0, 2.0, -6.0}
    assert abs(values[-6.0] - 0.5) < 0.03 and abs(values[2.0] - 0.25) < 0.03 and abs(values[0.0] - 0.25) < 0.03


def test_dare_at_density_1_reduces_to_task_arithmetic_and_ties():
    torch.manual_seed(1)
    base, a, b = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    for dare_method, plain in (("dare_linear", "task_arithmetic"), ("dare_ties", "ties")):
        p = params(dare_method, weights=[0.5, 2.0], lam=0.8, seed=3)
        want = mm.merge_tensor(params(plain, weights=[0.5, 2.0], lam=0.8), "w", base, [a, b])
        assert torch.equal(mm.merge_tensor(p, "w", base, [a, b]), want)


# ------------------------------------------------------------------------------------------------- Model Stock
def test_model_stock_two_models_worked_by_hand():
    base, m1, m2 = T([1.0, 1.0]), T([2.0, 1.0]), T([2.0, 2.0])
    # deltas [1, 0] and [1, 1] are 45° apart: t = 2 cos / (1 + cos) with cos = 1/√2, i.e. 2(√2 − 1)
    t = 2 * (math.sqrt(2) - 1)
    close(
        mm.model_stock(base, [m1 - base, m2 - base]), [1 + t * 1.0, 1 + t * 0.5]
    )  # t·mean + (1 − t)·base, mean [2, 1.5]


def test_model_stock_three_models_use_the_mean_pairwise_cosine():
    base = T([1.0, 1.0])
    models = [T([2.0, 1.0]), T([2.0, 1.0]), T([1.0, 2.0])]  # deltas e1, e1, e2: cosines 1, 0, 0 → mean 1/3
    # t = 3·(1/3) / (1 + 2·(1/3)) = 0.6; mean of the models − base = [2/3, 1/3]
    close(mm.model_stock(base, [m - base for m in models]), [1.4, 1.2])


def test_model_stock_identities():
    base = T([1.0, -1.0, 0.5])
    tuned = T([2.0, 0.0, 1.0])
    close(mm.model_stock(base, [tuned - base, tuned - base]), tuned)  # cos 1 → t = 1: the fine-tuned model
    ortho = [T([1.0, 0.0, 0.0]), T([0.0, 1.0, 0.0])]  # deltas at cos 0 → t = 0: the base
    close(mm.model_stock(base, ortho), base)
    opposed = [T([1.0, 0.0, 0.0]), T([-1.0, 0.1, 0.0])]  # obtuse: clamped to cos 0, the base
    close(mm.model_stock(base, opposed), base)
    # one model left this tensor as it was (a zero delta): no angle to measure, counted as cos 0 → the base
    unchanged = [T([0.0, 0.0, 0.0]), T([1.0, 1.0, 0.0])]
    assert mm.model_stock_ratio(unchanged) == 0.0
    close(mm.model_stock(base, unchanged), base)


# ------------------------------------------------------------------------------------------------- dispatch
def test_merge_tensor_routes_each_method_to_its_formula():
    """`merge_tensor` (what `kamado merge` runs per parameter) against each formula called directly, on inputs
    where the methods give different answers."""
    base, a, b = T([1.0, -1.0, 0.5]), T([2.0, 0.0, 1.0]), T([0.0, 1.0, 2.0])
    da, db = a - base, b - base
    p = params("linear", weights=[3.0, 1.0], normalize=False)
    close(mm.merge_tensor(p, "w", None, [a, b]), 3.0 * a + b)  # the plain weighted sum
    close(mm.merge_tensor(params("linear", weights=[3.0, 1.0]), "w", None, [a, b]), (3.0 * a + b) / 4)
    got = mm.merge_tensor(params("slerp", t=0.3), "w", None, [a, b])
    close(got, mm.slerp(a, b, 0.3))
    assert not torch.allclose(got, mm.slerp(b, b, 0.3))  # from a towards b, not from b
    got = mm.merge_tensor(params("model_stock"), "w", base, [da, db])
    close(got, mm.model_stock(base, [da, db]))
    assert not torch.allclose(got, mm.disjoint_merge([da, db], [1.0, 1.0]).add_(base))


# ------------------------------------------------------------------------------------------------- every method
@pytest.mark.parametrize("method", METHODS)
def test_merging_a_model_with_itself_gives_itself(method):
    torch.manual_seed(2)
    x = torch.randn(6, 7)
    p = params(method, density=0.4 if method in mm.WITH_DENSITY else 1.0, lam=0.6, weights=[0.3, 0.9])
    if method in mm.WITH_BASE:  # the same model as base and as every fine-tuned one: deltas of zero
        close(mm.merge_tensor(p, "w", x, [x - x, x - x]), x, tol=0)
    else:
        close(mm.merge_tensor(p, "w", None, [x.clone(), x.clone()]), x, tol=1e-5)


def test_the_cli_offers_the_methods_the_code_has():
    assert METHODS == mm.METHODS


# ------------------------------------------------------------------------------------------------- refusals
BAD_SPECS = [
    (dict(method="soup", models=("a",)), r"--method = 'soup': must be one of 'linear', 'slerp'"),
    (dict(method="linear", models=()), r"^--models: give at least one model to merge$"),
    (dict(method="ties", models=("a", "b"), density=0.5), r"ties needs --base"),
    (dict(method="model_stock", models=("a", "b")), r"model_stock needs --base"),
    (dict(method="linear", models=("a", "b"), base="c"), r"linear takes no --base"),
    (dict(method="slerp", models=("a", "b", "c"), t=0.5), r"slerp interpolates between exactly two --models \(got 3\)"),
    (dict(method="slerp", models=("a", "b")), r"^slerp needs --t, the fraction of the way .* in \[0, 1\]$"),
    (dict(method="slerp", models=("a", "b"), t=1.5), r"--t = 1.5: must be a number in \[0, 1\]"),
    (dict(method="model_stock", models=("a",), base="b"), r"model_stock needs at least two fine-tuned --models"),
    (dict(method="linear", models=("a", "b"), weights=(1.0,)), r"1 --weights for 2 --models"),
    (dict(method="linear", models=("a", "b"), weights=(1.0, -1.0)), r"^--weights sum to 0, .*weighted sum\)$"),
    (dict(method="linear", models=("a",), weights=(math.nan,)), r"--weights\[0\] = nan: must be a finite number"),
    (dict(method="ties", models=("a",), base="b"), r"ties needs --density"),
    (dict(method="ties", models=("a",), base="b", density=0.0), r"--density = 0.0: must be a number in \(0, 1\]"),
    (dict(method="dare_ties", models=("a",), base="b", density=1.2), r"--density = 1.2: must be a number in \(0, 1\]"),
    (dict(method="linear", models=("a",), density=0.5), r"--density has no meaning for linear"),
    (dict(method="slerp", models=("a", "b"), t=0.5, weights=(1.0, 1.0)), r"--weights has no meaning for slerp"),
    (dict(method="ties", models=("a",), base="b", density=0.5, seed=1), r"--seed has no meaning for ties"),
    (dict(method="model_stock", models=("a", "b"), base="c", lam=2.0), r"--lambda has no meaning for model_stock"),
    (dict(method="task_arithmetic", models=("a",), base="b", normalize=False), r"--no-normalize has no meaning"),
    (dict(method="dare_linear", models=("a",), base="b", density=0.5, seed=-1), r"--seed = -1: must be an integer"),
    (dict(method="dare_linear", models=("a",), base="b", density=0.5, seed=1.5), r"--seed = 1.5: must be an integer"),
    (dict(method="linear", models=("a",), t=0.5), r"^--t has no meaning for linear \(see `kamado merge --help`\)$"),
    (dict(method="task_arithmetic", models=("a",), base="b", lam=math.nan), r"^--lambda = nan: must be a finite"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_parameters_are_refused_before_any_file_is_read(spec, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        merge_checkpoints(MergeSpec(**spec), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parameters_left_out_take_their_documented_defaults():
    """No --weights: 1 per model (not normalised away for task arithmetic: two task vectors add up in full);
    no --lambda: 1; no --seed: 0; --no-normalize belongs to linear."""
    got = mm.check_spec(MergeSpec(method="task_arithmetic", models=("a", "b"), base="c"))
    assert (got.weights, got.lam, got.seed, got.density) == ([1.0, 1.0], 1.0, 0, 1.0)
    assert mm.check_spec(MergeSpec(method="dare_ties", models=("a",), base="b", density=0.5)).seed == 0
    assert mm.check_spec(MergeSpec(method="linear", models=("a", "b"), normalize=False)).normalize is False


# ------------------------------------------------------------------------------------------------- checkpoints
CFG = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32, max_seq_len=16)


def tiny_model(seed: int, cfg: ModelConfig = CFG) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():  # non-unit norm weights, so that merging them changes the function too
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5))
    return model.eval()


def save_run(root: Path, model: torch.nn.Module, cfg: ModelConfig = CFG, tokenizer: bytes | None = None) -> Path:
    run = RunConfig(out_dir=str(root))
    run.model = cfg
    save_checkpoint(root / "checkpoints", 3, model, None, {"config": to_dict(run)})
    if tokenizer is not None:
        (root / "tokenizer").mkdir()
        (root / "tokenizer" / "tokenizer.json").write_bytes(tokenizer)
    return root


def cli(argv: list[str], progress: bool = False) -> None:
    parser = argparse.ArgumentParser(prog="kamado")
    add_merge_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["merge", *argv] + ([] if progress else ["--no-progress"]))
    args.fn(args, [])


def test_help_shows_an_example_per_method(capsys):
    with pytest.raises(SystemExit):
        cli(["--help"])
    text = capsys.readouterr().out
    for method in METHODS:
        assert f"kamado merge --method {method} " in text


def test_merge_command_writes_a_run_that_loads_and_computes_the_hand_merged_model(tmp_path):
    base, a, b = tiny_model(0), tiny_model(1), tiny_model(2)
    for m, name in ((base, "base"), (a, "a"), (b, "b")):
        save_run(tmp_path / name, m, tokenizer=b'{"same": "tokenizer"}')
    out = tmp_path / "merged"
    models = [str(tmp_path / "a"), str(tmp_path / "b")]
    flags = ["--weights", "0.25", "0.5", "--lambda", "0.8", "--out", str(out)]
    cli(["--method", "task_arithmetic", "--base", str(tmp_path / "base"), "--models", *models, *flags])
    merged, found = load_model(out)
    assert found == out / "checkpoints/step_00000000" and verify_checkpoint(found) is None
    by_hand = Transformer(CFG).eval()
    sa, sb = a.state_dict(), b.state_dict()
    by_hand.load_state_dict(
        {k: v + 0.8 * (0.25 * (sa[k] - v) + 0.5 * (sb[k] - v)) for k, v in base.state_dict().items()}
    )
    tokens = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        close(merged(tokens), by_hand(tokens), tol=1e-5)
        assert (merged(tokens) - base(tokens)).abs().max() > 0.1  # the merge did change the model
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == b'{"same": "tokenizer"}'  # `kamado chat OUT` works
    record = json.loads((found / "merge.json").read_text())
    integrity = json.loads((tmp_path / "a/checkpoints/step_00000003/integrity.json").read_text())
    assert record["method"] == "task_arithmetic" and record["base"]["path"] == str(tmp_path / "base")
    assert record["parameters"] == {"lambda": 0.8} and record["seed"] is None and record["dtypes"] == ["F32"]
    assert [m["weight"] for m in record["models"]] == [0.25, 0.5]
    assert record["models"][0]["model_sha256"] == integrity["files"]["model.safetensors"]["sha256"]
    assert json.loads((found / "state.json").read_text())["config"]["model"] == to_dict(CFG)


@pytest.mark.parametrize("method", METHODS)
def test_merging_a_checkpoint_with_itself_gives_it_back_and_leaves_the_input_intact(method, tmp_path):
    model = tiny_model(1)
    m = str(save_run(tmp_path / "m", model))
    extra = {"t": 0.4} if method == "slerp" else {"density": 0.5} if method in mm.WITH_DENSITY else {}
    base = m if method in mm.WITH_BASE else None
    found = merge_checkpoints(MergeSpec(method, (m, m), base=base, **extra), tmp_path / "out")
    merged = load_file(str(found / "model.safetensors"))
    for k, v in model.state_dict().items():
        close(merged[k], v, tol=1e-6)
    assert verify_checkpoint(tmp_path / "m/checkpoints/step_00000003") is None  # deltas are made in merge's copies


def test_merged_run_serves_with_its_copied_tokenizer(tmp_path, tok_dir, tok, capsys):
    from kamado.serve.load import load_for_serving

    cfg = ModelConfig(
        vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32, max_seq_len=16
    )
    for seed in (1, 2):
        save_run(tmp_path / f"m{seed}", tiny_model(seed, cfg), cfg)
        shutil.copytree(tok_dir, tmp_path / f"m{seed}" / "tokenizer")
    models = [str(tmp_path / "m1"), str(tmp_path / "m2")]
    cli(["--method", "slerp", "--models", *models, "--t", "0.3", "--out", str(tmp_path / "out")], progress=True)
    assert "merge" in capsys.readouterr().out  # the progress bar, then the line that says what was written
    model, tokenizer, name = load_for_serving(tmp_path / "out")
    assert tokenizer.vocab_size == tok.vocab_size and name == "out" and model.cfg == cfg


def test_bf16_inputs_give_a_bf16_merge(tmp_path):
    a, b = tiny_model(1).to(torch.bfloat16), tiny_model(2).to(torch.bfloat16)
    save_run(tmp_path / "a", a), save_run(tmp_path / "b", b)
    found = merge_checkpoints(MergeSpec("linear", (str(tmp_path / "a"), str(tmp_path / "b"))), tmp_path / "out")
    merged = load_file(str(found / "model.safetensors"))
    for k, v in a.state_dict().items():
        assert merged[k].dtype == torch.bfloat16
        assert torch.equal(merged[k], ((v.float() + b.state_dict()[k].float()) / 2).to(torch.bfloat16)), k


def test_progress_is_reported_per_tensor_and_a_failed_write_leaves_no_output(tmp_path, monkeypatch):
    save_run(tmp_path / "a", tiny_model(1)), save_run(tmp_path / "b", tiny_model(2))
    spec = MergeSpec("linear", (str(tmp_path / "a"), str(tmp_path / "b")))
    monkeypatch.setenv("KAMADO_FAILPOINT", "disk.write@enospc")  # the first file written: model.safetensors
    with pytest.raises(OSError, match="No space left"):
        merge_checkpoints(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.merging").exists()
    monkeypatch.delenv("KAMADO_FAILPOINT")
    seen: list[tuple[int, int, str]] = []
    (tmp_path / "out").mkdir()  # an empty folder is fine to write into
    merge_checkpoints(spec, tmp_path / "out", lambda done, total, name: seen.append((done, total, name)))
    names = sorted(tiny_model(0).state_dict())
    assert seen == [(i + 1, len(names), n) for i, n in enumerate(names)]
    assert not list(tmp_path.glob(".*merging"))
    with pytest.raises(ConfigError, match=r"--out .*out: already exists and is not an empty folder"):
        merge_checkpoints(spec, tmp_path / "out")


def test_streamed_safetensors_read_back_exactly(tmp_path):
    tensors = {"b": torch.randn(3, 4), "a": torch.randn(5).to(torch.bfloat16), "s": T(2.5, dtype=torch.float16)}
    layout = [
        (n, {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[t.dtype], list(t.shape))
        for n, t in tensors.items()
    ]
    write_streamed_safetensors(tmp_path / "x.safetensors", layout, lambda n: tensors[n].float())
    back = load_file(str(tmp_path / "x.safetensors"))
    assert int.from_bytes((tmp_path / "x.safetensors").read_bytes()[:8], "little") % 8 == 0  # data 8-byte aligned
    assert back.keys() == tensors.keys() and all(torch.equal(back[n], t) for n, t in tensors.items())


def mismatch(tmp_path: Path, other: torch.nn.Module, cfg: ModelConfig = CFG, **spec) -> None:
    save_run(tmp_path / "a", tiny_model(1))
    save_run(tmp_path / "b", other, cfg)
    merge_checkpoints(MergeSpec("linear", (str(tmp_path / "a"), str(tmp_path / "b")), **spec), tmp_path / "out")


def test_a_different_vocabulary_is_refused(tmp_path):
    cfg = ModelConfig(**(to_dict(CFG) | {"vocab_size": 48}))
    with pytest.raises(ConfigError, match=r"vocabularies differ: .*a has 32 tokens \(embedding rows\), .*b has 48"):
        mismatch(tmp_path, tiny_model(2, cfg), cfg)


def test_a_different_model_config_is_refused_naming_the_key(tmp_path):
    cfg = ModelConfig(**(to_dict(CFG) | {"max_seq_len": 32}))  # same tensors, another model
    with pytest.raises(ConfigError, match=r"model configs differ: .*a has max_seq_len = 16, .*b has 32"):
        mismatch(tmp_path / "1", tiny_model(2, cfg), cfg)
    cfg = ModelConfig(**(to_dict(CFG) | {"init_std": 0.01}))  # how the weights started: no matter once trained
    mismatch(tmp_path / "2", tiny_model(2, cfg), cfg)


def test_different_embedding_rows_are_refused_as_a_vocabulary_mismatch(tmp_path):
    other = tiny_model(2)
    other.embed.weight = torch.nn.Parameter(torch.zeros(40, 16))
    with pytest.raises(CheckpointError, match=r"vocabularies differ: tensor 'embed.weight' has shape \[32, 16\] in"):
        mismatch(tmp_path, other)


def test_a_different_shape_name_or_dtype_is_refused_naming_the_tensor(tmp_path):
    other = tiny_model(2)
    other.norm.weight = torch.nn.Parameter(torch.ones(8))
    with pytest.raises(CheckpointError, match=r"tensor 'norm.weight' has shape \[16\] in .*a but \[8\] in .*b"):
        mismatch(tmp_path / "1", other)
    other = tiny_model(2)
    other.register_parameter("extra", torch.nn.Parameter(torch.ones(2)))
    with pytest.raises(CheckpointError, match=r"tensor 'extra' is in .*b but not in .*a"):
        mismatch(tmp_path / "2", other)
    other = tiny_model(2)
    other.norm.to(torch.float16)
    with pytest.raises(CheckpointError, match=r"tensor 'norm.weight' is F32 in .*a but F16 in .*b"):
        mismatch(tmp_path / "3", other)


def test_different_tokenizers_are_refused_and_a_later_inputs_tokenizer_is_used(tmp_path):
    save_run(tmp_path / "a", tiny_model(1))  # a checkpoint without a run's tokenizer/ next to it
    save_run(tmp_path / "b", tiny_model(2), tokenizer=b'{"one": 1}')
    save_run(tmp_path / "c", tiny_model(3), tokenizer=b'{"two": 2}')
    with pytest.raises(ConfigError, match=r"vocabularies differ: .*b/tokenizer/tokenizer.json \(.*b\) and .*c/tok"):
        merge_checkpoints(MergeSpec("linear", tuple(str(tmp_path / m) for m in "abc")), tmp_path / "out")
    merge_checkpoints(MergeSpec("linear", (str(tmp_path / "a"), str(tmp_path / "b"))), tmp_path / "out")
    assert (tmp_path / "out/tokenizer/tokenizer.json").read_bytes() == b'{"one": 1}'


def test_a_missing_or_corrupt_input_is_refused(tmp_path):
    save_run(tmp_path / "a", tiny_model(1))
    with pytest.raises(CheckpointError, match=r"nowhere: neither a checkpoint folder nor a run folder"):
        merge_checkpoints(MergeSpec("linear", (str(tmp_path / "a"), str(tmp_path / "nowhere"))), tmp_path / "out")
    (tmp_path / "a/checkpoints/step_00000003/model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"step_00000003 is corrupt"):
        merge_checkpoints(MergeSpec("linear", (str(tmp_path / "a/checkpoints/step_00000003"),)), tmp_path / "out")
