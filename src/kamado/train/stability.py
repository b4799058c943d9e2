"""Loss-spike monitor: skip bad updates, roll back after repeated spikes.

PLaMo-100B (§4) reports loss spikes as the main threat to a long pre-training run; the usual remedy (PaLM §5.1)
is to restart from a checkpoint before the spike and skip the batches that were being consumed around it. The
monitor decides; the trainer acts:

- a non-finite loss, or a loss above mean + z·std of the last `window` accepted losses, is a *spike*: the update
  is skipped (gradients dropped) — `Verdict.SKIP`;
- `max_spikes` spikes in a row -> `Verdict.ROLLBACK`: reload the last checkpoint and skip the offending batches.
"""

from __future__ import annotations

import math
from collections import deque
from enum import Enum
from typing import Any

from kamado.config import StabilityConfig


class Verdict(Enum):
    OK = "ok"
    SKIP = "skip"
    ROLLBACK = "rollback"


class StabilityMonitor:
    def __init__(self, cfg: StabilityConfig):
        self.cfg = cfg
        self.history: deque[float] = deque(maxlen=cfg.window)
        self.consecutive = 0

    def zscore(self, loss: float) -> float:
        n = len(self.history)
        mean = sum(self.history) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / max(1, n - 1))
        return (loss - mean) / max(std, 1e-8)

    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        if len(self.history) < self.cfg.min_history:
            return False
        return self.zscore(loss) > self.cfg.z_threshold

    def check(self, loss: float) -> Verdict:
        if not self.cfg.enabled:
            return Verdict.OK
        if not self.is_spike(loss):
            self.history.append(loss)
            self.consecutive = 0
            return Verdict.OK
        self.consecutive += 1
        if self.consecutive >= self.cfg.max_spikes:
            self.consecutive = 0
            return Verdict.ROLLBACK
        return Verdict.SKIP

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque(state["history"], maxlen=self.cfg.window)
        self.consecutive = int(state["consecutive"])
