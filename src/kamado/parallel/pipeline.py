"""Pipeline parallelism with `torch.distributed.pipelining`: the stages of `kamado.parallel.stage` wrapped as
`PipelineStage`s and driven by one of torch's schedules.

- GPipe (Huang et al. 2019): all forwards, then all backwards; 1F1B (PipeDream-Flush, Narayanan et al. 2021):
  the same bubble, (p − 1)/(m + p − 1) of the time, but at most p micro-batches' activations alive.
- Interleaved 1F1B (Narayanan et al. 2021): two model stages per rank, looped; the bubble shrinks by that factor.
- InterleavedZeroBubble and ZBVZeroBubble (Qi et al. 2023, "Zero Bubble Pipeline Parallelism"): the backward
  pass is split into the input-gradient part (on the critical path) and the weight-gradient part (scheduled into
  the bubbles); ZBV places the two stages of a rank in a V (rank r holds stages r and 2p − 1 − r).

Loss scaling: the schedule computes the loss of each of the m micro-batches and back-propagates it as returned, so
the loss function divides by m · grad_accum itself (`scale_grads=False`): the summed gradients are then those of
the mean loss over the step's sequences, as in the one-process trainer, and stay right when several pipeline
steps accumulate into one optimizer step (torch's own scaling would divide the earlier steps' gradients again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleZBVZeroBubble,
)

from kamado.config import RunConfig
from kamado.errors import ConfigError
from kamado.parallel.mesh import Layout
from kamado.parallel.parallelize import stage_ids
from kamado.parallel.stage import ModelStage

SCHEDULES: dict[str, Any] = {
    "GPipe": ScheduleGPipe,
    "1F1B": Schedule1F1B,
    "Interleaved1F1B": ScheduleInterleaved1F1B,
    "InterleavedZeroBubble": ScheduleInterleavedZeroBubble,
    "ZBVZeroBubble": ScheduleZBVZeroBubble,
}


def microbatches(cfg: RunConfig, local_batch: int) -> int:
    p = cfg.parallel
    m = p.pp_microbatches or p.n_stages
    if local_batch % m:
        raise ConfigError(
            f"parallel.pp_microbatches = {m}: must divide each data-parallel rank's micro-batch of {local_batch} "
            f"sequences (train.batch_size / data-parallel ranks)"
        )
    return m


def build_schedule(
    cfg: RunConfig,
    layout: Layout,
    stages: list[ModelStage],
    n_microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Any:
    ids = stage_ids(cfg, layout.coord("pp"))
    group = layout.group("pp")
    pipe = [
        PipelineStage(stage, i, cfg.parallel.n_stages, layout.device, group=group)
        for stage, i in zip(stages, ids, strict=True)
    ]
    cls = SCHEDULES[cfg.parallel.pp_schedule]
    if cfg.parallel.stages_per_rank == 1:
        return cls(pipe[0], n_microbatches, loss_fn=loss_fn, scale_grads=False)
    return cls(pipe, n_microbatches, loss_fn=loss_fn, scale_grads=False)
