"""Tensor parallelism (Megatron-LM's scheme, Shoeybi et al. 2019; Korthikanti et al. 2022 for sequence parallel),
expressed as DTensor plans for `parallelize_module`.

Per block: the fused `qkv_proj` and `gate_up_proj` are column-wise (each rank holds whole key/value groups and whole
SwiGLU units, thanks to the grouped layout of `kamado.parallel.fused`), `o_proj` and `down_proj` row-wise with a
reduce-scatter back to sequence shards. The two RMSNorms run sequence-parallel: between the blocks every rank holds
1/tp of the sequence. QK-Norm is per head, so it stays local to the rank that owns the head; its weight (shared by
all heads) is a replicated DTensor, which makes its gradient the sum over every rank's heads.

The embedding is vocab-parallel (row-wise: each rank looks up its slice of the vocabulary, the partial sums are
reduce-scattered over the sequence) and the output head column-wise over the vocabulary; the loss then works on the
vocabulary shards (`kamado.parallel.loss`), never gathering the full logits.

With FP8 the blocks' linears are torchao Float8Linear modules by the time this plan applies; the stock styles
shard them as they do nn.Linear, and the tensorwise scales come from whole-tensor amaxes (a DTensor's amax is
reduced over its shards), as on one rank. (The FP8 roundings still differ where float32 sums did: in float32 with
FP8, TP=2 and FSDP=2 agree to 2e-5 on the first loss and drift to 1e-4 by step 4.) torchao's Float8ColwiseParallel & co.
would also move the gathered activations in FP8; they need float8 collectives, which gloo lacks (the CPU tests),
so they are left for a GPU cluster to try.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from kamado.config import ModelConfig
from kamado.errors import ConfigError
from kamado.model.transformer import Attention
from kamado.parallel.stage import ModelStage


def check_tp(cfg: ModelConfig, tp: int) -> None:
    """Every sharded dimension must split evenly into whole heads / units / vocabulary slices."""
    for name, value in (("n_kv_heads", cfg.n_kv_heads), ("ffn_hidden", cfg.ffn_hidden), ("vocab_size", cfg.vocab_size)):
        if value % tp:
            raise ConfigError(f"parallel.tp = {tp} does not divide model.{name} = {value}")


def _heads_input(_mod: nn.Module, inputs: tuple[Any, ...], mesh: DeviceMesh) -> tuple[Any, ...]:
    # q or k [B, T, heads on this rank, head_dim]: this rank's heads are its shard of dim 2
    return (DTensor.from_local(inputs[0], mesh, [Shard(2)], run_check=False), *inputs[1:])


def _local_output(_mod: nn.Module, out: Any, _mesh: DeviceMesh) -> Any:
    return out.to_local()


def apply_tp(stage: ModelStage, mesh: DeviceMesh) -> None:
    """Shard `stage` over the 1-D tensor-parallel `mesh` in place (weights must already be grouped)."""
    tp = mesh.size()
    cfg = stage.cfg
    check_tp(cfg, tp)
    top: dict[str, Any] = {}
    if stage.embed is not None:
        top["embed"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if stage.norm is not None:
        top["norm"] = SequenceParallel()
        top["lm_head"] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False)
    if top:
        parallelize_module(stage, mesh, top)
    block_plan = {
        "attn_norm": SequenceParallel(),
        "attn": PrepareModuleInput(
            input_layouts=(Shard(1), None, None, None, None, None),
            desired_input_layouts=(Replicate(), None, None, None, None, None),
        ),
        "attn.qkv_proj": ColwiseParallel(),
        "attn.o_proj": RowwiseParallel(output_layouts=Shard(1)),
        "mlp_norm": SequenceParallel(),
        "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "mlp.gate_up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1)),
    }
    for block in stage.layers.values():
        parallelize_module(block, mesh, block_plan)
        attn = block.attn
        assert isinstance(attn, Attention)
        attn.n_heads, attn.n_kv = cfg.n_heads // tp, cfg.n_kv_heads // tp  # the heads this rank computes
        for norm in (attn.q_norm, attn.k_norm):
            if isinstance(norm, nn.Module):
                distribute_module(norm, mesh, input_fn=_heads_input, output_fn=_local_output)  # type: ignore[arg-type]
    stage.seq_shards = tp
