"""A polite stop: SIGTERM or SIGUSR1 ends a training run after the current step, with a checkpoint of that step.

Schedulers ask before they kill. Slurm sends SIGTERM at a job's time limit, on `scancel` and on preemption, then
SIGKILL `KillWait` seconds later (30 s by default); `#SBATCH --signal=USR1@120` asks two minutes ahead. torchrun
passes SIGTERM on to its workers and kills them 30 s later; Kubernetes waits `terminationGracePeriodSeconds`.
A kill costs the steps since the last checkpoint; a stop costs none, provided the step in flight and one save fit
in the grace period.

The handler only records the signal. `Trainer.fit` looks at it between steps: it saves a checkpoint of the
finished step (unless the step's own save just happened) and raises `Stopped`, which the CLI prints as one line,
exiting with status 75 (`EX_TEMPFAIL` in sysexits.h: try the same command again, which resumes from that
checkpoint). Under torchrun the checkpoint is collective, so every rank must stop at the same step: the
distributed trainer takes the flag's maximum over all ranks once per step (`DistributedTrainer.stop_requested`).
A second signal changes nothing (a torchrun worker gets SIGTERM twice under Slurm: from Slurm and from torchrun).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_STOPPED = 75  # sysexits.h EX_TEMPFAIL: "the user is invited to retry"


class Stopped(Exception):
    """Training stopped on a signal after `step`, saved in `checkpoint`; the same command continues from it."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"stopped by {signal_name} after step {step} (saved {checkpoint}); run the same command again to continue"
        )


class StopRequest:
    """While entered, the stop signals set `signal_name` instead of ending the process; leaving restores the
    previous handlers. Signal handlers belong to the main thread: entered elsewhere, it installs nothing."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
