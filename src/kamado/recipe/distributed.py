"""`kamado run` under torchrun: the whole recipe on rank 0, pre-training on every rank.

The corpus, tokenizer and shard stages are one process's work, and so are the stages after pre-training (bits/char,
generation, export, post-training and evaluation, all on models of a size one host holds). So the other ranks wait
while rank 0 prepares the data, receive the configuration rank 0 will train with (the vocabulary and sources it
just filled in), join the distributed pre-training, and exit. Rank 0 then adds the consolidated weights to the last
checkpoint (`model.safetensors` beside the DCP shards, in the model's own layout), which is what every later stage
and command reads.

The wait uses a gloo group of its own with a long timeout (the corpus stage may take hours); the training
collectives keep the usual 30 minutes, so a hung rank is still noticed.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from kamado.config import RunConfig, from_dict, to_dict
from kamado.errors import CheckpointError
from kamado.model.transformer import Transformer
from kamado.parallel.mesh import init_layout, under_launcher
from kamado.train import checkpoint as ckpt
from kamado.train.trainer import training_device

WAIT = timedelta(days=3)
_group: Any = None


def start(cfg: RunConfig) -> bool:
    """Join the ranks (under torchrun); True on the rank that runs the whole recipe."""
    global _group
    if not under_launcher():
        return True
    init_layout(cfg.parallel, training_device(cfg.train.device).type)
    _group = dist.new_group(backend="gloo", timeout=WAIT)
    return dist.get_rank() == 0


def share_config(cfg: RunConfig) -> None:
    """Rank 0: hand the pre-training configuration to the waiting ranks."""
    if _group is not None:
        dist.broadcast_object_list([json.dumps(to_dict(cfg))], src=0, group=_group)


def follow(cfg: RunConfig) -> dict[str, Any]:
    """Every rank but 0: wait for the data and the configuration, pre-train with the others, stop."""
    from kamado.train.pretrain import pretrain

    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, group=_group)  # JSON text, never unpickled objects from elsewhere
    result = pretrain(from_dict(RunConfig, json.loads(box[0])), progress=False)
    dist.barrier(group=_group)  # rank 0 consolidates after every rank is done
    return {"rank": dist.get_rank(), "step": result["step"]}


def pretrained_model(out: Path) -> Transformer:
    """The pre-trained model for the stages after pre-training (rank 0). After a distributed run, the last
    checkpoint's DCP shards are consolidated into `model.safetensors` beside them first (once)."""
    if _group is not None:
        dist.barrier(group=_group)
    path = ckpt.latest_checkpoint(out / "checkpoints")
    if path is None:
        raise CheckpointError(f"no checkpoint in {out / 'checkpoints'} after pre-training")
    if not (path / "model.safetensors").is_file():
        from kamado.parallel.checkpoint import consolidated_weights  # torch.distributed.checkpoint: 0.9 s to import

        _, tensors = consolidated_weights(path)
        ckpt.add_model_weights(path, tensors)
    model, _ = ckpt.load_model(path)
    return model
