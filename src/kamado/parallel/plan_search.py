"""The search of `kamado plan`: every layout of N GPUs, kept when it fits in memory, ranked by predicted speed.

Candidates: tp divides the GPUs of one node (tensor parallelism needs NVLink) and the model's KV heads, SwiGLU
width and vocabulary (`kamado.parallel.tensor_parallel`); pp gives every model stage the same number of blocks;
every split of the remaining data-parallel ranks into dp_replicate × dp_shard; each micro-batch size that divides
the global batch, the number of micro-batches per step following (pipelines need at least pp of them); each
schedule when pp > 1; each activation-checkpointing mode. A layout fits when its worst rank's memory is within
`headroom` of the GPU's (the rest is the CUDA context, NCCL buffers and allocator fragmentation, which the
estimate leaves out). Ranking: predicted tokens/s, then less memory. Communication is not modelled, so layouts
that differ only in it tie, and the tie goes to the one with more memory to spare.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kamado.config import ModelConfig
from kamado.errors import ConfigError
from kamado.parallel.config import AC_MODES, MULTI_STAGE, PP_SCHEDULES
from kamado.parallel.plan import (
    GB,
    GPU,
    PlanLayout,
    bubble_fraction,
    days_for,
    tokens_per_second,
)
from kamado.parallel.plan_memory import Memory, memory_per_gpu

MICRO_BATCHES = (1, 2, 4, 8)


@dataclass(frozen=True)
class PlanRequest:
    """What to plan for: the cluster, the step and the assumptions."""

    n_gpus: int
    gpu: GPU
    seq_len: int
    global_batch: int  # sequences per optimizer step
    mfu: float
    tokens: float
    fp8: str = "none"
    fsdp_reshard: str = "default"  # ParallelConfig.fsdp_reshard of every candidate
    gpus_per_node: int = 8
    micro_batches: tuple[int, ...] = MICRO_BATCHES
    mesh: tuple[int, int, int, int] | None = None  # (pp, dp_replicate, dp_shard, tp) to keep, else search all
    headroom: float = 0.9

    @property
    def usable(self) -> float:
        return self.gpu.memory * self.headroom

    def check(self) -> None:
        if self.n_gpus < 1:
            raise ConfigError(f"--gpus = {self.n_gpus}: must be at least 1")
        if self.gpus_per_node < 1:
            raise ConfigError(f"--gpus-per-node = {self.gpus_per_node}: must be at least 1")
        if self.n_gpus > self.gpus_per_node and self.n_gpus % self.gpus_per_node:
            raise ConfigError(
                f"--gpus = {self.n_gpus} is not a whole number of {self.gpus_per_node}-GPU nodes "
                f"(--gpus-per-node): use a multiple of {self.gpus_per_node}"
            )
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"--mfu = {self.mfu}: must be in (0, 1]")
        if not 0 < self.tokens < float("inf"):
            raise ConfigError(f"--tokens = {self.tokens}: must be a positive number of tokens")
        if self.global_batch < 1:
            raise ConfigError(f"--global-batch is less than one sequence of {self.seq_len} tokens")
        if not 0 < self.headroom <= 1:
            raise ConfigError(f"--headroom = {self.headroom}: must be in (0, 1]")
        if any(b < 1 for b in self.micro_batches):
            raise ConfigError(f"--micro-batch = {min(self.micro_batches)}: must be at least 1")
        if self.mesh is not None:
            pp, dr, ds, tp = self.mesh
            if min(self.mesh) < 1 or pp * dr * ds * tp != self.n_gpus:
                raise ConfigError(
                    f"--layout {pp},{dr},{ds},{tp}: pp·dp_replicate·dp_shard·tp = {pp * dr * ds * tp}, "
                    f"but --gpus is {self.n_gpus}"
                )


@dataclass(frozen=True)
class Plan:
    layout: PlanLayout
    memory: Memory
    bubble: float
    tokens_per_s: float
    days: float


def evaluate(cfg: ModelConfig, req: PlanRequest, layout: PlanLayout) -> Plan:
    tps = tokens_per_second(cfg, req.seq_len, layout, req.gpu, req.mfu, req.fp8)
    return Plan(
        layout=layout,
        memory=memory_per_gpu(cfg, layout, req.seq_len),
        bubble=bubble_fraction(layout.pp_schedule, layout.pp, layout.microbatches),
        tokens_per_s=tps,
        days=days_for(req.tokens, tps),
    )


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _tp_ok(cfg: ModelConfig, tp: int) -> str | None:
    """Why `tp` cannot shard this model (whole KV heads, SwiGLU units and vocabulary slices per rank), or None."""
    for name in ("n_kv_heads", "ffn_hidden", "vocab_size"):
        if getattr(cfg, name) % tp:
            return f"tp = {tp} does not divide model.{name} = {getattr(cfg, name)}"
    return None


def _meshes(cfg: ModelConfig, req: PlanRequest) -> Iterator[tuple[int, int, int, int]]:
    if req.mesh is not None:
        pp, tp = req.mesh[0], req.mesh[3]
        if (why := _tp_ok(cfg, tp)) is not None:
            raise ConfigError(f"--layout: {why}")
        if pp > cfg.n_layers:
            raise ConfigError(f"--layout: pp = {pp} is more pipeline stages than model.n_layers = {cfg.n_layers}")
        yield req.mesh
        return
    n = req.n_gpus
    for tp in _divisors(min(n, req.gpus_per_node)):
        if n % tp or _tp_ok(cfg, tp) is not None:
            continue
        for pp in _divisors(n // tp):
            if cfg.n_layers % pp:
                continue
            dp = n // (tp * pp)
            for dr in _divisors(dp):
                yield pp, dr, dp // dr, tp


def candidates(cfg: ModelConfig, req: PlanRequest) -> Iterator[PlanLayout]:
    """Every layout of the search (module docstring)."""
    for pp, dr, ds, tp in _meshes(cfg, req):
        dp = dr * ds
        # the search splits the blocks evenly over the stages; a given --layout may split them unevenly
        even = req.mesh is None
        stages = {s: pp * (2 if s in MULTI_STAGE else 1) for s in PP_SCHEDULES}
        schedules = [s for s, n in stages.items() if (cfg.n_layers % n == 0 if even else n <= cfg.n_layers)]
        for b in req.micro_batches:
            if req.global_batch % (dp * b):
                continue
            m = req.global_batch // (dp * b)
            if pp > 1 and m < pp:
                continue
            for schedule in schedules if pp > 1 else ["1F1B"]:
                # the one-process trainer (kamado.train) has no activation checkpointing
                for ac in AC_MODES if pp * dp * tp > 1 else ("none",):
                    yield PlanLayout(pp, dr, ds, tp, b, m, schedule, ac, req.fsdp_reshard)


def search(cfg: ModelConfig, req: PlanRequest) -> list[Plan]:
    """The layouts that fit, fastest first; ConfigError when none does."""
    req.check()
    plans = [evaluate(cfg, req, layout) for layout in candidates(cfg, req)]
    if not plans:
        mesh = "" if req.mesh is None else " with --layout " + ",".join(map(str, req.mesh))
        raise ConfigError(
            f"no layout of {req.n_gpus} GPUs{mesh} splits the global batch of {req.global_batch} sequences "
            f"into micro-batches of {', '.join(map(str, req.micro_batches))} (pipelines need m ≥ pp): "
            f"change --global-batch, --micro-batch or --gpus"
        )
    fitting = [p for p in plans if p.memory.total <= req.usable]
    if not fitting:
        least = min(plans, key=lambda p: p.memory.total)
        raise ConfigError(
            f"nothing fits in {req.usable / GB:.0f} GB of a {req.gpu.name} ({req.headroom:.0%} of "
            f"{req.gpu.memory / GB:.0f} GB): the smallest layout needs {least.memory.total / GB:.1f} GB "
            f"({least.layout.describe()}); use more GPUs, a larger GPU or a shorter sequence"
        )
    return sorted(fitting, key=lambda p: (-round(p.tokens_per_s, 3), p.memory.total))
