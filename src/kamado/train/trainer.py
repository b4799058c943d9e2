"""Single-process pre-training loop.

One optimizer step = `grad_accum` micro-batches, each under bf16 autocast, loss = CE + Z-loss (float32), then
global-norm clipping, AdamW and the schedule's learning rate. The stability monitor looks at every step's loss
before the update is applied (skip / roll back, see `kamado.train.stability`). Everything a resumed run needs to
continue with the exact same losses (weights, AdamW moments, RNG, loader position, monitor history, skipped
batches) goes into the checkpoint. Distributed training wraps the same model and reuses this loop's pieces.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from kamado.config import RunConfig, to_dict
from kamado.errors import ConfigError
from kamado.faults import failpoint
from kamado.model.loss import LossOutput
from kamado.train import checkpoint as ckpt
from kamado.train.callbacks import Callback, truncate_jsonl
from kamado.train.optim import build_optimizer, lr_at, set_lr
from kamado.train.stability import StabilityMonitor, Verdict
from kamado.train.stop import Stopped, StopRequest

Batch = tuple[torch.Tensor, ...]  # (x, y) for pre-training; SFT adds segments, DPO has its own


class BatchLoader(Protocol):
    def next_batch(self) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def training_device(name: str) -> torch.device:
    """`train.device` as a torch.device; ConfigError when it is malformed or not present on this machine."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device = '{name}': expected 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device = '{name}': only 'cpu' and 'cuda' are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = '{name}', but torch sees no CUDA device here (use --train.device=cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"train.device = '{name}': only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def config_changes(then: dict[str, Any], now: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """Dotted keys whose values differ between two config dicts (lists, like data.sources, compared whole)."""
    out: dict[str, list[Any]] = {}
    for key in sorted(set(then) | set(now)):
        a, b = then.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(config_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = [a, b]
    return out


def token_weighted(out: LossOutput) -> torch.Tensor:
    """[mean CE · scored tokens, scored tokens] of one batch, in float64, where the loss was computed: summed
    over batches and divided at the end, it is the mean over all tokens, without a wait per batch."""
    count = out.token_count.to(device=out.ce.device, dtype=torch.float64)
    return torch.stack([out.ce.detach().to(torch.float64) * count, count])


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch tensor onto the training device without waiting for the GPU: a plain `.to("cuda")` of pageable
    memory synchronises the stream after the copy, so every micro-batch would wait for all the work queued before
    it. Pinned first (a copy of a few hundred KB), the copy is queued like a kernel."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def host_values(metrics: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """A step's metrics as Python floats, the tensors among them copied from the device in one transfer: each
    `float(t)` of a CUDA tensor waits for the GPU, and one wait per value per micro-batch left the GPU idle while
    the host caught up. Values that are numbers already pass through."""
    keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in metrics.items() if not isinstance(v, torch.Tensor)}
    if keys:
        tensors = [metrics[k].detach().reshape(()).to(torch.float64) for k in keys]  # type: ignore[union-attr]
        out.update(zip(keys, torch.stack(tensors).tolist(), strict=True))
    return {k: out[k] for k in metrics}


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        loader: BatchLoader,
        out_dir: str | Path,
        val_batches: Callable[[], Iterable[Batch]] | None = None,
        callbacks: list[Callback] | None = None,
    ):
        self.device = training_device(cfg.train.device)
        self.model = model.to(self.device)  # before the optimizer, whose state follows the parameters
        self.optimizer = build_optimizer(model, cfg.optim)
        self.forward = torch.compile(model) if cfg.train.compile else model
        self.init_loop(cfg, loader, out_dir, val_batches, callbacks)

    def init_loop(
        self,
        cfg: RunConfig,
        loader: BatchLoader,
        out_dir: str | Path,
        val_batches: Callable[[], Iterable[Batch]] | None,
        callbacks: list[Callback] | None,
    ) -> None:
        """The loop's state, whatever holds the model (this class, or the distributed trainer's stages)."""
        if cfg.train.dtype not in ("bf16", "fp32"):
            raise ConfigError(f"train.dtype must be 'bf16' or 'fp32', got '{cfg.train.dtype}'")
        self.cfg = cfg
        self.loader = loader
        self.val_batches = val_batches
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.callbacks = callbacks or []
        self.monitor = StabilityMonitor(cfg.stability)
        self.step = 0
        self.skip_positions: set[str] = set()  # loader positions whose batches caused a rollback
        self.pending_spikes: list[str] = []
        self.last_eval: dict[str, Any] | None = None  # the newest validation result (kept in checkpoints)
        self.saved_step = -1  # the step of the checkpoint the state in memory equals (saved or restored)
        self.restored_state: dict[str, Any] = {}  # the JSON state of the checkpoint restored last
        self.stop_request = StopRequest()  # SIGTERM / SIGUSR1 while `fit` runs
        self.peak_flops = cfg.train.peak_flops
        self.tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)

    # ---------------------------------------------------------------------------------------------- state
    def loader_position(self) -> str:
        return json.dumps(self.loader.state_dict(), sort_keys=True)

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds beside the tensors (JSON)."""
        return {
            "loader": self.loader.state_dict(),
            "stability": self.monitor.state_dict(),
            "skip_positions": sorted(self.skip_positions),
            "last_eval": self.last_eval,
            "config": to_dict(self.cfg),
        }

    def resume_changes(self, state: dict[str, Any]) -> dict[str, list[Any]]:
        """The settings this run has that differ from those of the run that saved `state`: {"train.steps": [then,
        now], ...}. A resume may change what keeps the model's shapes and the data stream (those are refused
        earlier, `check_same_shape` and the loader); the rest is allowed, and listed in the resume event."""
        now = json.loads(json.dumps(to_dict(self.cfg)))  # as it would be saved: tuples become lists
        return config_changes(state.get("config") or {}, now)

    def poll_saves(self) -> None:
        """Between steps: complete a checkpoint written in the background whose write has ended (DCP, async)."""

    def finish_saves(self) -> None:
        """Wait for a checkpoint still being written in the background, and complete it. The one-process trainer
        writes its checkpoints before `save_checkpoint` returns."""

    def save_checkpoint(self) -> Path:
        path = self.write_checkpoint(self.checkpoint_state())
        self.saved_step = self.step
        return path

    def write_checkpoint(self, state: dict[str, Any]) -> Path:
        return ckpt.save_checkpoint(
            self.ckpt_dir, self.step, self.model, self.optimizer, state, self.cfg.checkpoint.keep_last
        )

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        """Restore the tensors (model, optimizer, RNG) in place; return the JSON state."""
        return ckpt.load_checkpoint(path, self.model, self.optimizer)

    def restore(self, path: Path) -> None:
        ckpt.check_same_shape(path, self.cfg.model)
        state = self.read_checkpoint(path)
        self.restored_state = state
        self.step = int(state["step"])
        self.loader.load_state_dict(state["loader"])
        self.monitor.load_state_dict(state["stability"])
        self.skip_positions |= set(state["skip_positions"])
        self.last_eval = state.get("last_eval")
        self.pending_spikes = []
        self.saved_step = self.step

    def truncate_metrics(self) -> None:
        """After a rollback: the logged steps past the restored one are gone from metrics.jsonl."""
        truncate_jsonl(self.out_dir / "metrics.jsonl", self.step)

    def recover_saves(self) -> None:
        ckpt.recover_interrupted_saves(self.ckpt_dir)

    def latest_checkpoint(self, quarantine: bool = False) -> Path | None:
        return ckpt.latest_checkpoint(self.ckpt_dir, quarantine=quarantine)

    # ---------------------------------------------------------------------------------------------- steps
    def autocast(self) -> Any:
        if self.cfg.train.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def lm_output(self, batch: tuple[torch.Tensor, ...], z_loss_coef: float = 0.0) -> LossOutput:
        """The language-model loss of (x, y), or of packed sequences (x, y, segments) as SFT batches them."""
        x, y, *segments = batch
        return self.forward(x, y, z_loss_coef=z_loss_coef, segments=segments[0] if segments else None)

    def objective(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise on one micro-batch and its metrics (0-d tensors, still on the device: the step
        reads them all at once, `host_values`); post-training trainers replace it (DPO)."""
        out = self.lm_output(batch, z_loss_coef=self.cfg.train.z_loss)
        metrics = {"loss": out.loss.detach(), "ce": out.ce.detach(), "z_loss": out.z_loss.detach()}
        if out.log_z is not None:
            metrics["log_z"] = out.log_z.detach()
        return out.loss, metrics

    def forward_backward(self, *batch: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = tuple(to_device(t, self.device) for t in batch)
        with self.autocast():
            loss, metrics = self.objective(batch)
        (loss / self.cfg.train.grad_accum).backward()
        return metrics

    def train_step(self) -> dict[str, Any]:
        lr = lr_at(self.step, self.cfg.train.steps, self.cfg.optim.lr, self.cfg.schedule)
        set_lr(self.optimizer, lr)
        self.model.train()
        sums: dict[str, torch.Tensor | float] = {}  # the micro-batches' mean, in float64 (tensors stay on the device)
        for _ in range(self.cfg.train.grad_accum):
            for k, v in self.forward_backward(*self.loader.next_batch()).items():
                part = (v.detach().to(torch.float64) if isinstance(v, torch.Tensor) else v) / self.cfg.train.grad_accum
                sums[k] = sums[k] + part if k in sums else part
        clip = self.cfg.optim.grad_clip
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        return {**host_values({**sums, "grad_norm": norm}), "lr": lr}

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        if self.val_batches is None:
            return None
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # Σ ce·tokens, Σ tokens: read once, below
        for batch in self.val_batches():  # the factory decides how many batches (train.eval_batches per source)
            with self.autocast():
                out = self.lm_output(tuple(to_device(t, self.device) for t in batch))
            sums += token_weighted(out).to(self.device)
        total, n = sums.tolist()
        if n == 0:
            return None
        return {"step": self.step, "val_ce": total / n, "val_ppl": math.exp(min(total / n, 50.0))}

    def _emit(self, event: dict[str, Any]) -> None:
        event = {"step": self.step, **event}
        for cb in self.callbacks:
            cb.on_event(self, event)

    def stop_requested(self) -> str | None:
        """The stop signal received so far (`kamado.train.stop`); the distributed trainer agrees on it."""
        return self.stop_request.signal_name

    # ---------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        """Train to `train.steps`. SIGTERM/SIGUSR1 meanwhile: save after the current step, raise `Stopped`."""
        self.stop_request = StopRequest()  # a fresh one for every call
        with self.stop_request:
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        self.recover_saves()  # a save a kill interrupted: finish or undo it
        latest = self.latest_checkpoint(quarantine=True) if self.cfg.checkpoint.resume else None
        if latest is not None:
            self.restore(latest)
        elif self.cfg.stability.enabled:
            self.save_checkpoint()  # a rollback target before the first update
        for cb in self.callbacks:
            cb.on_train_start(self)
        if latest is not None:  # in events.jsonl: which checkpoint each (re)start went on from, and what changed
            changed = self.resume_changes(self.restored_state)
            self._emit({"event": "resume", "checkpoint": latest.name, **({"changed": changed} if changed else {})})
        while self.step < self.cfg.train.steps:
            position = self.loader_position()
            if position in self.skip_positions:
                for _ in range(self.cfg.train.grad_accum):
                    self.loader.next_batch()
                self._emit({"event": "skip_batch", "reason": "caused a rollback earlier"})
                continue
            metrics = self.train_step()
            loss = metrics["loss"] if math.isfinite(metrics["grad_norm"]) else math.nan
            verdict = self.monitor.check(loss)
            if verdict is Verdict.OK:
                self.optimizer.step()
                self.pending_spikes = []
            self.optimizer.zero_grad(set_to_none=True)
            if verdict is Verdict.SKIP:
                self.pending_spikes.append(position)
                self._emit({"event": "skip_update", "loss": metrics["loss"], "grad_norm": metrics["grad_norm"]})
            elif verdict is Verdict.ROLLBACK:
                bad = [*self.pending_spikes, position]
                target = self.latest_checkpoint()
                if target is None:
                    raise RuntimeError("stability monitor asked for a rollback but no checkpoint exists")
                self.restore(target)
                self.skip_positions |= set(bad)
                self.truncate_metrics()
                self._emit({"event": "rollback", "to_step": self.step, "skipped_batches": len(bad)})
                continue
            self.step += 1
            metrics = {"step": self.step, **metrics, "tokens": self.step * self.tokens_per_step}
            if hasattr(self.loader, "current_phase"):
                metrics["phase"] = self.loader.current_phase
            for cb in self.callbacks:
                cb.on_step_end(self, metrics)
            every = self.cfg.train.eval_every
            failpoint("train.before_eval")
            if (every > 0 and self.step % every == 0) or self.step == self.cfg.train.steps:
                result = self.evaluate()
                if result is not None:
                    self.last_eval = result
                    for cb in self.callbacks:
                        cb.on_eval_end(self, result)
            for cb in self.callbacks:  # after the evaluation, so a checkpoint never precedes its step's eval
                cb.on_step_complete(self)
            self.poll_saves()
            stop = self.stop_requested() if self.step < self.cfg.train.steps else None
            if stop is not None:
                self.stop(stop)
        for cb in self.callbacks:
            cb.on_train_end(self)
        self.finish_saves()  # the final checkpoint, if it is still being written
        return {"step": self.step, "eval": self.last_eval}

    def stop(self, signal_name: str) -> None:
        """End the run after this step: its checkpoint (unless just saved), an event in the logs, `Stopped`."""
        if self.saved_step != self.step:
            self.save_checkpoint()
        self.finish_saves()
        self._emit({"event": "stopped", "signal": signal_name})
        for cb in self.callbacks:  # the loop ends here: logs closed, progress bar stopped (nothing left to save)
            cb.on_train_end(self)
        raise Stopped(signal_name, self.step, self.ckpt_dir / f"step_{self.step:08d}")
