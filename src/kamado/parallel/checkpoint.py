"""Distributed checkpoints (torch.distributed.checkpoint, DCP): every rank writes its own shards, in parallel.

A DCP checkpoint is a folder `step_00000100/` like the one-process kind (`kamado.train.checkpoint`), holding
  .metadata, __R_0.distcp   the model and AdamW state, each tensor under its full-model name (`model.layers.3…`,
                            `optim.state.layers.3….exp_avg`); DCP records how each was sharded, and re-shards on load
  state.json                step, data-loader position, stability history, skipped batches, config, layout
  integrity.json            format "dcp" and each file's size; written last, by rank 0, after every rank finished
It is written to `step_….tmp` and renamed into place by rank 0 once all ranks are done (the same `publish` as the
one-process saves), so a rank killed mid-save leaves a `.tmp` that the next start deletes: a relaunched job always
resumes from the last complete checkpoint. The folder must be on a file system every rank sees.

Because names and the grouped layout of the fused weights (`kamado.parallel.fused`) do not depend on the layout,
a checkpoint saved on 2×2×2 loads on one process or on TP=2. `consolidate` turns one into the single-file
safetensors checkpoint every other kamado command reads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from kamado.atomic import atomic_write_text
from kamado.config import ModelConfig, from_dict
from kamado.errors import CheckpointError
from kamado.faults import failpoint
from kamado.model.transformer import Transformer, rope_tables
from kamado.parallel.fused import to_model_layout
from kamado.train import checkpoint as ckpt

_OPTS = StateDictOptions(flatten_optimizer_state_dict=True)


def _has_state(optimizers: Sequence[torch.optim.Optimizer]) -> bool:
    return all(len(opt.state) > 0 for opt in optimizers)


def _app_state(
    stages: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer], with_optim: bool
) -> dict[str, dict[str, Any]]:
    """Model (and AdamW) state by full-model names. `with_optim` only once AdamW has state: asked for the state
    of a fresh optimizer, torch's `get_optimizer_state_dict` creates it by running a step on zero gradients, which
    advances AdamW's step count and changes its first real update (caught by the stability-monitor test)."""
    model: dict[str, Any] = {}
    optim: dict[str, Any] = {}
    for stage, opt in zip(stages, optimizers, strict=True):
        model.update(get_model_state_dict(stage, options=_OPTS))
        if with_optim:
            optim.update(get_optimizer_state_dict(stage, opt, options=_OPTS))
    return {"model": model, "optim": optim} if with_optim else {"model": model}


def is_dcp(path: Path) -> bool:
    return (path / ".metadata").is_file()


def save_dcp(
    root: Path,
    step: int,
    stages: Sequence[nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Collective: every rank calls it. Returns the published folder."""
    final, tmp = _prepare(root, step)
    with_optim = _has_state(optimizers)  # a step-0 save (the first rollback target) has no AdamW state yet
    dcp.save(_app_state(stages, optimizers, with_optim), checkpoint_id=str(tmp))
    failpoint("parallel.after_dcp_save")
    dist.barrier()  # every rank's shards are on disk before the folder is sealed
    if dist.get_rank() == 0:
        _seal(root, tmp, final, {"step": step, "optimizer": with_optim, **state}, keep_last)
    dist.barrier()
    return final


class AsyncSaves:
    """DCP saves written in the background (`checkpoint.async_save`), sealed by rank 0 once written.

    `dcp.async_save` copies this rank's state to host memory (so training may change the weights at once), then
    plans and writes it in a background thread, with the collectives on a process group of its own: sharing the
    training's group from two threads would interleave their collectives. DCP ends a save with a gather of every
    rank's write results to rank 0, which writes `.metadata`; so once rank 0's save is done, every shard is on
    disk, and rank 0 alone seals the folder (state.json, the integrity record, the rename, keep-last) between
    two steps, as the synchronous save does after its barrier. Until then the folder is `step_N.tmp`: a kill
    leaves it unsealed, and the relaunch resumes from the save before. One save at a time: the next one, a stop,
    a rollback and the end of training first wait for it (`finish`)."""

    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo")  # collective: every rank builds it
        self.pending: tuple[Any, Path, Path, dict[str, Any], int] | None = None  # (future, tmp, final, state, keep)

    def start(
        self,
        root: Path,
        step: int,
        stages: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        state: dict[str, Any],
        keep_last: int,
    ) -> Path:
        """Collective: every rank calls it. Returns the folder the save will be sealed as."""
        self.finish()
        final, tmp = _prepare(root, step)
        with_optim = _has_state(optimizers)
        future = dcp.async_save(
            _app_state(stages, optimizers, with_optim), checkpoint_id=str(tmp), process_group=self.group
        )
        failpoint("parallel.after_async_save_started")
        self.pending = (future, tmp, final, {"step": step, "optimizer": with_optim, **state}, keep_last)
        return final

    def poll(self) -> None:
        """Between steps: seal the pending save if its write has ended (rank 0; never waits)."""
        if self.pending is not None and self.pending[0].done():
            self.finish()

    def finish(self) -> None:
        """Wait for the pending save (every rank, its own write) and seal it (rank 0). A failed write raises here."""
        if self.pending is None:
            return
        future, tmp, final, state, keep_last = self.pending
        self.pending = None
        future.result()
        if dist.get_rank() == 0:
            _seal(root=final.parent, tmp=tmp, final=final, state=state, keep_last=keep_last)


def _prepare(root: Path, step: int) -> tuple[Path, Path]:
    """Collective: a fresh `step_N.tmp` (rank 0 makes it; the barrier lets the others write into it)."""
    final, tmp = root / f"step_{step:08d}", root / f"step_{step:08d}.tmp"
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        ckpt.recover_interrupted_saves(root)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    return final, tmp


def _seal(root: Path, tmp: Path, final: Path, state: dict[str, Any], keep_last: int) -> None:
    """Rank 0, once every rank's shards are written: the JSON state, the integrity record, the rename."""
    atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))
    ckpt.publish(root, tmp, final, keep_last, fmt="dcp", hashes=False)


