"""The device mesh `(pp, dp_replicate, dp_shard, tp)` of one run, from torchrun's environment and `[parallel]`.

`torchrun` (and Slurm through it, or any launcher that sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT /
LOCAL_RANK) starts the processes; this module joins them into one process group (NCCL on GPUs, gloo on CPUs) and
names the four mesh dimensions, outermost first, so that tensor-parallel ranks are neighbours (one node) and
pipeline stages are furthest apart — the order torchtitan and Megatron-LM use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from kamado.errors import ConfigError
from kamado.parallel.config import ParallelConfig

DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


def under_launcher() -> bool:
    """True in a process started by torchrun (or another launcher that set WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


@dataclass
class Layout:
    mesh: DeviceMesh
    device: torch.device
    pp: int
    dp_replicate: int
    dp_shard: int
    tp: int

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def rank(self) -> int:
        return dist.get_rank()

    def coord(self, dim: str) -> int:
        return self.mesh.get_local_rank(dim)

    def group(self, dim: str) -> dist.ProcessGroup:
        return self.mesh.get_group(dim)

    @property
    def dp_rank(self) -> int:
        return self.coord("dp_replicate") * self.dp_shard + self.coord("dp_shard")

    @property
    def dp_mesh(self) -> DeviceMesh:
        """The mesh FSDP2 shards over: 1-D over dp_shard, or 2-D (replicate, shard) = HSDP."""
        if self.dp_replicate > 1:
            return self.mesh["dp_replicate", "dp_shard"]
        return self.mesh["dp_shard"]

    @cached_property
    def dp_group(self) -> dist.ProcessGroup:
        """All data-parallel ranks (replicate × shard), for averaging the logged loss."""
        return self.mesh["dp_replicate", "dp_shard"]._flatten("dp").get_group()

    def describe(self) -> str:
        return f"pp={self.pp} × dp_replicate={self.dp_replicate} × dp_shard={self.dp_shard} × tp={self.tp}"


def init_layout(cfg: ParallelConfig, device_type: str, timeout_s: float = 1800.0) -> Layout:
    """Join the process group (once) and build the mesh; ConfigError when the degrees do not fit the world."""
    if not dist.is_initialized():
        if not under_launcher():
            raise ConfigError(
                "parallel degrees > 1 need one process per rank: launch with `torchrun --nproc-per-node N kamado "
                "train ...` (see README, 'Training on many GPUs')"
            )
        # auto on GPUs: NCCL for device tensors, gloo for the few CPU ones (barriers, a broadcast path string)
        backend = cfg.backend if cfg.backend != "auto" else ("cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    world = dist.get_world_size()
    dp_shard = cfg.resolved_dp_shard(world)
    shape = (cfg.pp, cfg.dp_replicate, dp_shard, cfg.tp)
    mesh = init_device_mesh(device_type, shape, mesh_dim_names=DIMS)
    device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    return Layout(mesh, device, cfg.pp, cfg.dp_replicate, dp_shard, cfg.tp)
