"""Memory per GPU of one training layout: parameters, gradients, AdamW state, bf16 copies in flight, activations.

Two training paths, modelled as they are written:

- **one process** (all degrees 1, `kamado.train.trainer`): float32 parameters, float32 gradients, float32 AdamW
  moments, bf16 autocast. Autocast caches a bf16 copy of every matmul weight for the forward pass and the backward
  keeps them (2 bytes per matmul parameter); the residual stream stays float32 (the embedding is float32 and
  `x + bf16` promotes), so each RMSNorm saves a float32 input.
- **distributed** (`kamado.parallel`, FSDP2 with `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`):
  float32 parameters, gradients and AdamW moments sharded over dp_shard (HSDP replicates them over dp_replicate);
  tensor parallelism divides the block matrices and the vocabulary (embedding, head) by tp; the pipeline puts
  `ParallelConfig.stage_layers` blocks on each stage, the embedding on the first, final norm and head on the last,
  and the worst rank is reported. Compute runs on bf16 copies: FSDP2 keeps about two units (blocks) gathered
  (one computing, one prefetched) plus one unit's float32 gradient on its way to the reduce-scatter; with pp > 1
  the stage's own embedding/head stays gathered between micro-batches. Activations and residual stream are bf16.
  That is the `default` reshard policy (`ParallelConfig.fsdp_reshard`); `always` also frees the pipeline stage's
  root between micro-batches; `never` keeps every unit gathered from its forward until its backward has run, so at
  the peak (the first backward unit) the bf16 copy of the rank's whole stage is held, plus the float32 gradient unit.

Activations saved per block and token (Korthikanti et al. 2022, §4, redone for this block; bytes, b·s tokens):
RMSNorm inputs 2·r·d (r: residual bytes) and their bf16 outputs that feed qkv_proj / gate_up_proj 2·2d; the qkv
output 2·(H + 2K)·hd (QK-Norm saves a view of it); q and k after RoPE 2·(H + K)·hd; the attention output 2·H·hd,
which is o_proj's input; SwiGLU's gate_up output 4f, SiLU output 2f and product 2f; float32 statistics (two
norms' rstd, QK-Norm's per head, attention's logsumexp per head) 4·(2 + 2H + K). No s² attention scores: on GPUs
SDPA runs the flash kernel, which recomputes them. This sum is what torch saves on an H200 (torch 2.11, exactly,
`plan_check`). Sequence parallelism (tp > 1) divides it by tp, except the two all-gathered linear inputs, which
DTensor's plan keeps whole (Megatron re-gathers them instead). Selective checkpointing (`parallelize._SAVE`)
keeps the block input and the matmul and attention outputs; full keeps only the block input; both also need one
block's full set while it is recomputed.

In-flight micro-batches on pipeline rank r of p: 1F1B min(m, p − r) (Narayanan et al. 2021); GPipe all m; the
interleaved schedules 1F1B's times 1 + (p − 1)/(p·v) (Korthikanti et al. 2022, §4.2.3; InterleavedZeroBubble is
ZB-H1, whose peak equals its 1F1B's, Qi et al. 2023); ZBV min(m, p) on every rank (ZB-V: 1F1B's peak, balanced).

The loss (last stage): float32 logits are kept for the backward pass, whose peak adds four more float32 tensors of
the logits' size: 20 bytes per logit (measured, `plan_check`); the distributed stage also holds its bf16 logits.
The vocabulary-parallel loss is assumed to cost the same per logit.
"""

from __future__ import annotations

from dataclasses import dataclass

from kamado.config import ModelConfig
from kamado.parallel.config import MULTI_STAGE
from kamado.parallel.plan import PlanLayout, param_counts, stages_of_rank

BF16, FP32 = 2, 4
LOGIT_SAVED = FP32  # the float32 logits the loss keeps for its backward pass, per micro-batch in flight
LOGIT_BACKWARD = 4 * FP32  # the loss backward's float32 temporaries, once
FSDP_GATHERED_UNITS = 2


@dataclass(frozen=True)
class Memory:
    """Bytes on one GPU at the step's peak."""

    weights: float  # float32 parameters (this rank's shard)
    grads: float  # float32 gradients, sharded like the weights
    optimizer: float  # AdamW exp_avg + exp_avg_sq, float32
    gathered: float  # bf16 copies of parameters for compute (autocast cache, or FSDP2's gathered units)
    activations: float  # saved for the backward pass, every micro-batch in flight
    logits: float  # the output head's logits and the loss's working set (last stage)
    grads_overlap: bool  # one micro-batch per step: gradients appear as activations are freed, not on top of them

    @property
    def total(self) -> float:
        transient = self.activations + self.logits
        live = max(self.grads, transient) if self.grads_overlap else self.grads + transient
        return self.weights + self.optimizer + self.gathered + live


