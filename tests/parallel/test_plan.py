"""`kamado plan`: parameter and FLOP counts against the real model, memory and bubble formulas at hand-worked points,
the 100b preset on 1024 H100s, the command line, and (on a GPU) the memory model against a measured step."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from kamado.cli import main
from kamado.config import load_config
from kamado.errors import ConfigError
from kamado.model.transformer import Attention, Transformer
from kamado.parallel.plan import (
    GPUS,
    PlanLayout,
    bubble_fraction,
    effective_peak,
    param_counts,
    recompute_factor,
    stages_of_rank,
    tokens_per_second,
)
from kamado.parallel.plan_memory import in_flight, layer_activation_bytes, memory_per_gpu
from kamado.parallel.plan_report import json_report
from kamado.parallel.plan_search import PlanRequest, search

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "recipes").glob("*.toml"))


def meta_model(path: Path) -> tuple[Transformer, int]:
    cfg = load_config(path, [])
    with torch.device("meta"):
        return Transformer(cfg.model), cfg.data.seq_len


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_parameter_counts_match_the_model_built_on_meta(path):
    model, _ = meta_model(path)
    pc = param_counts(model.cfg)
    named = dict(model.named_parameters())
    assert pc.total == sum(p.numel() for p in model.parameters())
    assert pc.embedding == named["embed.weight"].numel()
    assert pc.lm_head == named["lm_head.weight"].numel()
    assert pc.final_norm == named["norm.weight"].numel()
    for i in range(model.cfg.n_layers):
        block = {k.removeprefix(f"layers.{i}."): p.numel() for k, p in named.items() if k.startswith(f"layers.{i}.")}
        assert pc.attention == sum(n for k, n in block.items() if k.startswith("attn."))
        assert pc.mlp == sum(n for k, n in block.items() if k.startswith("mlp."))
        assert pc.block_norms == block["attn_norm.weight"] + block["mlp_norm.weight"]
        assert pc.block == sum(block.values())


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_flops_per_token_match_a_count_from_the_linear_layers(path):
    """6 FLOPs per weight of every Linear (forward 2, backward 4) plus attention's QKᵀ and AV: 2 products of
    2·T·(heads·head_dim) FLOPs per token each way, times 3 for forward + backward = 12·T·(o_proj's input width)."""
    model, seq_len = meta_model(path)
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention = sum(12 * seq_len * m.o_proj.in_features for m in model.modules() if isinstance(m, Attention))
    expected = 6 * linears + attention
    cfg = model.cfg
    req = PlanRequest(1, GPUS["h100"], seq_len, 1, 0.5, 1e9)
    reported = json_report("x", cfg, req, [], 1)["flops_per_token"]
    assert reported == pytest.approx(expected, rel=1e-12)
    # and the throughput model divides the cluster's FLOP/s by exactly that count
    tps = tokens_per_second(cfg, seq_len, PlanLayout(), GPUS["h100"], mfu=0.5)
    assert tps * expected == pytest.approx(989e12 * 0.5, rel=1e-12)


def test_bubble_fractions_at_hand_worked_points():
    for schedule in ("GPipe", "1F1B", "Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble"):
        assert bubble_fraction(schedule, 1, 8) == 0.0
    assert bubble_fraction("1F1B", 4, 4) == pytest.approx(3 / 7)  # 3 idle slots in a step of 4 + 3
    assert bubble_fraction("GPipe", 8, 24) == pytest.approx(7 / 31)
    assert bubble_fraction("Interleaved1F1B", 4, 4) == pytest.approx(3 / 11)  # v = 2: (p-1) / (2m + p - 1)
    assert bubble_fraction("InterleavedZeroBubble", 4, 4) == pytest.approx(3 / 27)  # a third of the interleaved
    assert bubble_fraction("ZBVZeroBubble", 4, 8) == 0.0  # m >= 2p
    assert bubble_fraction("ZBVZeroBubble", 4, 7) == pytest.approx(3 / 45)
    assert bubble_fraction("1F1B", 4, 64) < bubble_fraction("1F1B", 4, 8)


def test_recompute_and_fp8_peak():
    cfg = load_config(ROOT / "recipes/8b.toml", []).model
    full = recompute_factor(cfg, 8192, "full")
    assert 1.25 < full < 4 / 3  # one more forward of the blocks (a third of their FLOPs), the head excepted
    assert recompute_factor(cfg, 8192, "none") == 1.0 < recompute_factor(cfg, 8192, "selective") < full
    h100 = GPUS["h100"]
    assert h100.bf16_flops < effective_peak(cfg, 8192, h100, "rowwise") < h100.fp8_flops  # type: ignore[operator]
    with pytest.raises(ConfigError, match="a100 has no FP8"):
        effective_peak(cfg, 8192, GPUS["a100"], "tensorwise")


def test_one_process_memory_by_hand():
    """small, b=4, s=1024 on one GPU: the trainer's path (float32 state, autocast copies, float32 residual)."""
    cfg = load_config(ROOT / "recipes/small.toml", []).model
    mem = memory_per_gpu(cfg, PlanLayout(micro_batch=4), 1024)
    P, tokens = 56_370_688, 4 * 1024
    assert (mem.weights, mem.grads, mem.optimizer) == (4 * P, 4 * P, 8 * P)
    # autocast's bf16 copies: qkv, o, QK-Norm weights, gate_up, down of 8 blocks, and the head
    assert mem.gathered == 2 * (8 * (512 * 1024 + 512 * 512 + 2 * 64 + 3 * 512 * 1408) + 32000 * 512)
    # 22,104 bytes per token per block: what torch 2.11 saved on an H200 (LOG.md), final norm 4 + 2 bytes · d
    assert mem.activations == 8 * 22_104 * tokens + 6 * 512 * tokens
    assert mem.logits == 20 * tokens * 32000  # float32 logits + four float32 temporaries in the loss backward
    assert mem.grads_overlap and mem.total == 12 * P + mem.gathered + mem.activations + mem.logits


def test_memory_moves_the_right_way():
    cfg = load_config(ROOT / "recipes/8b.toml", []).model

    def total(**kw) -> float:
        return memory_per_gpu(cfg, PlanLayout(**{"dp_shard": 8, "microbatches": 16, **kw}), 8192).total

    assert total(tp=1) > total(tp=2) > total(tp=4) > total(tp=8)
    assert total(pp=1) > total(pp=2) > total(pp=4) > total(pp=8)
    assert total(dp_shard=1) > total(dp_shard=8) > total(dp_shard=64)
    assert total(dp_shard=8, dp_replicate=8) == total(dp_shard=8)  # HSDP replicates: no saving per GPU
    assert total(activation_checkpoint="none") > total(activation_checkpoint="selective")
    assert total(activation_checkpoint="selective") > total(activation_checkpoint="full")
    assert total(micro_batch=2) > total(micro_batch=1)
    assert total(pp=4, pp_schedule="GPipe", microbatches=16) > total(pp=4, pp_schedule="GPipe", microbatches=8)
    assert total(pp=8, microbatches=8) > total(pp=8, microbatches=2)  # 1F1B: min(m, p) in flight
    assert total(pp=4, pp_schedule="GPipe") > total(pp=4, pp_schedule="1F1B")
    assert total(pp=4, pp_schedule="Interleaved1F1B") > total(pp=4, pp_schedule="1F1B")


def test_pipeline_ranks():
    one_f = PlanLayout(pp=4, microbatches=8)
    assert [in_flight(one_f, r) for r in range(4)] == [4, 3, 2, 1]
    assert in_flight(replace(one_f, pp_schedule="Interleaved1F1B"), 0) == 4 * (1 + 3 / 8)
    zbv = replace(one_f, pp_schedule="ZBVZeroBubble")
    assert stages_of_rank(zbv, 0) == [0, 7] and stages_of_rank(zbv, 3) == [3, 4]  # rank 0: embedding and head
    assert stages_of_rank(replace(one_f, pp_schedule="Interleaved1F1B"), 1) == [1, 5]


def test_sequence_parallel_divides_all_but_the_gathered_linear_inputs():
    cfg = load_config(ROOT / "recipes/100b.toml", []).model
    none1, none8 = (layer_activation_bytes(cfg, 4096, "none", tp) for tp in (1, 8))
    gathered = 4096 * 2 * 2 * cfg.d_model  # qkv_proj's and gate_up_proj's all-gathered bf16 inputs
    assert none8 == pytest.approx((none1 - gathered) / 8 + gathered)
    assert layer_activation_bytes(cfg, 4096, "full", 8) == 4096 * 2 * cfg.d_model / 8


def test_100b_on_1024_h100_fits_and_predicts_days():
    cfg = load_config(ROOT / "recipes/100b.toml", [])
    model, seq = cfg.model, cfg.data.seq_len
    req = PlanRequest(1024, GPUS["h100"], seq, 4 * 2**20 // seq, 0.40, 2e12)
    plans = search(model, req)
    best = plans[0]
    assert best.layout.n_gpus == 1024 and best.memory.total <= 0.9 * 80e9
    assert all(p.memory.total <= 0.9 * 80e9 for p in plans)
    assert [p.tokens_per_s for p in plans] == sorted((p.tokens_per_s for p in plans), reverse=True)
    # by hand: 2e12 tokens at 1024 · 989e12 · 0.40 FLOP/s of 6·N + 12·L·d·T FLOPs each, minus the bubble
    n_matmul = 80 * (10240 * (80 + 16) * 128 + 80 * 128 * 10240 + 3 * 10240 * 33792) + 10240 * 100000
    flops = 6 * n_matmul + 12 * 80 * 10240 * 4096
    slowdown = recompute_factor(model, seq, best.layout.activation_checkpoint)
    days = 2e12 * flops * slowdown / (1024 * 989e12 * 0.40 * (1 - best.bubble)) / 86400
    assert best.days == pytest.approx(days, rel=1e-9)
    assert 10 < best.days < 200


def test_fewer_gpus_than_the_model_needs_is_an_error():
    cfg = load_config(ROOT / "recipes/100b.toml", [])
    req = PlanRequest(8, GPUS["h100"], 4096, 1024, 0.4, 2e12)
    with pytest.raises(ConfigError, match="nothing fits in 72 GB"):
        search(cfg.model, req)


def test_cli_prints_the_layout_memory_and_days(capsys):
    assert main(["plan", "recipes/100b.toml", "--gpus", "1024", "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 103,551,825,920" in out
    assert "best layout: pp=" in out and "total (peak)" in out and "GB of 72 GB usable" in out
    assert "2T tokens in " in out and " days" in out
    assert "top 10 of " in out


def test_cli_json_layout_and_overrides(capsys):
    args = ["plan", "recipes/8b.toml", "--gpus", "64", "--layout", "2,1,-1,4", "--json", "--top", "3"]
    assert main([*args, "--model.n_layers=40"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"]["n_layers"] == 40
    assert len(data["plans"]) == 3
    assert {(p["layout"]["pp"], p["layout"]["dp_shard"], p["layout"]["tp"]) for p in data["plans"]} == {(2, 8, 4)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "1024", "--gpu", "v100"], "unknown GPU 'v100': choose one of a100, h100, h200, b200"),
        (["--gpus", "1020"], "is not a whole number of 8-GPU nodes"),
        (["--gpus", "8"], "nothing fits"),
        (["--gpus", "1024", "--layout", "8,1,-1,3"], "not divisible by pp·dp_replicate·tp"),
        (["--gpus", "1024", "--layout", "4,1,16,16"], "--layout: tp = 16 does not divide model.n_kv_heads = 8"),
        (["--gpus", "1024", "--layout", "8,2,64"], "give four integers"),
        (["--gpus", "1024", "--mfu", "1.5"], "--mfu = 1.5"),
    ],
)
def test_cli_errors_are_one_line_with_status_2(capsys, args, message):
    assert main(["plan", "recipes/100b.toml", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kamado: error: ") and err.count("\n") == 1
    assert message in err


def test_cli_help():
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--help"])
    assert exit_info.value.code == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: compares with torch.cuda memory stats")
@pytest.mark.parametrize(
    ("preset", "overrides", "batch", "seq"), [("small", [], 4, 1024), ("1b", ["--model.n_layers=4"], 2, 2048)]
)
def test_planner_memory_matches_a_measured_step_on_gpu(preset, overrides, batch, seq):
    """Tolerances: the block's saved tensors are counted exactly (±2 % for allocator rounding); the step's peak
    within ±10 % (the planner leaves out cuBLAS workspaces and small buffers)."""
    from kamado.parallel.plan_check import check_memory

    cfg = load_config(ROOT / f"recipes/{preset}.toml", overrides)
    result = check_memory(preset, cfg, batch, seq)
    print(result.line())
    assert result.measured_block == pytest.approx(result.predicted_block, rel=0.02)
    assert result.measured_peak == pytest.approx(result.predicted_peak, rel=0.10)
