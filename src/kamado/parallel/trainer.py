"""The pre-training loop on a device mesh: the one-process `Trainer`'s loop (stability monitor, rollback, skipped
batches, callbacks, resume) with the step, the checkpoints and the evaluation made distributed.

Every rank runs the same loop. What the loop decides on — the loss the stability monitor sees, the gradient norm —
is reduced over the mesh first (averaged over data-parallel ranks, taken from the last pipeline stage), so all
ranks reach the same verdict and skip, roll back or save together. Logs and the progress bar are rank 0's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kamado.config import RunConfig
from kamado.model.loss import LossOutput, lm_loss
from kamado.parallel import checkpoint as dckpt
from kamado.parallel.clip import clip_grads
from kamado.parallel.data import rank_rows
from kamado.parallel.loss import vocab_parallel_lm_loss
from kamado.parallel.mesh import Layout
from kamado.parallel.parallelize import build_stages, precompute_fp8_scales, stage_ids
from kamado.parallel.pipeline import build_schedule, microbatches
from kamado.train import checkpoint as ckpt
from kamado.train.callbacks import Callback
from kamado.train.optim import build_optimizer, lr_at, set_lr
from kamado.train.stop import STOP_SIGNALS
from kamado.train.trainer import Batch, BatchLoader, Trainer, to_device, token_weighted


def flag_device(device: torch.device) -> torch.device:
    """Where a small host-side flag is reduced: on the CPU when the process group reduces CPU tensors (gloo, or
    kamado's default `cpu:gloo,cuda:nccl` on GPUs), else (a plain NCCL group) on the training device."""
    return torch.device("cpu") if "cpu:" in dist.get_backend_config() else device


class OptimizerGroup:
    """One AdamW per model stage (DCP names their state by the stage's parameter names), stepped together."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], after_step: Callable[[], None] | None = None):
        self.optimizers = optimizers
        self.after_step = after_step  # run once the weights have changed (FP8 all-gather: their scales)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()
        if self.after_step is not None:
            self.after_step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)


class DistributedTrainer(Trainer):
    def __init__(
        self,
        cfg: RunConfig,
        layout: Layout,
        loader: BatchLoader,
        out_dir: str | Path,
        val_batches: Callable[[], Iterable[Batch]] | None = None,
        callbacks: list[Callback] | None = None,
    ):
        self.layout, self.device = layout, layout.device
        self.stages = build_stages(cfg, layout)
        self.model = nn.ModuleList(self.stages)
        self.optimizers = [build_optimizer(s, cfg.optim) for s in self.stages]
        self.optimizer = OptimizerGroup(self.optimizers, self._fp8_scales)  # type: ignore[assignment]  # for the loop
        self.init_loop(cfg, loader, out_dir, val_batches, callbacks)
        self.async_saves = dckpt.AsyncSaves() if cfg.checkpoint.async_save else None
        self.world_size = dist.get_world_size()
        self.tp_group = layout.group("tp") if layout.tp > 1 else None
        self.pp_group = layout.group("pp") if layout.pp > 1 else None
        self.has_first = any(s.first for s in self.stages)
        self.has_last = any(s.last for s in self.stages)
        self.rows = rank_rows(cfg.train.batch_size, layout.dp_rank, layout.dp)
        self.schedule = None
        self._records: list[LossOutput] = []
        self._loss: Callable[..., LossOutput] = vocab_parallel_lm_loss
        if cfg.parallel.compile and layout.tp == 1:  # the head's loss compiled too (one graph, no float32 copies)
            compiled = torch.compile(lm_loss)
            self._loss = lambda logits, y, coef, _group: compiled(logits, y, coef)
        if layout.pp > 1:
            local = self.rows.stop - self.rows.start
            self.n_micro = microbatches(cfg, local)
            self.schedule = build_schedule(cfg, layout, self.stages, self.n_micro, self._pipeline_loss)

    # ---------------------------------------------------------------------------------------------- state
    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "layout": self.layout.describe()}

    def resume_changes(self, state: dict[str, Any]) -> dict[str, list[Any]]:
        changed = super().resume_changes(state)
        if state.get("layout", self.layout.describe()) != self.layout.describe():  # DCP reshards on load
            changed["layout"] = [state["layout"], self.layout.describe()]
        return changed

    def write_checkpoint(self, state: dict[str, Any]) -> Path:
        args = (self.ckpt_dir, self.step, self.stages, self.optimizers, state, self.cfg.checkpoint.keep_last)
        if self.async_saves is not None:
            return self.async_saves.start(*args)
        return dckpt.save_dcp(*args)

    def poll_saves(self) -> None:
        if self.async_saves is not None:
            self.async_saves.poll()

    def finish_saves(self) -> None:
        if self.async_saves is not None:
            self.async_saves.finish()

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        state = dckpt.load_dcp(path, self.stages, self.optimizers)
        self._fp8_scales()  # the loaded weights' scales, not those of the weights they replaced
        return state

    def _fp8_scales(self) -> None:
        """With FP8 all-gather, every block's weight scale (amax) for the next all-gather, in one reduction
        (torchao's `precompute_float8_dynamic_scale_for_fsdp`, as torchtitan calls it after each step)."""
        if self.cfg.parallel.fp8_all_gather:
            precompute_fp8_scales(self.stages)

    def truncate_metrics(self) -> None:
        if dist.get_rank() == 0:  # the rank that logs
            super().truncate_metrics()

    def recover_saves(self) -> None:
        if dist.get_rank() == 0:
            ckpt.recover_interrupted_saves(self.ckpt_dir)
        dist.barrier()

    def latest_checkpoint(self, quarantine: bool = False) -> Path | None:
        """Rank 0 chooses (and quarantines); every rank then loads the same folder. A save still being written
        is completed first: it may be the newest."""
        self.finish_saves()
        found = [ckpt.latest_checkpoint(self.ckpt_dir, quarantine) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(found, src=0)  # a path string, never untrusted bytes
        return found[0]

    def stop_requested(self) -> str | None:
        """A stop signal any rank has received, on every rank: the save that follows is collective, so all ranks
        must stop after the same step (one 1-element all-reduce a step, over gloo on the host where the
        process group has a CPU backend, so the GPU never waits for it)."""
        names = [s.name for s in STOP_SIGNALS]
        local = super().stop_requested()
        code = torch.tensor([names.index(local) + 1 if local else 0], device=flag_device(self.device))
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        agreed = int(code)
        return names[agreed - 1] if agreed else None

    # ---------------------------------------------------------------------------------------------- steps
    def _pipeline_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self._loss(logits, targets, self.cfg.train.z_loss, self.tp_group)
        self._records.append(out)
        return out.loss / (self.n_micro * self.cfg.train.grad_accum)

    def _micro_step(self, x: torch.Tensor, y: torch.Tensor, backward: bool) -> None:
        """One micro-batch through this rank's stages; its LossOutputs land in `_records` (last stage only)."""
        if self.schedule is None:
            [stage] = self.stages
            out = self._loss(stage(x), y, self.cfg.train.z_loss if backward else 0.0, self.tp_group)
            self._records.append(out)
            if backward:
                (out.loss / self.cfg.train.grad_accum).backward()
            return
        if not backward:
            self._pipeline_forward(x, y)
            return
        args = (x,) if self.has_first else ()
        target = y if self.has_last else None
        before = len(self._records)
        self.schedule.step(*args, target=target)
        # the first step also runs the loss once on the stage's shape-inference output (uninitialised values)
        del self._records[before : len(self._records) - (self.n_micro if self.has_last else 0)]

    def _pipeline_forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Validation under pipeline parallelism: the whole batch through every stage in order, the hidden states
        sent from rank to rank. (torch's `schedule.eval` fails for the V-shaped ZBV placement, torch 2.13.)"""
        pp_rank, ids = self.layout.coord("pp"), stage_ids(self.cfg, self.layout.coord("pp"))
        owner = {i: r for r in range(self.layout.pp) for i in stage_ids(self.cfg, r)}
        mine = dict(zip(ids, self.stages, strict=True))
        h = x
        for i in range(self.cfg.parallel.n_stages):
            if owner[i] != pp_rank:
                continue
            if i > 0 and owner[i - 1] != pp_rank:  # the previous stage is on another rank
                stage = mine[i]
                h = torch.empty(
                    (x.shape[0], x.shape[1] // stage.seq_shards, self.cfg.model.d_model),
                    dtype=torch.bfloat16 if self.cfg.train.dtype == "bf16" else torch.float32,
                    device=self.device,
                )
                dist.recv(h, group=self.pp_group, group_src=owner[i - 1])
            h = mine[i](h)
            if i + 1 < self.cfg.parallel.n_stages and owner[i + 1] != pp_rank:
                dist.send(h.contiguous(), group=self.pp_group, group_dst=owner[i + 1])
        if self.has_last:
            self._records.append(vocab_parallel_lm_loss(h, y, 0.0, self.tp_group))

    def _reduced(self, sums: torch.Tensor) -> torch.Tensor:
        """Per-rank sums → the same mean on every rank: from the last pipeline stage, over data-parallel ranks."""
        if self.pp_group is not None:
            dist.all_reduce(sums, group=self.pp_group)  # only the last stage's ranks contribute
        dist.all_reduce(sums, group=self.layout.dp_group)
        return sums / self.layout.dp

    def _batch(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        if x.shape[0] == self.cfg.train.batch_size and self.layout.dp > 1:  # a global batch (validation)
            x, y = x[self.rows], y[self.rows]
        return to_device(x, self.device), to_device(y, self.device)

    def train_step(self) -> dict[str, Any]:
        lr = lr_at(self.step, self.cfg.train.steps, self.cfg.optim.lr, self.cfg.schedule)
        set_lr(self.optimizer, lr)
        self.model.train()
        self._records = []
        for _ in range(self.cfg.train.grad_accum):
            self._micro_step(*self._batch(self.loader.next_batch()), backward=True)
        keys = ("loss", "ce", "z_loss", "log_z")  # log_z: every kamado loss sets it
        if self._records:  # the mean over this rank's micro-batches, still on the device
            rows = [torch.stack([getattr(r, k).detach().reshape(()) for k in keys]) for r in self._records]
            means = torch.stack(rows).to(torch.float64).mean(0)
        else:  # a pipeline rank without the last stage: contributes zeros to the reduction
            means = torch.zeros(len(keys), dtype=torch.float64, device=self.device)
        reduced = self._reduced(means)  # NCCL reduces device tensors only
        params = [p for s in self.stages for p in s.parameters()]
        norm = clip_grads(params, self.cfg.optim.grad_clip, self.pp_group)
        # the step's one wait for the device: every logged value and the norm the loop decides on, in one copy
        loss, ce, z, log_z, norm_value = torch.cat([reduced, norm.reshape(1).to(reduced)]).tolist()
        grad_norm = norm_value if math.isfinite(norm_value) else math.inf
        return {"loss": loss, "ce": ce, "z_loss": z, "log_z": log_z, "lr": lr, "grad_norm": grad_norm}

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        if self.val_batches is None:
            return None
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # Σ ce·tokens, Σ tokens (this rank's rows)
        for batch in self.val_batches():
            x, y = self._batch(batch)
            if self.schedule is not None and x.shape[0] % self.n_micro:
                continue  # a short last batch cannot be cut into the pipeline's micro-batches
            self._records = []
            self._micro_step(x, y, backward=False)
            for r in self._records:
                total += token_weighted(r).to(self.device)
        if self.pp_group is not None:
            dist.all_reduce(total, group=self.pp_group)
        dist.all_reduce(total, group=self.layout.dp_group)
        ce_sum, n = total.tolist()
        if n == 0:
            return None
        return {"step": self.step, "val_ce": ce_sum / n, "val_ppl": math.exp(min(ce_sum / n, 50.0))}
