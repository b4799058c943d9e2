"""`kamado plan`: how a pre-training run fits on N GPUs and how long it takes, estimated on paper.

A planner in the spirit of Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU Clusters
Using Megatron-LM") and Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"):
exact parameter counts, the PaLM FLOPs/token of `kamado.train.speed`, memory per GPU (`plan_memory`), the pipeline
bubble of each schedule, and a throughput model

    tokens/s = n_gpus · peak · MFU · (1 − bubble) / (flops/token · recompute)

where MFU is what the run would reach without pipeline bubbles and without recomputation (0.40 by default: large
dense runs report 38–43 %, e.g. Llama 3 405B on H100s), and `recompute` charges activation checkpointing for the
FLOPs it repeats. Communication is not modelled: the MFU assumption stands for it. This module is pure Python; the
search over layouts is `plan_search`, the printed report `plan_report`, the GPU check `plan_check`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kamado.config import ModelConfig
from kamado.errors import ConfigError
from kamado.parallel.config import AC_MODES, MULTI_STAGE, PP_SCHEDULES, RESHARD_MODES, ParallelConfig
from kamado.train.speed import flops_per_token, matmul_params

GB = 1e9  # memory is in decimal gigabytes, as GPU datasheets state it


@dataclass(frozen=True)
class GPU:
    name: str
    memory: float  # bytes
    bf16_flops: float  # dense (no 2:4 sparsity) tensor-core FLOP/s
    fp8_flops: float | None  # dense; None: no FP8 tensor cores


# NVIDIA datasheets, dense figures (the datasheets print the 2:4-sparse ones, twice as large, with a footnote):
# A100 SXM 80GB: BF16 312 TFLOP/s, no FP8. H100 SXM: BF16 989, FP8 1979 TFLOP/s, 80 GB. H200 SXM: the H100's
# compute with 141 GB. B200 (HGX/DGX B200 datasheets, per GPU of 8): BF16 2.25 PFLOP/s, FP8 4.5 PFLOP/s, and
# 180 GB usable (the 1,440 GB of a DGX B200 over its 8 GPUs; the chip is often quoted as 192 GB).
GPUS = {
    "a100": GPU("a100", 80 * GB, 312e12, None),
    "h100": GPU("h100", 80 * GB, 989e12, 1979e12),
    "h200": GPU("h200", 141 * GB, 989e12, 1979e12),
    "b200": GPU("b200", 180 * GB, 2250e12, 4500e12),
}

DEFAULT_MFU = 0.40
DEFAULT_TOKENS = 2e12  # PLaMo-100B: 1.5T tokens in phase 1, then 0.5T in phase 2
DEFAULT_GLOBAL_BATCH_TOKENS = 4 * 2**20  # ≈ 4M tokens per optimizer step, the common choice at the 100B scale
# Extra time for selective checkpointing, which repeats only the elementwise work (norms, RoPE, SiLU·up): no
# matmul FLOPs, but memory-bound passes over the activations. An assumption, not a measurement.
SELECTIVE_OVERHEAD = 0.03


def gpu_named(name: str) -> GPU:
    gpu = GPUS.get(name.lower())
    if gpu is None:
        raise ConfigError(f"unknown GPU {name!r}: choose one of {', '.join(GPUS)}")
    return gpu


@dataclass(frozen=True)
class ParamCounts:
    """Exact parameter counts of `kamado.model.transformer.Transformer`, by component."""

    embedding: int  # embed.weight [V, d]
    attention: int  # one block's attn.*: qkv_proj [(H + 2K)·hd, d], o_proj [d, H·hd], QK-Norm weights [hd] ×2
    mlp: int  # one block's mlp.*: gate_up_proj [2f, d], down_proj [d, f]
    block_norms: int  # one block's attn_norm + mlp_norm weights [d] ×2
    n_layers: int
    final_norm: int  # norm.weight [d]
    lm_head: int  # lm_head.weight [V, d] (untied from the embedding)

    @property
    def block(self) -> int:
        return self.attention + self.mlp + self.block_norms

    @property
    def total(self) -> int:
        return self.embedding + self.n_layers * self.block + self.final_norm + self.lm_head


def param_counts(cfg: ModelConfig) -> ParamCounts:
    d, hd, f = cfg.d_model, cfg.head_dim, cfg.ffn_hidden
    qkv = d * (cfg.n_heads + 2 * cfg.n_kv_heads) * hd
    qk_norm = 2 * hd if cfg.qk_norm else 0
    return ParamCounts(
        embedding=cfg.vocab_size * d,
        attention=qkv + cfg.n_heads * hd * d + qk_norm,
        mlp=3 * d * f,
        block_norms=2 * d,
        n_layers=cfg.n_layers,
        final_norm=d,
        lm_head=cfg.vocab_size * d,
    )


@dataclass(frozen=True)
class PlanLayout:
    """One candidate: the mesh (pp, dp_replicate, dp_shard, tp), the micro-batch and how it flows.

    `microbatches` (m) is the number of micro-batches per optimizer step on each data-parallel rank: the pipeline's
    micro-batches when pp > 1, gradient-accumulation steps when pp = 1. The one-process case (all degrees 1) is the
    plain trainer of `kamado.train`, not FSDP2 (see `plan_memory`). `fsdp_reshard` is `ParallelConfig.fsdp_reshard`
    (it changes the memory of the distributed path only)."""

    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    micro_batch: int = 1
    microbatches: int = 1
    pp_schedule: str = "1F1B"
    activation_checkpoint: str = "none"
    fsdp_reshard: str = "default"

    @property
    def n_gpus(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.tp

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def single_process(self) -> bool:
        return self.n_gpus == 1

    def parallel_config(self) -> ParallelConfig:
        return ParallelConfig(
            pp=self.pp,
            dp_replicate=self.dp_replicate,
            dp_shard=self.dp_shard,
            tp=self.tp,
            pp_schedule=self.pp_schedule,
            pp_microbatches=self.microbatches,
            activation_checkpoint=self.activation_checkpoint,
            fsdp_reshard=self.fsdp_reshard,
        )

    def describe(self) -> str:
        pipe = f" {self.pp_schedule} m={self.microbatches}" if self.pp > 1 else ""
        reshard = "" if self.fsdp_reshard == "default" or self.single_process else f" reshard={self.fsdp_reshard}"
        return (
            f"pp={self.pp} dp_replicate={self.dp_replicate} dp_shard={self.dp_shard} tp={self.tp} "
            f"micro-batch={self.micro_batch}{pipe} AC={self.activation_checkpoint}{reshard}"
        )

    def check(self) -> None:
        for name in ("pp", "dp_replicate", "dp_shard", "tp", "micro_batch", "microbatches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"layout {name} = {getattr(self, name)}: must be at least 1")
        if self.pp_schedule not in PP_SCHEDULES:
            raise ConfigError(f"pipeline schedule {self.pp_schedule!r}: choose one of {', '.join(PP_SCHEDULES)}")
        if self.activation_checkpoint not in AC_MODES:
            raise ConfigError(f"activation checkpointing {self.activation_checkpoint!r}: one of {', '.join(AC_MODES)}")
        if self.fsdp_reshard not in RESHARD_MODES:
            raise ConfigError(f"FSDP reshard policy {self.fsdp_reshard!r}: one of {', '.join(RESHARD_MODES)}")


def bubble_fraction(schedule: str, pp: int, m: int) -> float:
    """Fraction of a step the pipeline's ranks sit idle, with p = pp ranks and m micro-batches.

    - GPipe and 1F1B: (p − 1)/(m + p − 1): a bubble of (p − 1) micro-batch times in a step of m (Narayanan et al.
      2021, §2.2: bubble time fraction (p − 1)/m of the ideal time, here as a fraction of the whole step).
    - Interleaved1F1B, v = 2 model stages per rank: (p − 1)/(v·m + p − 1) (Narayanan et al. 2021, §2.2.2: the
      bubble shrinks by v).
    - InterleavedZeroBubble: ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", §3.1) splits the backward
      pass into B (input gradients) and W (weight gradients) and fills the warm-up/cool-down with W: with equal
      F, B, W times the bubble is (p − 1)·T instead of (p − 1)·3T, a third of 1F1B's: (p − 1)/(3·v·m + p − 1).
    - ZBVZeroBubble (ZB-V, Qi et al. 2024): zero bubble once m ≥ 2p (their schedule, with equal F, B, W times);
      with fewer micro-batches we assume the interleaved zero-bubble figure above.
    """
    if pp == 1:
        return 0.0
    v = 2
    if schedule in ("GPipe", "1F1B"):
        return (pp - 1) / (m + pp - 1)
    if schedule == "Interleaved1F1B":
        return (pp - 1) / (v * m + pp - 1)
    if schedule == "ZBVZeroBubble" and m >= 2 * pp:
        return 0.0
    if schedule in ("InterleavedZeroBubble", "ZBVZeroBubble"):
        return (pp - 1) / (3 * v * m + pp - 1)
    raise ValueError(f"unknown pipeline schedule {schedule!r}")


def recompute_factor(cfg: ModelConfig, seq_len: int, activation_checkpoint: str) -> float:
    """Time of a step with activation checkpointing over the time without it.

    "full" runs every block's forward again in the backward pass: one more third of the blocks' 6·N + 12·L·d·T
    FLOPs (forward = 2 of the 6), the output head excepted. "selective" repeats only elementwise work
    (`SELECTIVE_OVERHEAD`, assumed)."""
    if activation_checkpoint == "full":
        total = flops_per_token(cfg, seq_len)
        blocks = total - 6.0 * cfg.d_model * cfg.vocab_size
        return (total + blocks / 3) / total
    if activation_checkpoint == "selective":
        return 1.0 + SELECTIVE_OVERHEAD
    return 1.0


def effective_peak(cfg: ModelConfig, seq_len: int, gpu: GPU, fp8: str) -> float:
    """Peak FLOP/s for this model's step: with FP8 the blocks' linears (where torchao converts them) run at the FP8
    peak and the rest (attention products, output head) at the BF16 peak, so time = Σ FLOPs_i / peak_i."""
    if fp8 == "none":
        return gpu.bf16_flops
    if gpu.fp8_flops is None:
        raise ConfigError(f"parallel.fp8 = {fp8!r}, but the {gpu.name} has no FP8 tensor cores: set fp8 to 'none'")
    total = flops_per_token(cfg, seq_len)
    linears = 6.0 * (matmul_params(cfg) - cfg.d_model * cfg.vocab_size)
    return total / (linears / gpu.fp8_flops + (total - linears) / gpu.bf16_flops)


def tokens_per_second(
    cfg: ModelConfig, seq_len: int, layout: PlanLayout, gpu: GPU, mfu: float, fp8: str = "none"
) -> float:
    """The throughput model of this module's docstring for `layout` on `layout.n_gpus` GPUs."""
    bubble = bubble_fraction(layout.pp_schedule, layout.pp, layout.microbatches)
    slowdown = recompute_factor(cfg, seq_len, layout.activation_checkpoint)
    peak = effective_peak(cfg, seq_len, gpu, fp8)
    return layout.n_gpus * peak * mfu * (1 - bubble) / (flops_per_token(cfg, seq_len) * slowdown)


def days_for(tokens: float, tokens_per_s: float) -> float:
    return tokens / tokens_per_s / 86400.0


def stages_of_rank(layout: PlanLayout, rank: int) -> list[int]:
    """The model stages on pipeline rank `rank`: looped (r, r + p) for the interleaved schedules, V-shaped
    (r, 2p − 1 − r) for ZBV, as `kamado.parallel.parallelize` places them."""
    if layout.pp == 1 or layout.pp_schedule not in MULTI_STAGE:
        return [rank]
    if layout.pp_schedule == "ZBVZeroBubble":
        return [rank, 2 * layout.pp - 1 - rank]
    return [rank, rank + layout.pp]