def load_dcp(path: Path, stages: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer]) -> dict[str, Any]:
    """Collective: restore this rank's shards (re-sharded to the current layout); the JSON state is returned."""
    problem = ckpt.verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}")
    if not is_dcp(path):
        raise CheckpointError(
            f"{path} is a one-process checkpoint; a distributed run resumes from DCP checkpoints only "
            "(start the distributed run in a new folder)"
        )
    state: dict[str, Any] = json.loads((path / "state.json").read_text(encoding="utf-8"))
    with_optim = bool(state.get("optimizer", True))
    app = _app_state(stages, optimizers, with_optim)
    dcp.load(app, checkpoint_id=str(path))
    for stage, opt in zip(stages, optimizers, strict=True):
        set_model_state_dict(stage, app["model"], options=StateDictOptions(strict=False))
        if with_optim:
            set_optimizer_state_dict(stage, opt, app["optim"], options=_OPTS)
        else:  # saved before the first update: AdamW starts afresh, as after the one-process trainer's restore
            opt.state.clear()
    return state


def consolidated_weights(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The full model weights of a DCP checkpoint folder, in the model's own layout, read in one process."""
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    cfg = from_dict(ModelConfig, state["config"]["model"])
    with torch.device("meta"):
        names = [n for n, _ in Transformer(cfg).named_parameters()]
    meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    tensors = {}
    for n in names:
        m = meta.get(f"model.{n}")
        if not isinstance(m, TensorStorageMetadata):
            raise CheckpointError(f"{path} holds no tensor model.{n}: not a checkpoint of this model")
        tensors[n] = torch.empty(m.size, dtype=m.properties.dtype)
    dcp.load({"model": tensors}, checkpoint_id=str(path), no_dist=True)
    return cfg, to_model_layout(tensors, cfg)


def consolidate(src: Path, out: Path) -> Path:
    """A DCP checkpoint (or a run folder's newest) → `out/checkpoints/step_N/` with model.safetensors in the
    model's own layout, loadable by `kamado generate`, `export`, `sft` and the evaluation commands. One process."""
    found = ckpt.find_checkpoint(src)
    if not is_dcp(found):
        raise CheckpointError(f"{found} is already a one-process checkpoint (model.safetensors): nothing to do")
    cfg, tensors = consolidated_weights(found)
    state = json.loads((found / "state.json").read_text(encoding="utf-8"))
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device="cpu")
    model.load_state_dict(tensors, strict=False)
    model.rope_cos, model.rope_sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    keep = {k: v for k, v in state.items() if k not in ("step", "layout")}
    return ckpt.save_checkpoint(out / "checkpoints", int(state["step"]), model, None, keep, keep_last=0)
