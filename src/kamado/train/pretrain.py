"""`kamado train`: build the model, the data loaders and the callbacks from a RunConfig, then run the Trainer."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from kamado.atomic import atomic_write_text
from kamado.config import RunConfig, to_dict
from kamado.data.loader import PackedLoader, ValLoader
from kamado.errors import ConfigError
from kamado.model.transformer import Transformer
from kamado.train.callbacks import Callback, Checkpointer, MetricsLogger, ProgressBar, SpeedMonitor
from kamado.train.trainer import Trainer


def default_callbacks(out_dir: Path, progress: bool = True, tensorboard: bool = True) -> list[Callback]:
    callbacks: list[Callback] = [SpeedMonitor(), MetricsLogger(out_dir, tensorboard=tensorboard), Checkpointer()]
    if progress:
        callbacks.append(ProgressBar())
    return callbacks


def check_data(cfg: RunConfig, loader: PackedLoader) -> None:
    """The data and the model must agree: ConfigError naming the setting to change."""
    if loader.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"the data was tokenized with a vocabulary of {loader.vocab_size} but model.vocab_size is "
            f"{cfg.model.vocab_size}; set --model.vocab_size={loader.vocab_size}"
        )
    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")


def validation_factory(cfg: RunConfig) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None:
    """A fresh pass over `train.eval_batches` validation batches per source, or None without val_sources."""
    if not cfg.data.val_sources:
        return None
    return lambda: iter(ValLoader(cfg.data, cfg.train.batch_size, cfg.train.eval_batches))


def write_run_config(cfg: RunConfig) -> Path:
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.json", json.dumps(to_dict(cfg), indent=1, ensure_ascii=False))
    return out_dir


def build_trainer(cfg: RunConfig, progress: bool = True, tensorboard: bool = True) -> Trainer:
    if not cfg.data.sources:
        raise ConfigError("data.sources is empty: list the folders written by `kamado tokenize` ([[data.sources]])")
    loader = PackedLoader(cfg.data, cfg.train.batch_size)
    check_data(cfg, loader)
    val = validation_factory(cfg)
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model)
    out_dir = write_run_config(cfg)
    return Trainer(cfg, model, loader, out_dir, val, default_callbacks(out_dir, progress, tensorboard))


def wants_distributed(cfg: RunConfig) -> bool:
    """Under torchrun (even with one process), or with any parallel degree above 1."""
    from kamado.parallel.mesh import under_launcher

    p = cfg.parallel
    return under_launcher() or max(p.pp, p.dp_replicate, p.tp, p.dp_shard) > 1


def pretrain(cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    if wants_distributed(cfg):
        from kamado.parallel.run import distributed_pretrain

        return distributed_pretrain(cfg, progress)
    trainer = build_trainer(cfg, progress)
    result = trainer.fit()
    result["num_params"] = sum(p.numel() for p in trainer.model.parameters())
    result["peak_flops"] = trainer.peak_flops
    result["trainer"] = trainer
    return result
