"""The corpus pipeline on Slurm: what datatrove's SlurmPipelineExecutor leaves to kamado.

datatrove submits each stage as a job array that waits for the previous stage (`kamado.corpus.pipeline._executor`)
and returns at once. The last steps, the reshard and the report, need every stage done, so `kamado corpus run`
submits itself after the last stage: that job runs the same command, finds every task complete (datatrove's
completion markers), and writes the shards and the report on a compute node. A failed task leaves that job waiting
(`squeue` shows DependencyNeverSatisfied): cancel it and run the same command again, which submits only the tasks
that did not finish. The submitted job ids are kept in `work/slurm_jobs.json`, and the command refuses to submit
again while any of them is still queued or running: two copies of a task would write the same files.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kamado.atomic import atomic_write_text
from kamado.corpus.config import CorpusConfig
from kamado.errors import ConfigError

IN_FLIGHT = "PENDING,RUNNING,CONFIGURING,SUSPENDED,REQUEUED,RESIZING"


def submit_after(cfg: CorpusConfig, job_id: int, command: Sequence[str], logs: Path) -> int:
    """Submit `command` to start once job `job_id` has ended well; returns the new job's id."""
    s = cfg.slurm
    run = shlex.join(command)
    args = [
        "sbatch",
        "--parsable",
        f"--dependency=afterok:{job_id}",
        "--job-name=kamado-corpus-finish",
        f"--partition={s.partition}",
        f"--time={s.time}",
        f"--cpus-per-task={s.cpus_per_task}",
        f"--mem-per-cpu={s.mem_per_cpu_gb}G",
        *([f"--qos={s.qos}"] if s.qos else []),
        f"--output={logs.resolve()}/finish_%j.out",
        f"--wrap={s.env_command + ' && ' if s.env_command else ''}{run}",
    ]
    try:
        r = subprocess.run(args, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ConfigError("executor 'slurm': sbatch is not on PATH (run on a Slurm login node)") from None
    if r.returncode != 0:
        raise ConfigError(f"sbatch refused the corpus's last job: {r.stderr.strip()}")
    return int(r.stdout.strip().split(";")[0])


def task_seconds(logging_dir: Path) -> float:
    """The step time of a stage's finished tasks, summed (datatrove's `stats/<task>.json`; a step that saw no
    document has `time_stats` 0)."""
    total = 0.0
    for path in (logging_dir / "stats").glob("*.json"):
        for step in json.loads(path.read_text()):
            t = step.get("time_stats")
            total += t.get("total", 0.0) if isinstance(t, dict) else 0.0
    return total


def record_jobs(work: Path, jobs: list[int]) -> None:
    atomic_write_text(work / "slurm_jobs.json", json.dumps(jobs) + "\n")


def check_no_jobs_in_flight(work: Path) -> None:
    """ConfigError when a job this folder's last submission made is still queued or running (this job aside: the
    last one runs the command itself)."""
    path = work / "slurm_jobs.json"
    if not path.is_file():
        return
    mine = os.environ.get("SLURM_JOB_ID")
    jobs = [str(j) for j in json.loads(path.read_text()) if str(j) != mine]
    if not jobs:
        return
    try:
        r = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-t", IN_FLIGHT, "-j", ",".join(jobs)], capture_output=True, text=True
        )
    except FileNotFoundError:
        raise ConfigError("executor 'slurm': squeue is not on PATH (run on a Slurm login node)") from None
    if r.returncode != 0 and "Invalid job id" not in r.stderr:  # forgotten ids alone: exit 1 and that message
        raise ConfigError(  # an unreachable controller must not read as "nothing in flight": that would submit twice
            f"could not ask Slurm whether jobs {', '.join(jobs)} of the last submission are still queued or running "
            f"(squeue: {r.stderr.strip() or f'exit status {r.returncode}'}); run the same command again once "
            "squeue answers"
        )
    busy = r.stdout.split()  # jobs Slurm has ended or forgotten are not listed: they are not in flight
    if busy:
        raise ConfigError(
            f"{work.parent}: Slurm jobs {', '.join(busy)} of the last submission are still queued or running; wait "
            f"for them (`squeue --me`) or cancel them (`scancel {' '.join(busy)}`), then run the same command again"
        )
