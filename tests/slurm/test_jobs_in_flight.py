"""The guard that keeps `kamado corpus run --executor slurm` from submitting a second copy of its tasks, against a
real Slurm: jobs still queued are named; jobs Slurm has ended or forgotten are not in flight; a Slurm that cannot be
asked is an error, never taken as "nothing in flight"."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kamado.corpus.slurm import check_no_jobs_in_flight
from kamado.errors import ConfigError

FORGOTTEN = 999_999  # an id this cluster never gave (or one it has purged after MinJobAge)


def _record(work: Path, jobs: list[int]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "slurm_jobs.json").write_text(json.dumps(jobs) + "\n")


def test_queued_jobs_are_named_ended_and_forgotten_ones_are_not(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    held = slurm.sbatch("--hold", "--wrap=true", f"--output={tmp_path}/held.out")
    work = tmp_path / "work"
    try:
        _record(work, [held, FORGOTTEN])
        with pytest.raises(ConfigError, match=rf"Slurm jobs {held} of the last submission are still queued") as e:
            check_no_jobs_in_flight(work)
        assert str(FORGOTTEN) not in str(e.value)
        _record(work, [FORGOTTEN])  # alone, squeue says "Invalid job id specified" and exits 1
        check_no_jobs_in_flight(work)
        _record(work, [FORGOTTEN, held])
        monkeypatch.setenv("SLURM_JOB_ID", str(held))  # the finishing job checks the others, not itself
        check_no_jobs_in_flight(work)
        monkeypatch.delenv("SLURM_JOB_ID")
    finally:
        slurm.run("scancel", str(held))
    assert slurm.wait(held, timeout=60) == "CANCELLED"
    _record(work, [held])
    check_no_jobs_in_flight(work)  # ended: still known to Slurm, no longer in flight


def test_a_slurm_that_cannot_be_asked_is_an_error(slurm, tmp_path, monkeypatch):
    from .conftest import free_port

    conf = Path(slurm.env["SLURM_CONF"]).read_text()
    dead = tmp_path / "slurm.conf"
    # nothing listens on the port; MessageTimeout=1 makes squeue give up at once instead of after ~18 s
    dead.write_text(re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={free_port()}", conf) + "MessageTimeout=1\n")
    monkeypatch.setenv("SLURM_CONF", str(dead))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _record(tmp_path / "work", [FORGOTTEN])
    with pytest.raises(ConfigError, match="could not ask Slurm") as e:
        check_no_jobs_in_flight(tmp_path / "work")
    assert "Unable to contact slurm controller" in str(e.value)
