"""`slurm/train.sbatch` under a real Slurm: one torchrun on each of two nodes, a gloo rank each, meeting at the
first node's address (c10d rendezvous), a time limit's warning
(SIGUSR1 to the batch script, as `--signal=B:USR1@120` sends it) mid-run → the ranks save the step in flight, the
script requeues the job, the job starts again, resumes and finishes with the uninterrupted one-process curve."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from kamado.train import checkpoint as ckpt

from ..parallel.conftest import Runs, assert_same_curve, make_runs
from .conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS = 40  # long enough (about 1 s a step here, with the ranks' start-up) to be signalled mid-run
LONGER = [f"--train.steps={STEPS}", "--checkpoint.every=16", "--train.eval_every=0"]


def _steps(out: Path) -> list[int]:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()[:-1]  # the last may be half written
    except FileNotFoundError:
        return []
    return [json.loads(x)["step"] for x in lines]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return make_runs(tmp_path_factory.mktemp("slurm-train"))


def test_a_time_limit_warning_saves_requeues_and_the_job_finishes_the_curve(slurm, runs, tmp_path):
    single = tmp_path / "single"
    runs.train(single, *LONGER)  # the uninterrupted one-process reference
    out = tmp_path / "run"
    env = {
        **runs.env(),
        **slurm.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # torchrun: the test's own
        "KAMADO_NPROC_PER_NODE": "1",
        "KAMADO_RDZV_PORT": str(free_port()),
        "LOGLEVEL": "INFO",  # torchrun's rendezvous in the job's log, should it ever hang
    }
    log = tmp_path / "job.log"
    job = slurm.sbatch(
        f"--output={log}",
        "--nodes=2",
        str(ROOT / "slurm/train.sbatch"),
        str(runs.config),
        f"--out_dir={out}",
        "--no-progress",
        "--parallel.dp_shard=2",
        *LONGER,
        cwd=tmp_path,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not any(s >= 3 for s in _steps(out)):
        assert slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), log.read_text()[-3000:]
        assert time.monotonic() < deadline, "training did not reach step 3 in 120 s:\n" + log.read_text()[-3000:]
        time.sleep(0.1)
    slurm.run("scancel", "--batch", "--signal=USR1", str(job))  # what Slurm sends 120 s before the time limit
    state = slurm.wait(job, timeout=300, states=("COMPLETED", "FAILED"))
    text = log.read_text()
    assert state == "COMPLETED", f"{state}\n{text[-3000:]}"
    assert slurm.job(job)["Restarts"] == "1", text[-3000:]  # requeued once, by the script
    stopped = [line for line in text.splitlines() if line.startswith("kamado: stopped by SIGTERM after step ")]
    assert len(stopped) == 1, text[-3000:]
    step = int(stopped[0].split()[6])
    assert 3 <= step < STEPS, stopped
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert [e for e in events if e["event"] != "skip_update"] == [  # the requeued job went on from the stop's save
        {"step": step, "event": "stopped", "signal": "SIGTERM"},
        {"step": step, "event": "resume", "checkpoint": f"step_{step:08d}"},
    ]
    assert ckpt.latest_checkpoint(out / "checkpoints") == out / "checkpoints" / f"step_{STEPS:08d}"
    assert_same_curve(runs.metrics(out), runs.metrics(single), what=f"stopped at step {step}, requeued")