def layer_activation_bytes(cfg: ModelConfig, tokens: int, mode: str, tp: int = 1, residual: int = BF16) -> float:
    """Bytes one block saves for its backward pass for `tokens` = b·s tokens (see the module docstring)."""
    d, hd, f = cfg.d_model, cfg.head_dim, cfg.ffn_hidden
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    if mode == "full":
        return tokens * residual * d / tp
    if mode == "selective":  # block input, qkv, attention out + logsumexp, gate_up; o_proj/down_proj partial sums
        sharded = residual * d + 2 * (q + 2 * kv) + 2 * q + 4 * cfg.n_heads + 4 * f
        return tokens * (sharded / tp + 2 * BF16 * d)
    sharded = 2 * residual * d + 2 * (q + 2 * kv) + 2 * (q + kv) + 2 * q + 8 * f
    sharded += 4 * (2 + 2 * cfg.n_heads + cfg.n_kv_heads)
    return tokens * (sharded / tp + 2 * BF16 * d)


def in_flight(layout: PlanLayout, rank: int) -> float:
    """Micro-batches whose activations pipeline rank `rank` holds at its peak (module docstring)."""
    p, m = layout.pp, layout.microbatches
    if p == 1:
        return 1.0
    if layout.pp_schedule == "GPipe":
        return float(m)
    if layout.pp_schedule == "ZBVZeroBubble":
        return float(min(m, p))
    held = float(min(m, p - rank))
    if layout.pp_schedule in MULTI_STAGE:
        held *= 1 + (p - 1) / (p * 2)
    return held


def rank_memory(cfg: ModelConfig, layout: PlanLayout, seq_len: int, rank: int) -> Memory:
    """Memory of pipeline rank `rank` (0 ≤ rank < pp) of `layout`."""
    pc, tp, single = param_counts(cfg), layout.tp, layout.single_process
    counts = layout.parallel_config().stage_layers(cfg.n_layers)
    mine = stages_of_rank(layout, rank)
    first, last = 0 in mine, len(counts) - 1 in mine
    layers = sum(counts[i] for i in mine)
    block_matrices = pc.attention + pc.mlp
    embed = pc.embedding / tp if first else 0.0
    head = pc.lm_head / tp + pc.final_norm if last else 0.0
    params = layers * (block_matrices / tp + pc.block_norms) + embed + head
    shard = params / layout.dp_shard
    gathered: float
    if single:  # autocast's bf16 copies of every matmul weight (the embedding is a lookup: not cast)
        gathered = BF16 * (layers * block_matrices + pc.lm_head)
    else:
        unit = max(block_matrices / tp if layers else 0.0, embed, head)
        if layout.fsdp_reshard == "never":  # nothing freed after the forward: the whole stage in bf16
            gathered = BF16 * params + FP32 * unit
        else:
            gathered = (FSDP_GATHERED_UNITS * BF16 + FP32) * unit
        if layout.pp > 1 and layout.fsdp_reshard == "default":  # the stage root stays gathered between micro-batches
            gathered += BF16 * (embed + head)
    residual = FP32 if single else BF16
    tokens = layout.micro_batch * seq_len
    per_layer = layer_activation_bytes(cfg, tokens, layout.activation_checkpoint, tp, residual)
    activations = layers * per_layer * in_flight(layout, rank)
    if layout.activation_checkpoint != "none" and layers:  # one block's full set while it is recomputed
        activations += layer_activation_bytes(cfg, tokens, "none", tp, residual)
    logits = 0.0
    if last:
        held = in_flight(layout, rank) if layout.pp > 1 else 1.0
        activations += held * tokens * (residual * cfg.d_model / tp + BF16 * cfg.d_model)  # final norm, head input
        saved = LOGIT_SAVED + (0 if single else BF16)
        logits = tokens * cfg.vocab_size / tp * (held * saved + LOGIT_BACKWARD)
    return Memory(
        weights=FP32 * shard,
        grads=FP32 * shard,
        optimizer=2 * FP32 * shard,
        gathered=gathered,
        activations=activations,
        logits=logits,
        grads_overlap=layout.microbatches == 1,
    )


def memory_per_gpu(cfg: ModelConfig, layout: PlanLayout, seq_len: int) -> Memory:
    """The worst pipeline rank's memory (the first holds the most activations, the last the logits)."""
    return max((rank_memory(cfg, layout, seq_len, r) for r in range(layout.pp)), key=lambda m: m.total)
