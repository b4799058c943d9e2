"""SIGKILL a real `kamado run` at named failpoints and at random moments, rerun the same command, and demand the
uninterrupted run's results bit for bit: metrics (all but the clock-dependent ones), final weights, bits/char,
samples, tokenizer and shards. Random moments use fixed seeds (in the failure message) so a failure reproduces."""

from __future__ import annotations

import os
import random
import signal
import subprocess

import pytest

from kamado.faults import FAILPOINTS
from kamado.train import checkpoint as ckpt

from .conftest import BEFORE_PRETRAINING

pytestmark = pytest.mark.slow

# (failpoint, hit, start): the hit picks the moment, e.g. the 2nd checkpoint save (step 4; step 0 is the stability
# monitor's first rollback target), the 3rd `after_checkpoint` (step 12, which is also an evaluation step). The kills
# from pre-training on start in a folder holding the reference's corpus, tokenizer and shards ("shards"): those
# stages are the same in every run, and the kills inside them start from nothing ("scratch").
KILLS = [
    ("checkpoint.after_model", 2, "shards"),
    ("checkpoint.before_integrity", 3, "shards"),
    ("train.after_checkpoint", 3, "shards"),
    ("train.before_eval", 12, "shards"),
    ("tokenizer.before_record", 1, "scratch"),
    ("shards.before_record", 2, "scratch"),
    ("corpus.before_stage", 3, "scratch"),
    ("recipe.during_bits_per_char", 1, "shards"),
    ("recipe.before_summary", 1, "shards"),
]


def test_every_failpoint_is_exercised():
    from .test_posttrain_kill import KILLS as POSTTRAIN_KILLS

    covered = {kill[0] for kill in KILLS + POSTTRAIN_KILLS} | {"checkpoint.resave_between_renames", "disk.write"}
    covered |= {"parallel.after_dcp_save"}  # tests/parallel/test_dcp.py kills one rank of a torchrun job there
    assert covered == set(FAILPOINTS)


@pytest.mark.parametrize(("name", "hit", "start"), KILLS, ids=[f"{n}:{h}" for n, h, _ in KILLS])
def test_kill_at_failpoint_then_rerun(micro, reference, tmp_path, fault_counts, name, hit, start):
    out = tmp_path / "run"
    if start == "shards":
        micro.copy_of(reference[0], out, only=BEFORE_PRETRAINING)
    r = micro.run(out, failpoint=f"{name}:{hit}")
    assert r.returncode == -signal.SIGKILL, f"failpoint {name}:{hit} was not reached: {r.stderr[-2000:]}"
    micro.ok(out)
    micro.assert_same(micro.outcome(out), reference[1], f"killed at {name}:{hit}")
    fault_counts["kills survived"] += 1


def test_kill_between_the_renames_of_a_resave(micro, reference, tmp_path, fault_counts):
    """Re-saving a step (here: a restart from scratch over a finished run) must never lose that step."""
    out = micro.copy_of(reference[0], tmp_path / "run")
    before = {p.name for p in ckpt.list_checkpoints(out / "checkpoints")}
    r = micro.run(out, "--checkpoint.resume=false", failpoint="checkpoint.resave_between_renames:1")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.name.endswith((".old", ".tmp")))  # caught in the window
    ckpt.recover_interrupted_saves(root)
    after = ckpt.list_checkpoints(root)
    assert before <= {p.name for p in after}, "a checkpoint was lost in the re-save window"
    assert all(ckpt.verify_checkpoint(p) is None for p in after)
    micro.ok(out, "--checkpoint.resume=false")  # the restart, finished: the same run again
    micro.assert_same(micro.outcome(out), reference[1], "killed between the renames of a re-save")
    fault_counts["kills survived"] += 1


@pytest.mark.parametrize("seed", range(3))
def test_kill_at_random_moments_then_rerun(micro, reference, tmp_path, fault_counts, seed):
    """One to three SIGKILLs of the whole process group at random moments (any stage: corpus workers included),
    then a rerun to the end."""
    rng = random.Random(seed)
    out = tmp_path / "run"
    total = reference[2]  # how long a whole run took on this machine
    kills = 0
    for i in range(rng.randint(1, 3)):
        # the first kill early enough to land whatever the machine's load (the reference may have run on a busier
        # box than this run: at 0.5 · its time a quiet run had once finished); later ones anywhere in what is left
        delay = rng.uniform(0.3, (0.25 if i == 0 else 0.9) * total)
        p = micro.start(out)
        try:
            p.wait(timeout=delay)
            break  # the run finished before this kill: nothing left to interrupt
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
    assert kills >= 1, f"seed {seed}: the run finished before the first kill"
    micro.ok(out)
    micro.assert_same(micro.outcome(out), reference[1], f"seed {seed}: {kills} random kill(s)")
    fault_counts["kills survived"] += kills
