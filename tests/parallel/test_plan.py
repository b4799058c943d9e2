"""`kamado plan`: parameter and FLOP counts against the real model, memory and bubble formulas at hand-worked points,
the 100b preset on 1024 H100s, the command line, and (on a GPU) the memory model against a measured step."""

from __future__ import annotations

import itertools
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
from kamado.parallel.plan_memory import in_flight, layer_activation_bytes, memory_per_gpu, rank_memory
from kamado.parallel.plan_report import json_report
from kamado.parallel.plan_search import PlanRequest, candidates, search

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
    # by hand: the blocks' linears (6 FLOPs a weight) at the FP8 peak, attention's products and the head at bf16's
    linears = 6 * 32 * (4096 * (32 + 16) * 128 + 32 * 128 * 4096 + 3 * 4096 * 14336)
    rest = 6 * 4096 * cfg.vocab_size + 12 * 32 * 4096 * 8192
    want = (linears + rest) / (linears / 1979e12 + rest / 989e12)
    assert effective_peak(cfg, 8192, h100, "tensorwise") == pytest.approx(want, rel=1e-12)


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


def test_distributed_memory_by_hand():
    """small, s=1024, on pp=2 × dp_shard=2 × tp=2, Interleaved1F1B (4 model stages of 2 blocks: rank 0 holds
    stages 0 and 2, rank 1 stages 1 and 3), 4 micro-batches of 2, selective checkpointing: every term by hand."""
    cfg = load_config(ROOT / "recipes/small.toml", []).model
    layout = PlanLayout(
        pp=2,
        dp_shard=2,
        tp=2,
        micro_batch=2,
        microbatches=4,
        pp_schedule="Interleaved1F1B",
        activation_checkpoint="selective",
    )
    block = 512 * 1024 + 512 * 512 + 3 * 512 * 1408 + 2 * 64  # qkv, o, gate_up, down and QK-Norm's weights
    tp_block = block // 2 + 2 * 512  # a TP rank's half of those (QK-Norm's counted with them); its norms whole
    embed = head = 32000 * 512 // 2  # vocabulary-parallel
    tokens = 2 * 1024
    # selective, bytes per token: block input 2·d, qkv 2·(q+2kv), attention out 2·q + logsumexp 4·H, gate_up 4·f,
    # all split over tp; o_proj's and down_proj's partial sums 2 · 2·d are whole
    selective = (2 * 512 + 2 * 1024 + 2 * 512 + 4 * 8 + 4 * 1408) / 2 + 2 * 2 * 512
    # the block being recomputed holds everything: residuals 2·2·d, qkv, q/k after norm + RoPE 2·(q+kv), attention
    # out, gate_up + SiLU + product 8·f, float32 statistics 4·(2 + 2·H + K), over tp; the all-gathered inputs of
    # qkv_proj and gate_up_proj 2 · 2·d whole
    recomputed = (2 * 2 * 512 + 2 * 1024 + 2 * (512 + 256) + 2 * 512 + 8 * 1408 + 4 * (2 + 16 + 4)) / 2 + 2 * 2 * 512
    in_flight_first, in_flight_last = 2 * 1.25, 1 * 1.25  # 1F1B's min(m, p − r), × (1 + (p − 1)/2p) interleaved

    first, last = (rank_memory(cfg, layout, 1024, r) for r in (0, 1))
    shard0 = (4 * tp_block + embed) / 2  # over dp_shard
    shard1 = (4 * tp_block + head + 512) / 2  # the final norm is whole
    assert (first.weights, first.grads, first.optimizer) == (4 * shard0, 4 * shard0, 8 * shard0)
    assert (last.weights, last.grads, last.optimizer) == (4 * shard1, 4 * shard1, 8 * shard1)
    # FSDP2: two bf16 units gathered + one float32 unit (the largest: the embedding / the head with its norm), and
    # the pipeline stage's root kept gathered in bf16 between micro-batches
    assert first.gathered == (2 * 2 + 4) * embed + 2 * embed
    assert last.gathered == (2 * 2 + 4) * (head + 512) + 2 * (head + 512)
    assert first.activations == tokens * (4 * selective * in_flight_first + recomputed)
    # the last stage also keeps the final norm's input (bf16 residual) and the head's input, per micro-batch in flight
    assert last.activations == tokens * (4 * selective * in_flight_last + recomputed + in_flight_last * (512 + 1024))
    assert first.logits == 0
    # float32 + bf16 logits per micro-batch in flight, and the loss backward's four float32 temporaries once
    assert last.logits == tokens * 32000 / 2 * (in_flight_last * 6 + 16)
    assert not first.grads_overlap  # 4 micro-batches: the gradients are all there while the last one runs
    assert first.total == 16 * shard0 + first.gathered + first.activations
    assert memory_per_gpu(cfg, layout, 1024) == max(first, last, key=lambda m: m.total)


