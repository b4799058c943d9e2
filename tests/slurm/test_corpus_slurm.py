"""`kamado corpus run --executor slurm` on a real two-node Slurm cluster: the command submits the stages as job
arrays, each waiting for the one before, then itself; the same command again while they are queued is refused; the
shards and the funnel equal those of the local executor, and a rerun once everything is done submits nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..corpus.test_corpus_kill_ray import ARGS, PRESET, ROOT, command, shards

pytestmark = pytest.mark.slow


def test_the_corpus_on_slurm_equals_the_local_run(slurm, tmp_path: Path) -> None:
    local = tmp_path / "local"
    subprocess.run([*command(local), *ARGS], check=True, capture_output=True, timeout=300)
    out = tmp_path / "slurm"
    env = {**slurm.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    on_slurm = [*command(out), *ARGS, "--executor", "slurm", "--slurm.partition=debug"]
    r = subprocess.run(on_slurm, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    said = re.search(r"submitted Slurm jobs ([\d, ]+):", r.stdout)
    assert said, r.stdout[-2000:]
    jobs = [int(j) for j in said[1].split(", ")]
    assert len(jobs) == 7  # extract, 5 dedup stages, then the command again
    assert not (out / "shards").exists()  # the submitting process writes no output of its own
    twice = subprocess.run(on_slurm, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert twice.returncode == 2, twice.stderr[-2000:]  # not while the first submission's jobs are queued
    assert twice.stderr.strip().splitlines()[-1].startswith(f"kamado: error: {out}: Slurm jobs "), twice.stderr

    state = slurm.wait(jobs[-1], timeout=600)
    finish = "".join(p.read_text() for p in (out / "work/logs").glob("finish_*.out"))
    assert state == "COMPLETED", f"{state}\n{slurm.run('squeue')}\n{finish[-3000:]}"
    assert shards(out) == shards(local)
    got, want = (json.loads((d / "corpus_summary.json").read_text()) for d in (out, local))
    assert got["stats"] == want["stats"]  # the same funnel, counted from the Slurm tasks' stats
    assert got["executor"] == "slurm" and set(got["stage_seconds"]) == set(want["stage_seconds"])
    assert "task-seconds" in (out / "corpus_report.md").read_text()

    again = subprocess.run(on_slurm, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "submitted" not in again.stdout, again.stdout + again.stderr[-2000:]
    assert "documents →" in again.stdout


def test_an_extraction_that_keeps_nothing_ends_with_an_empty_corpus_on_slurm(slurm, tmp_path: Path) -> None:
    """The dedup stages are submitted before extraction has run, so on Slurm they must get through an empty
    extraction (a crawl with no Japanese page) and the corpus ends empty, as the local run does."""
    warcs = tmp_path / "warcs"
    warcs.mkdir()
    shutil.copy(ROOT / "samples" / "warc" / "cc-multilingual-no-ja.warc.gz", warcs)
    out = tmp_path / "slurm"
    env = {**slurm.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    args = [str(warcs), "--out", str(out), "--config", str(PRESET), "--executor", "slurm", "--slurm.partition=debug"]
    r = subprocess.run(
        [sys.executable, "-m", "kamado.cli", "corpus", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    said = re.search(r"submitted Slurm jobs ([\d, ]+):", r.stdout)
    assert said, r.stdout[-2000:]
    jobs = [int(j) for j in said[1].split(", ")]
    state = slurm.wait_chain(jobs)
    logs = "".join(p.read_text() for p in (out / "work/logs").rglob("*.out"))
    assert state == "COMPLETED", f"{state}\n{logs[-3000:]}"
    summary = json.loads((out / "corpus_summary.json").read_text())
    assert summary["documents_out"] == 0 and summary["stats"]["extract"]  # extraction ran, and kept nothing
    assert json.loads((out / "shards" / "manifest.json").read_text())["documents"] == 0
