"""The pieces of `kamado.parallel` that need no torchrun job: the grouped layout of the fused weights, the stage
split, the config's checks, activation checkpointing, the FP8 conversion and (on a one-rank gloo group in this
process) FSDP2's reshard policy."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kamado.config import ModelConfig, RunConfig
from kamado.errors import ConfigError
from kamado.model.transformer import Transformer
from kamado.parallel.config import ParallelConfig
from kamado.parallel.fused import add_ungroup_hooks, group_weights, to_grouped, to_model_layout
from kamado.parallel.parallelize import apply_ac, apply_fp8, stage_ids
from kamado.parallel.stage import split_stages

CFG = ModelConfig(vocab_size=96, d_model=64, n_layers=4, n_heads=8, n_kv_heads=2, ffn_hidden=80, max_seq_len=16)


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(CFG)


def test_grouped_layout_puts_each_kv_group_and_swiglu_unit_together():
    """Rows of the grouped qkv: per key/value head g, its 4 query heads, then k_g, then v_g (head_dim 8 rows each);
    gate_up alternates gate_i, up_i. Checked against row labels, not against the code's own index formula."""
    hd, g = CFG.head_dim, CFG.n_heads // CFG.n_kv_heads
    labels = [f"q{h}" for h in range(8) for _ in range(hd)] + [f"k{h}" for h in range(2) for _ in range(hd)]
    labels += [f"v{h}" for h in range(2) for _ in range(hd)]
    w = torch.arange(len(labels), dtype=torch.float32)[:, None].expand(-1, 3)
    grouped = to_grouped({"layers.0.attn.qkv_proj.weight": w}, CFG)["layers.0.attn.qkv_proj.weight"]
    got = [labels[int(i)] for i in grouped[:, 0]][::hd]
    assert got == ["q0", "q1", "q2", "q3", "k0", "v0", "q4", "q5", "q6", "q7", "k1", "v1"]
    assert g == 4
    gu = torch.arange(2 * CFG.ffn_hidden, dtype=torch.float32)[:, None]
    grouped = to_grouped({"layers.1.mlp.gate_up_proj.weight": gu}, CFG)["layers.1.mlp.gate_up_proj.weight"]
    assert grouped[:6, 0].tolist() == [0, 80, 1, 81, 2, 82]
    other = torch.randn(5, 3)
    assert to_grouped({"embed.weight": other}, CFG)["embed.weight"] is other
    back = to_model_layout(to_grouped({"layers.0.attn.qkv_proj.weight": w}, CFG), CFG)
    assert torch.equal(back["layers.0.attn.qkv_proj.weight"], w)


