"""`kamado train` under torchrun: this rank's loader, model share and callbacks, then the distributed loop."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from kamado.config import RunConfig
from kamado.errors import ConfigError
from kamado.parallel.data import ShardedLoader
from kamado.parallel.mesh import init_layout
from kamado.parallel.trainer import DistributedTrainer
from kamado.train.callbacks import Callback, Checkpointer, SpeedMonitor
from kamado.train.pretrain import check_data, default_callbacks, validation_factory, write_run_config
from kamado.train.trainer import training_device


def build_distributed_trainer(cfg: RunConfig, progress: bool = True, tensorboard: bool = True) -> DistributedTrainer:
    if not cfg.data.sources:
        raise ConfigError("data.sources is empty: list the folders written by `kamado tokenize` ([[data.sources]])")
    device = training_device(cfg.train.device)
    layout = init_layout(cfg.parallel, device.type)
    loader = ShardedLoader(cfg.data, cfg.train.batch_size, layout.dp_rank, layout.dp)
    check_data(cfg, loader)
    callbacks: list[Callback]
    if dist.get_rank() == 0:
        out_dir = write_run_config(cfg)
        callbacks = default_callbacks(out_dir, progress, tensorboard)
    else:  # every rank saves its shards and measures its speed; rank 0 alone logs and shows progress
        callbacks = [SpeedMonitor(), Checkpointer()]
    return DistributedTrainer(cfg, layout, loader, cfg.out_dir, validation_factory(cfg), callbacks)


def distributed_pretrain(cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    trainer = build_distributed_trainer(cfg, progress)
    result = trainer.fit()
    result["num_params"] = sum(p.numel() for p in trainer.model.parameters())
    result["peak_flops"] = trainer.peak_flops
    result["trainer"] = trainer
    result["layout"] = trainer.layout.describe()
    return result
