"""`[parallel]`: how one training run is laid out over processes (`kamado.parallel`).

The device mesh is `(pp, dp_replicate, dp_shard, tp)`, outermost first: pipeline stages, replicated data-parallel
groups (HSDP), sharded data-parallel ranks (FSDP2) and tensor-parallel ranks. Their product is the world size that
`torchrun` starts; `dp_shard = -1` takes whatever the other three leave. All 1 is the plain one-process case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kamado.config_checks import AT_LEAST_ONE, NON_NEGATIVE, Range, check_choice, check_fields, check_items
from kamado.errors import ConfigError

PP_SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble")
MULTI_STAGE = ("Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble")  # two stages per rank
AC_MODES = ("none", "selective", "full")
FP8_MODES = ("none", "tensorwise", "rowwise")
RESHARD_MODES = ("default", "always", "never")


@dataclass
class ParallelConfig:
    pp: int = 1  # pipeline stages (ranks); a multi-stage schedule puts two model stages on each
    dp_replicate: int = 1  # HSDP: full copies of the sharded model, gradients all-reduced between them
    dp_shard: int = -1  # FSDP2 ranks within a copy; -1 = world size / (pp · dp_replicate · tp)
    tp: int = 1  # tensor-parallel ranks: whole attention heads and SwiGLU columns per rank, vocab-parallel head
    pp_schedule: str = "1F1B"  # one of PP_SCHEDULES
    pp_microbatches: int = 0  # micro-batches per step through the pipeline; 0 = the number of model stages
    pp_layers: list[int] = field(default_factory=list)  # transformer blocks per model stage; [] = as even as can be
    activation_checkpoint: str = "none"  # "none" | "selective" (keep matmul outputs, recompute the rest) | "full"
    compile: bool = False  # torch.compile each block (per-block keeps compile time flat in depth)
    fp8: str = "none"  # torchao float8 on the blocks' linears: "none" | "tensorwise" | "rowwise"
    fp8_emulate: bool = False  # emulate the FP8 matmuls (CPU, or a GPU without FP8 units): for tests
    # FSDP2 all-gathers the tensorwise-FP8 weights (half the bytes of bf16); their scales are computed for all
    # blocks at once after each optimizer step and checkpoint load (torchao `precompute_float8_dynamic_scale_for_fsdp`)
    fp8_all_gather: bool = False
    # FSDP2 frees each block's gathered weights after its forward and gathers them again for the backward:
    # "default" = every block but the last (needed at once), and the stage root unless pipelined (torchtitan's
    # policy); "always"; "never" (keep them: one gather per step, bf16 copies of the stage's weights held
    # through the backward, as `kamado plan` counts them; with one data-parallel rank nothing is saved by
    # resharding)
    fsdp_reshard: str = "default"
    meta_init: bool = False  # build on the meta device and initialise shard by shard (models too big for one host)
    backend: str = "auto"  # torch.distributed backend: auto = nccl on CUDA, gloo on the CPU

    def validate(self) -> None:
        check_fields(self, "parallel", pp=AT_LEAST_ONE, dp_replicate=AT_LEAST_ONE, tp=AT_LEAST_ONE)
        check_fields(self, "parallel", pp_microbatches=NON_NEGATIVE, dp_shard=Range(-1, 2**20))
        if self.dp_shard == 0:
            raise ConfigError("parallel.dp_shard = 0: give a rank count, or -1 for what the other degrees leave")
        check_items("parallel.pp_layers", self.pp_layers, AT_LEAST_ONE)
        check_choice("parallel.pp_schedule", self.pp_schedule, PP_SCHEDULES)
        check_choice("parallel.activation_checkpoint", self.activation_checkpoint, AC_MODES)
        check_choice("parallel.fp8", self.fp8, FP8_MODES)
        check_choice("parallel.fsdp_reshard", self.fsdp_reshard, RESHARD_MODES)
        check_choice("parallel.backend", self.backend, ("auto", "nccl", "gloo"))
        if self.fp8_all_gather and self.fp8 != "tensorwise":
            raise ConfigError(
                f"parallel.fp8_all_gather needs parallel.fp8 = 'tensorwise' (it is {self.fp8!r}): torchao gathers "
                "FP8 weights with one scale per tensor only"
            )

    @property
    def stages_per_rank(self) -> int:
        return 2 if self.pp_schedule in MULTI_STAGE else 1

    @property
    def n_stages(self) -> int:
        return self.pp * self.stages_per_rank if self.pp > 1 else 1

    def resolved_dp_shard(self, world_size: int) -> int:
        """`dp_shard` with -1 filled in from the world size; ConfigError when the degrees do not multiply to it."""
        rest = self.pp * self.dp_replicate * self.tp
        if self.dp_shard == -1:
            if world_size % rest:
                raise ConfigError(
                    f"world size {world_size} is not divisible by parallel.pp·dp_replicate·tp = {rest} "
                    f"(pp={self.pp}, dp_replicate={self.dp_replicate}, tp={self.tp})"
                )
            return world_size // rest
        if rest * self.dp_shard != world_size:
            raise ConfigError(
                f"parallel degrees pp={self.pp} · dp_replicate={self.dp_replicate} · dp_shard={self.dp_shard} · "
                f"tp={self.tp} = {rest * self.dp_shard}, but the world size is {world_size}"
            )
        return self.dp_shard

    def stage_layers(self, n_layers: int) -> list[int]:
        """Blocks per model stage (`pp_layers`, or an even split with the remainder on the first stages)."""
        n = self.n_stages
        if self.pp_layers:
            if len(self.pp_layers) != n or sum(self.pp_layers) != n_layers:
                raise ConfigError(
                    f"parallel.pp_layers = {self.pp_layers}: needs {n} stage counts summing to model.n_layers "
                    f"= {n_layers} (pp={self.pp}, schedule {self.pp_schedule})"
                )
            return list(self.pp_layers)
        if n_layers < n:
            raise ConfigError(f"model.n_layers = {n_layers} is fewer than the {n} pipeline stages")
        return [n_layers // n + (1 if i < n_layers % n else 0) for i in range(n)]
