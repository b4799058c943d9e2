"""Distributed checkpoints: save on one layout, resume on another and continue the same loss curve; consolidate to
the one-file kind; a rank killed mid-save never leaves a checkpoint that a relaunch would load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from kamado.errors import CheckpointError
from kamado.parallel.checkpoint import consolidate
from kamado.train import checkpoint as ckpt
from kamado.train.checkpoint import load_model

from .conftest import assert_same_curve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def saved_222(runs, single):
    """A 4-step run on pp=2 × dp_shard=2 × tp=2 (8 ranks), checkpoints at steps 2 and 4."""
    out = runs.root / "dcp222"
    runs.train(out, "--parallel.pp=2", "--parallel.dp_shard=2", "--parallel.tp=2", nproc=8)
    return out


def _from_step_2(runs, saved, name):
    """A copy of the run as it was right after its step-2 checkpoint."""
    out = runs.root / name
    shutil.copytree(saved, out)
    shutil.rmtree(out / "checkpoints/step_00000004")
    rows = runs.metrics(saved)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= 2))
    return out


@pytest.mark.parametrize(("nproc", "overrides"), [(1, []), (2, ["--parallel.tp=2"])], ids=["one-process", "tp2"])
def test_resume_on_another_layout_continues_the_curve(runs, single, saved_222, nproc, overrides):
    out = _from_step_2(runs, saved_222, f"resume-{nproc}")
    r = runs.train(out, *overrides, nproc=nproc)
    rows = runs.metrics(out)
    assert [x["step"] for x in rows if "loss" in x] == [1, 2, 3, 4], r.stderr[-2000:]  # resumed, not restarted
    assert_same_curve(rows, runs.metrics(single), what=f"resumed on {nproc} ranks {overrides}")


def test_consolidate_writes_the_model_layout(runs, single, saved_222, tmp_path):
    path = consolidate(saved_222, tmp_path / "one")
    got = load_file(str(path / "model.safetensors"))
    want = load_file(str(single / "checkpoints/step_00000004/model.safetensors"))
    assert sorted(got) == sorted(want)
    for name in want:  # same weights after 4 AdamW steps (float32; reduction order differs)
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=0)
    model, _ = load_model(tmp_path / "one")
    assert model.cfg.n_layers == 4
    with pytest.raises(CheckpointError, match="is a distributed \\(DCP\\) checkpoint: `kamado checkpoint consolidate"):
        load_model(saved_222)


def test_a_rank_killed_mid_save_resumes_from_the_last_complete_checkpoint(runs, single):
    out = runs.root / "killed"
    env = runs.env(KAMADO_FAILPOINT="parallel.after_dcp_save:2", KAMADO_FAILPOINT_RANK="1")
    r = runs.train(out, "--parallel.dp_shard=2", nproc=2, env=env, check=False)
    assert r.returncode != 0, r.stderr[-3000:]
    assert "SIGKILL" in r.stderr, r.stderr[-3000:]  # torchrun reports the rank the failpoint killed
    root = out / "checkpoints"
    assert (root / "step_00000004.tmp").is_dir() and not (root / "step_00000004").exists()  # rank 1 died in the save
    assert ckpt.latest_checkpoint(root) == root / "step_00000002"
    runs.train(out, "--parallel.dp_shard=2", nproc=2)  # the relaunch
    assert not (root / "step_00000004.tmp").exists()
    assert_same_curve(runs.metrics(out), runs.metrics(single), what="after the kill")


def test_a_stop_signal_to_one_rank_stops_every_rank_after_the_same_step(runs, single):
    """SIGTERM reaches rank 1 alone during step 3 (not a checkpoint step): both ranks stop after step 3 and save it
    together (a rank that went on alone would hang in its next collective); the relaunch finishes the curve."""
    out = runs.root / "stopped"
    env = runs.env(KAMADO_FAILPOINT="train.before_eval:3@sigterm", KAMADO_FAILPOINT_RANK="1")
    r = runs.train(out, "--parallel.dp_shard=2", nproc=2, env=env, check=False, timeout=180)  # 13 s here
    assert r.returncode != 0, r.stderr[-3000:]  # torchrun reports the workers' status 75 as a failure
    assert "kamado: stopped by SIGTERM after step 3 (saved " in r.stderr, r.stderr[-3000:]
    root = out / "checkpoints"
    assert ckpt.latest_checkpoint(root) == root / "step_00000003"  # sealed: every rank wrote its shards
    assert json.loads((root / "step_00000003/state.json").read_text())["step"] == 3
    assert max(x["step"] for x in runs.metrics(out)) == 3
    runs.train(out, "--parallel.dp_shard=2", nproc=2)  # the relaunch
    assert_same_curve(runs.metrics(out), runs.metrics(single), what="after the stop")
