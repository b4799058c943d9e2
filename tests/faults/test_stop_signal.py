"""SIGTERM or SIGUSR1 to a real `kamado run` while it pre-trains, as Slurm sends at a time limit, on `scancel` or on
preemption: the run saves the step in flight, exits with status 75 and one line, and the same command then ends
with the uninterrupted run's results bit for bit (`kamado.train.stop`)."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from kamado.train import checkpoint as ckpt
from kamado.train.stop import EXIT_STOPPED

pytestmark = pytest.mark.slow

NO_PERIODIC_SAVES = "--checkpoint.every=0"  # so the stop's checkpoint can only come from the stop


def _last_logged_step(path: Path) -> int:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x).get("step", 0) for x in lines[:-1]]  # the last line may be half written
    return max(steps, default=0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_stop_signal_saves_the_step_in_flight_and_the_rerun_matches(micro, reference, tmp_path, fault_counts, sig):
    out = tmp_path / "run"
    p = micro.start(out, NO_PERIODIC_SAVES)
    deadline = time.monotonic() + 300
    while _last_logged_step(out / "metrics.jsonl") < 6:
        assert p.poll() is None, f"the run ended (status {p.returncode}) before it could be signalled"
        assert time.monotonic() < deadline, "pre-training did not reach step 6 in 300 s"
        time.sleep(0.02)
    p.send_signal(sig)  # the kamado process alone, as a scheduler signals each process of a job step
    _, err = p.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert p.returncode == EXIT_STOPPED, lines[-5:]
    said = re.fullmatch(
        rf"kamado: stopped by {sig.name} after step (\d+) \(saved (.+)\); run the same command again to continue",
        lines[-1],
    )
    assert said, lines[-5:]
    step, saved = int(said[1]), Path(said[2])
    assert 6 <= step < 24
    assert saved == out / "checkpoints" / f"step_{step:08d}"
    assert ckpt.latest_checkpoint(out / "checkpoints") == saved  # sealed and intact: what a rerun resumes from
    assert json.loads((saved / "state.json").read_text())["step"] == step
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert events[-1] == {"step": step, "event": "stopped", "signal": sig.name}
    assert _last_logged_step(out / "metrics.jsonl") <= step  # nothing logged past the saved step

    micro.ok(out, NO_PERIODIC_SAVES)
    micro.assert_same(micro.outcome(out), reference[1], f"{sig.name} at step {step}")
    fault_counts["stops survived"] += 1
