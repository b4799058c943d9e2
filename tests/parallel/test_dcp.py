"""Distributed checkpoints: save on one layout, resume on another and continue the same loss curve; consolidate to
the one-file kind; a rank killed mid-save never leaves a checkpoint that a relaunch would load."""

from __future__ import annotations

import contextlib
import json
import shutil
import time

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from kamado.errors import CheckpointError
from kamado.parallel.checkpoint import AsyncSaves, consolidate
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
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    resume = [e for e in events if e["event"] == "resume"][-1]  # the resume event names the new layout
    assert resume["checkpoint"] == "step_00000002"
    assert resume["changed"]["layout"] == [
        "pp=2 × dp_replicate=1 × dp_shard=2 × tp=2",
        f"pp=1 × dp_replicate=1 × dp_shard=1 × tp={nproc}",
    ]


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


@pytest.mark.parametrize("save", ["sync", "async"])
def test_a_stop_signal_to_one_rank_stops_every_rank_after_the_same_step(runs, single, save):
    """SIGTERM reaches rank 1 alone during step 3 (not a checkpoint step): both ranks stop after step 3 and save it
    together (a rank that went on alone would hang in its next collective); the relaunch finishes the curve. With
    async saves the stop waits for the background write and seals it before exiting."""
    out = runs.root / f"stopped-{save}"
    env = runs.env(KAMADO_FAILPOINT="train.before_eval:3@sigterm", KAMADO_FAILPOINT_RANK="1")
    layout = ("--parallel.dp_shard=2", f"--checkpoint.async_save={save == 'async'}".lower())
    r = runs.train(out, *layout, nproc=2, env=env, check=False, timeout=180)  # 13 s here
    assert r.returncode != 0, r.stderr[-3000:]  # torchrun reports the workers' status 75 as a failure
    assert "kamado: stopped by SIGTERM after step 3 (saved " in r.stderr, r.stderr[-3000:]
    root = out / "checkpoints"
    assert ckpt.latest_checkpoint(root) == root / "step_00000003"  # sealed: every rank wrote its shards
    assert json.loads((root / "step_00000003/state.json").read_text())["step"] == 3
    assert max(x["step"] for x in runs.metrics(out)) == 3
    runs.train(out, *layout, nproc=2)  # the relaunch
    assert_same_curve(runs.metrics(out), runs.metrics(single), what="after the stop")


def test_an_async_save_holds_its_steps_state_while_training_goes_on(runs, single, tmp_path):
    """checkpoint.async_save: the state is copied to host memory, then written in a background thread while the
    next steps train. The step-2 checkpoint holds step 2's weights (not those of the steps trained while it was
    written), is sealed like a synchronous one, and a resume from it finishes the curve."""
    out = runs.root / "async"
    async_save = ("--parallel.dp_shard=2", "--checkpoint.async_save=true")
    runs.train(out, *async_save, nproc=2)
    assert_same_curve(runs.metrics(out), runs.metrics(single), what="async saves")
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000004"]
    assert ckpt.verify_checkpoint(root / "step_00000002") is None
    got = load_file(str(consolidate(root / "step_00000002", tmp_path / "one") / "model.safetensors"))
    want = load_file(str(single / "checkpoints/step_00000002/model.safetensors"))
    for name in want:  # an AdamW step moves weights by ~lr = 3e-3: a later step's weights would fail this
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=0)
    resumed = _from_step_2(runs, out, "async-resumed")
    runs.train(resumed, *async_save, nproc=2)
    assert_same_curve(runs.metrics(resumed), runs.metrics(single), what="resumed from an async save")


def test_a_rank_killed_while_an_async_save_is_written_resumes_from_the_save_before(runs, single):
    out = runs.root / "async-killed"
    env = runs.env(KAMADO_FAILPOINT="parallel.after_async_save_started:2", KAMADO_FAILPOINT_RANK="1")
    async_save = ("--parallel.dp_shard=2", "--checkpoint.async_save=true")
    r = runs.train(out, *async_save, nproc=2, env=env, check=False, timeout=180)
    assert r.returncode != 0 and "SIGKILL" in r.stderr, r.stderr[-3000:]
    root = out / "checkpoints"
    assert not (root / "step_00000004").exists()  # never sealed
    assert ckpt.latest_checkpoint(root) == root / "step_00000002"
    runs.train(out, *async_save, nproc=2)  # the relaunch
    assert not (root / "step_00000004.tmp").exists()
    assert_same_curve(runs.metrics(out), runs.metrics(single), what="after a kill during an async save")


@contextlib.contextmanager
def one_gloo_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_an_async_save_writes_the_weights_of_when_it_started(tmp_path):
    """In process, one gloo rank: the weights change right after the save starts (as the next optimizer step
    would), yet the sealed checkpoint holds the old ones; until `finish` nothing is sealed under the final name."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    with one_gloo_rank(tmp_path):
        torch.manual_seed(0)
        model = nn.Linear(256, 256)
        opt = torch.optim.AdamW(model.parameters())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        saves = AsyncSaves()
        final = saves.start(tmp_path / "ckpt", 7, [model], [opt], {"note": "x"}, keep_last=0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        saves.finish()
        assert ckpt.verify_checkpoint(final) is None and json.loads((final / "state.json").read_text())["step"] == 7
        saved = {k: torch.zeros_like(v) for k, v in before.items()}
        torch.distributed.checkpoint.load({"model": saved}, checkpoint_id=str(final))
        for k, v in before.items():
            torch.testing.assert_close(saved[k], v, rtol=0, atol=0)
        assert not torch.equal(get_model_state_dict(model)["weight"], before["weight"])


def test_async_saves_are_sealed_between_steps_and_none_is_dropped(tmp_path):
    """`poll` (between steps) seals a save once its write has ended, without waiting for the next save; a save
    started while the one before is still pending first completes that one."""
    with one_gloo_rank(tmp_path):
        model = nn.Linear(64, 64)
        opt = torch.optim.AdamW(model.parameters())
        saves = AsyncSaves()
        first = saves.start(tmp_path / "ckpt", 1, [model], [opt], {}, keep_last=0)
        second = saves.start(tmp_path / "ckpt", 2, [model], [opt], {}, keep_last=0)  # no poll in between
        assert ckpt.verify_checkpoint(first) is None  # completed by the second start, not dropped
        deadline = time.monotonic() + 30
        while saves.pending is not None and time.monotonic() < deadline:
            saves.poll()
            time.sleep(0.01)
        assert saves.pending is None and ckpt.verify_checkpoint(second) is None
        assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000001", "step_00000002"]
