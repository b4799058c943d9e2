"""The fault-injection suite: real processes, faults injected on purpose, fixed seeds so a failure reproduces.

Each test adds what it survived to `fault_counts` (a category -> count tally, tests/conftest.py); the totals are
printed at the end of the pytest run, e.g. `faults: kills survived 12, corruptions detected 30, ...`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

# --------------------------------------------------------------------------------------------------------------
# A micro `kamado run`: the tiny recipe shrunk to ~10 s (every stage up to the evaluation ones: web corpus, tokenizer,
# shards, training with checkpoints and evaluations, bits/char, generation, report), run as a real process.

ROOT = Path(__file__).resolve().parents[2]
MICRO = ["--train.steps=24", "--train.eval_every=6", "--checkpoint.keep_last=3"]  # on top of tests/conftest.py's SHRINK
MICRO += ['--jaster.data=""', "--judge.benches=[]"]  # the evaluation stages: tests/recipe and tests/eval run them
TIMING_KEYS = {"tokens_per_s", "mfu"}  # the only logged values that depend on the clock
# The stages before pre-training: each output folder has a completion record (kamado.completion), so a run whose
# folder holds copies of them from a finished run starts at pre-training (a kill there need not rebuild them: ~9 s).
BEFORE_PRETRAINING = ("corpus", "tokenizer", "data")


class Micro:
    """Start, kill and compare micro runs."""

    def __init__(self, shrink: list[str]):
        self.shrink = shrink

    def start(self, out: Path, *extra: str, failpoint: str = "") -> subprocess.Popen:
        env = {**os.environ, "COLUMNS": "100", "KAMADO_FAILPOINT": failpoint}
        args = [
            sys.executable,
            "-m",
            "kamado.cli",
            "run",
            "recipes/tiny.toml",
            f"--out_dir={out}",
            *self.shrink,
            *MICRO,
            *extra,
        ]
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )

    def run(self, out: Path, *extra: str, failpoint: str = "") -> subprocess.CompletedProcess:
        p = self.start(out, *extra, failpoint=failpoint)
        stdout, stderr = p.communicate(timeout=600)
        return subprocess.CompletedProcess(p.args, p.returncode, stdout.decode(), stderr.decode())

    def ok(self, out: Path, *extra: str) -> subprocess.CompletedProcess:
        r = self.run(out, *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    @staticmethod
    def copy_of(run: Path, out: Path, only: tuple[str, ...] | None = None) -> Path:
        """`out`: a copy of the finished `run` (which stays as it is), or of its outputs named in `only`."""
        if only is None:
            shutil.copytree(run, out)
        else:
            out.mkdir(parents=True)
            for name in only:
                shutil.copytree(run / name, out / name)
        return out

    @staticmethod
    def outcome(run: Path) -> dict[str, Any]:
        """Everything a finished run produced that must not depend on kills or reruns."""
        from safetensors.numpy import load_file

        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        rows = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]
        final = sorted((run / "checkpoints").glob("step_????????"))[-1]
        weights = load_file(str(final / "model.safetensors"))
        summary = json.loads((run / "summary.json").read_text())
        return {
            "metrics": rows,
            "final_step": final.name,
            "weights": {k: v.tobytes() for k, v in weights.items()},
            "bits_per_char": summary["bits_per_char"],
            "samples": summary["samples"],
            "tokenizer": (run / "tokenizer" / "tokenizer.json").read_bytes(),
            "shards": {p.parent.name: p.read_bytes() for p in sorted((run / "data").glob("*/shard_*.bin"))},
            "corpus_shards": {p.name: p.read_bytes() for p in sorted((run / "corpus" / "shards").glob("*"))},
        }

    @staticmethod
    def assert_same(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
        for key in want:
            if key == "metrics":
                assert [r["step"] for r in got[key]] == [r["step"] for r in want[key]], f"{what}: metric rows differ"
            assert got[key] == want[key], f"{what}: {key} differs from the uninterrupted run"


@pytest.fixture(scope="session")
def micro(shrink_args: list[str]) -> Micro:
    return Micro(shrink_args)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, micro: Micro) -> tuple[Path, dict[str, Any], float]:
    """One uninterrupted micro run: its folder (copy it, never change it), its outcome and its wall time.

    Under xdist the workers share it: the first to ask builds it in their common temporary folder, under a file
    lock, and a later one finds it ready or waits for it. That saves one build's CPU time, not always wall time: a
    worker that asks while the other is building sits idle (LOG.md, session 14)."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:  # each worker's folder is inside the session's: share that one
        root = root.parent
    shared = root / "reference"
    done = shared / "seconds.json"
    with FileLock(str(shared) + ".lock"):
        if not done.is_file():
            shutil.rmtree(shared, ignore_errors=True)  # a build that failed in another worker: start afresh
            shared.mkdir()
            t0 = time.perf_counter()
            micro.ok(shared / "run")
            done.write_text(json.dumps(time.perf_counter() - t0))
    return shared / "run", micro.outcome(shared / "run"), json.loads(done.read_text())
