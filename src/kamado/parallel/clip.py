"""The global gradient norm over parameters sharded on different meshes, and clipping by it.

With FSDP2 and tensor parallelism every gradient is a DTensor, but not all on the same mesh (a pipeline rank's
stages hold different tensors; norms and QK-Norm weights are replicated where matrices are sharded), and torch's
`clip_grad_norm_` stacks all the per-tensor norms into one foreach call, which needs them on one mesh. Here the
norm is taken per mesh (`get_total_norm` on that mesh's DTensors, reduced to a full value), the squares are summed,
then summed over the pipeline ranks, whose parameters are disjoint: ‖g‖ = sqrt(Σ_mesh ‖g_mesh‖² summed over pp).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


def total_grad_norm(params: Iterable[nn.Parameter], pp_group: dist.ProcessGroup | None) -> torch.Tensor:
    groups: dict[object, list[torch.Tensor]] = {}
    device = torch.device("cpu")
    for p in params:
        device = p.device
        if p.grad is not None:
            key = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
            groups.setdefault(key, []).append(p.grad)
    squares = []
    for grads in groups.values():
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        squares.append(norm.float() ** 2)
    total = torch.stack(squares).sum() if squares else torch.zeros((), device=device)
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dist.all_reduce(total, group=pp_group)
    return total.sqrt()


def clip_grads(params: list[nn.Parameter], max_norm: float, pp_group: dist.ProcessGroup | None) -> torch.Tensor:
    """Clip in place to `max_norm` (0 = only measure); returns the norm before clipping, a 0-d tensor on the
    device (the caller reads it with the step's other values, in one copy)."""
    norm = total_grad_norm(params, pp_group)
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norm)
    return norm
