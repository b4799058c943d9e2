"""Build this rank's share of the model: pipeline stages, then FP8, tensor parallel, activation checkpointing,
per-block compile and FSDP2, in the order torchtitan applies them (each later step wraps what the earlier made).

The full model is first built on the CPU with the run's seed, exactly as the one-process trainer builds it, so
every layout starts from the same weights (what the loss-parity tests compare). `parallel.meta_init` skips that
for models too large for one host's memory: the stage is built on the meta device, sharded, then materialised
and initialised shard by shard (same distribution, other numbers).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from kamado.config import RunConfig
from kamado.model.transformer import Transformer
from kamado.parallel.fused import add_ungroup_hooks, group_weights
from kamado.parallel.mesh import Layout
from kamado.parallel.stage import ModelStage, split_stages
from kamado.parallel.tensor_parallel import apply_tp

# selective activation checkpointing keeps what is expensive to recompute: the matmul and attention outputs
_SAVE = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def stage_ids(cfg: RunConfig, pp_rank: int) -> list[int]:
    """The model stages on pipeline rank `pp_rank`: one, or two for the multi-stage schedules — looped
    (rank r: r and r + pp) for the interleaved ones, V-shaped (r and 2·pp − 1 − r) for ZBV."""
    p = cfg.parallel
    if p.stages_per_rank == 1 or p.pp == 1:
        return [pp_rank]
    if p.pp_schedule == "ZBVZeroBubble":
        return [pp_rank, 2 * p.pp - 1 - pp_rank]
    return [pp_rank, pp_rank + p.pp]


def apply_fp8(stage: ModelStage, mode: str, emulate: bool, all_gather: bool = False) -> None:
    """torchao float8 training on the blocks' linears; embedding, output head and norms stay in bf16/fp32.
    `all_gather` (tensorwise only): FSDP2 gathers the weights already cast to FP8."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = dataclasses.replace(
        Float8LinearConfig.from_recipe_name(mode), emulate=emulate, enable_fsdp_float8_all_gather=all_gather
    )
    convert_to_float8_training(
        stage, config=config, module_filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn.startswith("layers.")
    )


def precompute_fp8_scales(stages: list[ModelStage]) -> None:
    """The scales of the FP8-gathered weights for the next all-gather: each stage's amaxes in one reduction."""
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

    for stage in stages:
        precompute_float8_dynamic_scale_for_fsdp(stage)


def _policy(_ctx: object, op: object, *_args: object, **_kwargs: object) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE else CheckpointPolicy.PREFER_RECOMPUTE


def apply_ac(stage: ModelStage, mode: str) -> None:
    """Recompute each block's activations in the backward pass: all of them ("full", only the block input kept)
    or all but the matmul/attention outputs ("selective"). The forward is wrapped in place, so parameter names
    (and checkpoints) do not change."""
    for block in stage.layers.values():
        inner = block.forward
        if mode == "full":
            block.forward = partial(checkpoint, inner, use_reentrant=False)
        else:
            block.forward = partial(
                checkpoint,
                inner,
                use_reentrant=False,
                context_fn=partial(create_selective_checkpoint_contexts, _policy),
            )


def apply_fsdp(stage: ModelStage, layout: Layout, bf16: bool, reshard: str = "default") -> None:
    """FSDP2 over the data-parallel mesh (HSDP when it is 2-D): each block its own unit, then the stage.
    bf16 compute with float32 gradient reduction when training in bf16. `reshard`: `ParallelConfig.fsdp_reshard`."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    mesh = layout.dp_mesh
    blocks = list(stage.layers.values())
    for i, block in enumerate(blocks):
        # by default the last block's parameters stay gathered: the backward pass needs them again at once
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=_reshard(reshard, i < len(blocks) - 1))
    # a pipeline stage's root (embedding, head) is used by every micro-batch: kept gathered by default
    fully_shard(stage, mesh=mesh, mp_policy=mp, reshard_after_forward=_reshard(reshard, layout.pp == 1))


def _reshard(mode: str, default: bool) -> bool:
    return {"always": True, "never": False}.get(mode, default)


def build_stages(cfg: RunConfig, layout: Layout) -> list[ModelStage]:
    """This rank's model stages, parallelized and on its device."""
    p = cfg.parallel
    torch.manual_seed(cfg.train.seed)
    if p.meta_init:
        with torch.device("meta"):
            model = Transformer(cfg.model)
    else:
        model = Transformer(cfg.model)
        group_weights(model, cfg.model)
    counts = p.stage_layers(cfg.model.n_layers)
    stages = split_stages(model, counts, stage_ids(cfg, layout.coord("pp")))
    for stage in stages:
        if p.fp8 != "none":
            apply_fp8(stage, p.fp8, p.fp8_emulate, p.fp8_all_gather)
        if p.tp > 1:
            apply_tp(stage, layout.mesh["tp"])
        add_ungroup_hooks(stage, cfg.model)
        if p.activation_checkpoint != "none":
            apply_ac(stage, p.activation_checkpoint)
        if p.compile:
            for block in stage.layers.values():
                block.compile()
        apply_fsdp(stage, layout, cfg.train.dtype == "bf16", p.fsdp_reshard)
        if p.meta_init:
            stage.to_empty(device=layout.device)
            Transformer.init_weights(stage)  # type: ignore[arg-type]  # same names, cfg and rope buffers
        else:
            stage.to(layout.device)
    return stages
