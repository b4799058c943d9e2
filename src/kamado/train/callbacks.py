"""Cross-cutting concerns of a training run, one small callback each (the OLMo-core pattern).

The trainer calls, in order: `on_train_start`, then per optimizer step `on_step_end(metrics)`, `on_eval_end`
after each validation, `on_step_complete` once the step and its evaluation are done (checkpoints are saved there,
so a run killed after a save never misses that step's evaluation), `on_event` for stability events (skips,
rollbacks), and `on_train_end`. Callbacks may
add keys to `metrics` (the speed monitor adds tokens/s and MFU before the logger writes them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kamado.atomic import atomic_write_text
from kamado.faults import failpoint
from kamado.train.speed import SpeedMeter, flops_per_token, measure_matmul_peak

if TYPE_CHECKING:
    from kamado.train.trainer import Trainer


class Callback:
    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_step_complete(self, trainer: Trainer) -> None: ...

    def on_event(self, trainer: Trainer, event: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None:
        """The loop ended: at `train.steps`, or stopped early by a signal after saving (`kamado.train.stop`)."""


class SpeedMonitor(Callback):
    """tokens/s and MFU (formula in `kamado.train.speed`) on logging steps."""

    def on_train_start(self, trainer: Trainer) -> None:
        cfg = trainer.cfg
        peak = cfg.train.peak_flops
        if peak <= 0:
            dtype = torch.bfloat16 if cfg.train.dtype == "bf16" else torch.float32
            peak = measure_matmul_peak(dtype, device=trainer.device)
        trainer.peak_flops = peak
        devices = getattr(trainer, "world_size", 1)  # a distributed run's tokens/s is over all its devices
        self.meter = SpeedMeter(flops_per_token(cfg.model, cfg.data.seq_len), peak * devices)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.meter.add(trainer.tokens_per_step)
        if trainer.step % trainer.cfg.train.log_every == 0 or trainer.step == trainer.cfg.train.steps:
            metrics.update(self.meter.read())


def _row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop rows with step > max_step (after a resume or rollback), atomically. Torn rows — what a kill or a full
    disk leaves in the middle of an append — are dropped too, with a warning."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    rows = [(line, _row(line)) for line in lines]
    torn = sum(r is None for _, r in rows)
    if torn:
        print(f"kamado: warning: {path}: dropped {torn} torn line(s) left by an interrupted write", file=sys.stderr)
    keep = [line for line, r in rows if r is not None and r.get("step", 0) <= max_step]
    atomic_write_text(path, "".join(r + "\n" for r in keep))


class MetricsLogger(Callback):
    """JSONL (metrics.jsonl, events.jsonl) and TensorBoard scalars in the run folder."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.tensorboard = tensorboard
        self.tb: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(self.out_dir / "metrics.jsonl", trainer.step)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=trainer.step + 1)

    def _write(self, name: str, row: dict[str, Any]) -> None:
        with open(self.out_dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._write("metrics.jsonl", metrics)
        if self.tb is not None and "tokens_per_s" in metrics:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(f"train/{k}", v, metrics["step"])

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._write("metrics.jsonl", metrics)
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "step":
                    self.tb.add_scalar(f"val/{k}", v, metrics["step"])

    def on_event(self, trainer: Trainer, event: dict[str, Any]) -> None:
        self._write("events.jsonl", event)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.tb is not None:
            self.tb.close()


class ProgressBar(Callback):
    """A rich progress bar with the latest loss, tokens/s and MFU."""

    def on_train_start(self, trainer: Trainer) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.task = self.progress.add_task("train", total=trainer.cfg.train.steps, completed=trainer.step, info="")
        self.progress.start()

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        info = f"loss {metrics['loss']:.3f}"
        if "tokens_per_s" in metrics:
            info += f" | {metrics['tokens_per_s']:.0f} tok/s | MFU {100 * metrics['mfu']:.1f}%"
        self.progress.update(self.task, completed=trainer.step, info=info)

    def on_event(self, trainer: Trainer, event: dict[str, Any]) -> None:
        rest = {k: v for k, v in event.items() if k != "event"}  # stability verdicts, a resume, a stop
        self.progress.console.print(f"[yellow]{event['event']}: {rest}")

    def on_train_end(self, trainer: Trainer) -> None:
        self.progress.stop()


class Checkpointer(Callback):
    """Saves every `checkpoint.every` steps and at the end (see `kamado.train.checkpoint`)."""

    def on_step_complete(self, trainer: Trainer) -> None:
        every = trainer.cfg.checkpoint.every
        if every > 0 and trainer.step % every == 0 and trainer.step < trainer.cfg.train.steps:
            trainer.save_checkpoint()
            failpoint("train.after_checkpoint")

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.saved_step != trainer.step:  # a rerun of a finished run has nothing new to save
            trainer.save_checkpoint()