def test_fsdp_reshard_policies_by_hand():
    """The same layout as above under each `parallel.fsdp_reshard`: only the gathered bf16 copies change."""
    cfg = load_config(ROOT / "recipes/small.toml", []).model
    base = PlanLayout(pp=2, dp_shard=2, tp=2, micro_batch=2, microbatches=4, pp_schedule="Interleaved1F1B")
    tp_block = (512 * 1024 + 512 * 512 + 3 * 512 * 1408 + 2 * 64) // 2 + 2 * 512
    embed = head = 32000 * 512 // 2
    mem = {
        mode: [rank_memory(cfg, replace(base, fsdp_reshard=mode), 1024, r) for r in (0, 1)]
        for mode in ("default", "always", "never")
    }
    # always: the stage root is freed between micro-batches too; two bf16 units + one float32 unit remain
    assert [m.gathered for m in mem["always"]] == [(2 * 2 + 4) * embed, (2 * 2 + 4) * (head + 512)]
    # never: the bf16 copy of everything the rank holds (4 blocks and its embedding or head), + the float32 unit
    assert [m.gathered for m in mem["never"]] == [
        2 * (4 * tp_block + embed) + 4 * embed,
        2 * (4 * tp_block + head + 512) + 4 * (head + 512),
    ]
    for mode in ("always", "never"):
        for a, b in zip(mem[mode], mem["default"], strict=True):
            assert replace(a, gathered=b.gathered) == b
    assert replace(base, fsdp_reshard="never").describe().endswith("AC=none reshard=never")
    assert "reshard" not in base.describe() and "reshard" not in PlanLayout(fsdp_reshard="never").describe()
    with pytest.raises(ConfigError, match="FSDP reshard policy 'sometimes'"):
        replace(base, fsdp_reshard="sometimes").check()


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
    # ZB-V keeps 1F1B's peak on every rank (min(m, p)), GPipe all m
    assert [in_flight(zbv, r) for r in range(4)] == [4, 4, 4, 4]
    assert in_flight(replace(zbv, microbatches=2), 0) == 2
    assert in_flight(replace(one_f, pp_schedule="GPipe"), 3) == 8


def test_search_keeps_only_layouts_the_trainer_runs_and_breaks_ties_by_memory():
    cfg = load_config(ROOT / "recipes/8b.toml", []).model
    req = PlanRequest(64, GPUS["h100"], 8192, 128, 0.4, 2e12)
    layouts = list(candidates(cfg, req))  # micro-batches of 4 on 32 ranks leave m = 1 for pp = 2: not a candidate
    assert any(x.pp == 2 and x.dp == 32 for x in layouts)
    assert all(x.microbatches >= x.pp for x in layouts)  # a pipeline needs m ≥ pp micro-batches
    plans = search(cfg, req)
    assert {p.layout.tp for p in plans} == {1, 2, 4, 8} and max(p.layout.pp for p in plans) > 1
    assert all(cfg.n_layers % p.layout.parallel_config().n_stages == 0 for p in plans)  # even stages
    pairs = list(itertools.pairwise(plans))
    for a, b in pairs:  # fastest first; equal speed: more memory to spare first
        assert (round(a.tokens_per_s, 3), -a.memory.total) >= (round(b.tokens_per_s, 3), -b.memory.total)
    assert any(a.tokens_per_s == b.tokens_per_s for a, b in pairs)  # ties do happen
    fp8 = search(cfg, replace(req, fp8="tensorwise"))
    assert {p.layout.tp for p in fp8} == {1, 2, 4, 8}  # FP8 composes with tensor parallelism (tests/parallel/test_fp8)
    assert fp8[0].tokens_per_s > plans[0].tokens_per_s  # the linears' share of the FLOPs at the FP8 peak


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


def test_cli_takes_the_reshard_policy_from_the_config(capsys):
    args = ["plan", "recipes/8b.toml", "--gpus", "64", "--layout", "1,1,-1,8", "--json", "--top", "1"]
    plans = {}
    for mode in ("default", "never"):
        assert main([*args, "--micro-batch", "1", f"--parallel.fsdp_reshard={mode}"]) == 0
        plans[mode] = json.loads(capsys.readouterr().out)["plans"][0]
    assert plans["never"]["layout"]["fsdp_reshard"] == "never"
    assert main([a for a in args if a != "--json"] + ["--parallel.fsdp_reshard=never"]) == 0  # the text report
    text = capsys.readouterr().out
    assert "AC=none reshard=never" in text and "keeps every unit gathered until its backward" in text
    # 8 blocks a TP rank, each kept gathered in bf16: far more than FSDP2's two units
    assert plans["never"]["memory_bytes"]["gathered"] > 3 * plans["default"]["memory_bytes"]["gathered"]


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