def test_a_grouped_model_with_its_hooks_computes_the_same_function():
    ref = _model()
    model = copy.deepcopy(ref)
    group_weights(model, CFG)
    assert not torch.equal(model.layers[0].attn.qkv_proj.weight, ref.layers[0].attn.qkv_proj.weight)
    add_ungroup_hooks(model, CFG)
    x = torch.randint(0, 96, (2, 16))
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_stages_split_the_blocks_and_keep_the_model_names():
    model = _model()
    first, second = split_stages(model, [3, 1], [0, 1])
    assert next(n for n, _ in first.named_parameters()) == "embed.weight"
    assert {n.split(".")[1] for n, _ in first.named_parameters() if n.startswith("layers.")} == {"0", "1", "2"}
    assert first.lm_head is None and second.embed is None
    assert [n for n, _ in second.named_parameters()][-1] == "lm_head.weight"
    x = torch.randint(0, 96, (2, 16))
    torch.testing.assert_close(second(first(x)), model(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("schedule", "pp", "want"),
    [
        ("1F1B", 4, [[0], [1], [2], [3]]),
        ("Interleaved1F1B", 2, [[0, 2], [1, 3]]),
        ("InterleavedZeroBubble", 2, [[0, 2], [1, 3]]),
        ("ZBVZeroBubble", 2, [[0, 3], [1, 2]]),  # V: rank 0 holds the first and the last stage
        ("ZBVZeroBubble", 3, [[0, 5], [1, 4], [2, 3]]),
    ],
)
def test_stage_placement(schedule, pp, want):
    cfg = RunConfig()
    cfg.parallel.pp, cfg.parallel.pp_schedule = pp, schedule
    assert [stage_ids(cfg, r) for r in range(pp)] == want


def test_layer_split_and_degree_checks():
    p = ParallelConfig(pp=2, pp_schedule="ZBVZeroBubble")
    assert p.n_stages == 4 and p.stage_layers(10) == [3, 3, 2, 2]
    with pytest.raises(ConfigError, match="fewer than the 4 pipeline stages"):
        p.stage_layers(3)
    p.pp_layers = [4, 2, 2, 1]
    with pytest.raises(ConfigError, match=r"needs 4 stage counts summing to model.n_layers = 10"):
        p.stage_layers(10)
    assert ParallelConfig(tp=2, pp=2).resolved_dp_shard(16) == 4
    with pytest.raises(ConfigError, match=r"world size 6 is not divisible by parallel\.pp·dp_replicate·tp = 4"):
        ParallelConfig(tp=2, pp=2).resolved_dp_shard(6)
    with pytest.raises(ConfigError, match=r"parallel\.pp_schedule"):
        ParallelConfig(pp_schedule="DualPipe").validate()


def _saved_bytes(stage: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stage(x).sum().backward()
    return total


def test_activation_checkpointing_keeps_less_and_computes_the_same():
    """Both modes keep fewer activations for the backward pass than none (the block internals are not kept
    outside the checkpoint); "full" recomputes the matmuls in the backward pass, "selective" keeps their outputs
    and recomputes only the cheap element-wise work, so it does the matmul FLOPs of no checkpointing."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randint(0, 96, (4, 16))
    saved, grads, flops = {}, {}, {}
    for mode in ("none", "selective", "full"):
        [stage] = split_stages(_model(), [4], [0])
        if mode != "none":
            apply_ac(stage, mode)
        saved[mode] = _saved_bytes(stage, x)
        grads[mode] = stage.layers["0"].attn.qkv_proj.weight.grad
        with FlopCounterMode(display=False) as counter:
            stage(x).sum().backward()
        flops[mode] = counter.get_total_flops()
    assert saved["full"] < saved["none"] and saved["selective"] < saved["none"]
    assert flops["selective"] == flops["none"] < flops["full"]
    torch.testing.assert_close(grads["full"], grads["none"])
    torch.testing.assert_close(grads["selective"], grads["none"])


def test_fp8_converts_only_the_block_linears():
    from torchao.float8.float8_linear import Float8Linear

    [stage] = split_stages(_model(), [4], [0])
    apply_fp8(stage, "rowwise", emulate=True)
    kinds = {name: type(m) for name, m in stage.named_modules()}
    assert kinds["layers.0.attn.qkv_proj"] is Float8Linear and kinds["layers.3.mlp.down_proj"] is Float8Linear
    assert kinds["lm_head"] is nn.Linear and kinds["embed"] is nn.Embedding
    assert sum(k is Float8Linear for k in kinds.values()) == 4 * 4


def test_fp8_all_gather_wraps_the_block_weights_and_needs_tensorwise():
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    def wrapped(all_gather: bool) -> int:
        [stage] = split_stages(_model(), [4], [0])
        apply_fp8(stage, "tensorwise", emulate=True, all_gather=all_gather)
        return sum(isinstance(p, WeightWithDynamicFloat8CastTensor) for p in stage.parameters())

    assert wrapped(True) == 4 * 4 and wrapped(False) == 0  # the 16 block linears' weights, nothing else
    ParallelConfig(fp8="tensorwise", fp8_all_gather=True).validate()
    for mode in ("none", "rowwise"):
        with pytest.raises(ConfigError, match=r"fp8_all_gather needs parallel\.fp8 = 'tensorwise'"):
            ParallelConfig(fp8=mode, fp8_all_gather=True).validate()


def test_optimizer_group_runs_its_hook_once_every_optimizer_has_stepped():
    from kamado.parallel.trainer import OptimizerGroup

    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    seen: list[tuple[float, float]] = []
    group = OptimizerGroup(
        [torch.optim.SGD([a], lr=0.5), torch.optim.SGD([b], lr=0.5)],
        after_step=lambda: seen.append((float(a.detach()[0]), float(b.detach()[0]))),
    )
    for _ in range(2):
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        group.step()
    assert seen == [(0.5, 0.5), (0.0, 0.0)]
    OptimizerGroup([torch.optim.SGD([a], lr=0.5)]).step()  # no hook: fine


@pytest.mark.parametrize(
    ("mode", "pp", "want"),
    [  # which units still hold gathered (unsharded) weights after the forward: blocks 0-3, then the stage root
        ("default", 1, [False, False, False, True, False]),
        ("default", 2, [False, False, False, True, True]),
        ("always", 2, [False] * 5),
        ("never", 1, [True] * 5),
    ],
)
def test_fsdp_reshard_policy_decides_what_stays_gathered_after_the_forward(tmp_path, mode, pp, want):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from kamado.parallel.parallelize import apply_fsdp

    ParallelConfig(fsdp_reshard=mode).validate()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        [stage] = split_stages(_model(), [4], [0])
        layout = SimpleNamespace(dp_mesh=init_device_mesh("cpu", (1,)), pp=pp)
        apply_fsdp(stage, layout, bf16=False, reshard=mode)  # type: ignore[arg-type]
        stage(torch.randint(0, 64, (2, 8)))
        units = [*(b.attn.qkv_proj for b in stage.layers.values()), stage]
        weights = [u.weight if isinstance(u, nn.Linear) else u.lm_head.weight for u in units]
        assert [not isinstance(w, DTensor) for w in weights] == want
    finally:
        dist.destroy_process_group()
    with pytest.raises(ConfigError, match=r"parallel\.fsdp_reshard"):
        ParallelConfig(fsdp_reshard="sometimes").validate()
