"""The training loop: learning, exact kill-and-resume, stability monitor rollback, checkpoint safety."""

import json
import math
from pathlib import Path

import pytest
import torch

from kamado.model.loss import IGNORE_INDEX
from kamado.model.transformer import Transformer
from kamado.train import checkpoint as ckpt
from kamado.train.callbacks import Callback, Checkpointer, MetricsLogger, SpeedMonitor
from kamado.train.trainer import Trainer


def build(cfg, loader_cls, out_dir=None):
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model)
    loader = loader_cls(cfg.model.vocab_size, cfg.train.batch_size, cfg.data.seq_len)
    out = Path(out_dir or cfg.out_dir)
    callbacks = [SpeedMonitor(), MetricsLogger(out, tensorboard=False), Checkpointer()]
    return Trainer(cfg, model, loader, out, callbacks=callbacks)


def losses(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_loss_goes_down_and_metrics_are_logged(tiny_cfg, loader_cls):
    tiny_cfg.train.steps = 60
    t = build(tiny_cfg, loader_cls)
    t.fit()
    seq = losses(tiny_cfg.out_dir)
    assert sorted(seq) == list(range(1, 61))
    assert seq[60] < 0.5 * seq[1]
    rows = [json.loads(x) for x in (Path(tiny_cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "mfu" in r]
    assert [r["step"] for r in logged] == list(range(5, 61, 5))
    assert all(r["tokens_per_s"] > 0 and r["z_loss"] > 0 for r in logged)


def test_kill_and_resume_gives_identical_losses(tiny_cfg, loader_cls, tmp_path):
    full = build(tiny_cfg, loader_cls, tmp_path / "full")
    full.fit()
    part = build(tiny_cfg, loader_cls, tmp_path / "resumed")
    part.callbacks.append(_KillAt(17))
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    assert ckpt.latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step_00000010"
    assert max(losses(tmp_path / "resumed")) == 17
    resumed = build(tiny_cfg, loader_cls, tmp_path / "resumed")
    resumed.fit()
    a, b = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(b) == list(range(1, 31))  # rows 11..17 of the killed run were replaced, not duplicated
    assert [a[s] for s in range(1, 31)] == [b[s] for s in range(1, 31)]  # bit-identical


def test_a_resume_names_the_settings_changed_since_the_checkpoint(tiny_cfg, loader_cls, tmp_path):
    """Shapes and the data stream may not change (refused before); anything else may, and the resume event in
    events.jsonl says what did: longer training, another learning rate."""
    tiny_cfg.train.steps = 10
    build(tiny_cfg, loader_cls, tmp_path).fit()
    build(tiny_cfg, loader_cls, tmp_path).fit()  # the same settings: nothing listed
    lr = tiny_cfg.optim.lr
    tiny_cfg.train.steps, tiny_cfg.optim.lr = 12, lr / 2
    build(tiny_cfg, loader_cls, tmp_path).fit()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e for e in events if e["event"] == "resume"] == [
        {"step": 10, "event": "resume", "checkpoint": "step_00000010"},
        {
            "step": 10,
            "event": "resume",
            "checkpoint": "step_00000010",
            "changed": {"optim.lr": [lr, lr / 2], "train.steps": [10, 12]},
        },
    ]
    assert max(losses(tmp_path)) == 12


def test_validation_ce_is_the_mean_over_all_scored_tokens(tiny_cfg, loader_cls, tmp_path):
    """Two validation batches, one with all its targets scored and one with 3 of 16 a row (the rest ignored):
    val_ce weighs each batch's CE by its scored tokens, as one cross-entropy over all of them does."""
    t = build(tiny_cfg, loader_cls, tmp_path)
    g = torch.Generator().manual_seed(0)
    vocab, seq = tiny_cfg.model.vocab_size, tiny_cfg.data.seq_len
    batches = []
    for scored in (seq, 3):
        x, y = torch.randint(0, vocab, (2, seq), generator=g), torch.randint(0, vocab, (2, seq), generator=g)
        y[:, scored:] = IGNORE_INDEX
        batches.append((x, y))
    t.val_batches = lambda: iter(batches)
    got = t.evaluate()
    with torch.no_grad(), t.autocast():
        logits = torch.cat([t.model(x) for x, _ in batches]).float()
    want = torch.nn.functional.cross_entropy(
        logits.reshape(-1, vocab), torch.cat([y for _, y in batches]).reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert got is not None and got["val_ce"] == pytest.approx(float(want), rel=1e-4)
    assert got["val_ppl"] == pytest.approx(math.exp(float(want)), rel=1e-4)


def test_config_changes_compares_sections_key_by_key_and_lists_whole():
    from kamado.train.trainer import config_changes

    then = {"a": 1, "s": {"x": 1, "y": [1, 2]}, "gone": 3}
    now = {"a": 1, "s": {"x": 2, "y": [1, 3]}, "new": {"z": 4}}
    assert config_changes(then, now) == {
        "gone": [3, None],
        "new": [None, {"z": 4}],
        "s.x": [1, 2],
        "s.y": [[1, 2], [1, 3]],
    }
    assert config_changes(then, then) == {}


class _KillAt(Checkpointer):
    def __init__(self, step):
        self.kill_step = step

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.kill_step:
            raise KeyboardInterrupt  # as if the process were killed after logging this step

    def on_train_end(self, trainer):
        pass


def test_killed_save_never_corrupts_previous_checkpoint(tiny_cfg, loader_cls, tmp_path, monkeypatch):
    t = build(tiny_cfg, loader_cls, tmp_path / "r")
    t.step = 10
    good = t.save_checkpoint()
    t.step = 20

    def boom(*a, **k):
        raise KeyboardInterrupt  # the process dies while writing the optimizer file

    monkeypatch.setattr(ckpt, "optimizer_tensors", boom)
    with pytest.raises(KeyboardInterrupt):
        t.save_checkpoint()
    monkeypatch.undo()
    assert (tmp_path / "r/checkpoints/step_00000020.tmp").exists()
    assert ckpt.latest_checkpoint(tmp_path / "r/checkpoints") == good  # the .tmp leftover is ignored (readers)
    assert (tmp_path / "r/checkpoints/step_00000020.tmp").exists()  # ...and left alone: it may be a live save
    ckpt.recover_interrupted_saves(tmp_path / "r/checkpoints")  # the writer, at its next start, cleans it up
    assert not (tmp_path / "r/checkpoints/step_00000020.tmp").exists()
    state = ckpt.load_checkpoint(good, t.model, t.optimizer)
    assert state["step"] == 10


@pytest.mark.parametrize("keep", [1, 2])
def test_keep_last_n(tiny_cfg, loader_cls, keep):
    tiny_cfg.checkpoint.keep_last = keep
    tiny_cfg.checkpoint.every = 5
    build(tiny_cfg, loader_cls).fit()
    names = [p.name for p in ckpt.list_checkpoints(Path(tiny_cfg.out_dir) / "checkpoints")]
    assert names == ["step_00000025", "step_00000030"][-keep:]
    files = {p.name for p in (Path(tiny_cfg.out_dir) / "checkpoints/step_00000030").iterdir()}
    # nothing that would need unpickling: tensors in safetensors, the rest in JSON
    assert files == {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "integrity.json"}
    record = json.loads((Path(tiny_cfg.out_dir) / "checkpoints/step_00000030/integrity.json").read_text())
    assert record["format"] == "safetensors" and set(record["files"]) == files - {"integrity.json"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in record["files"].values())  # hashed, not sizes only


class _Poison:
    """Make the loss NaN whenever the batch at one of `positions` (loader indices) is trained on."""

    def __init__(self, trainer, positions):
        self.trainer, self.positions, self.hits = trainer, set(positions), 0
        self.orig = trainer.forward_backward
        self.limit = 100  # a poisoned batch trained on this often means the trainer keeps replaying it

    def __call__(self, x, y):
        out = self.orig(x, y)
        if self.trainer.loader.index - 1 in self.positions:
            self.hits += 1
            if self.hits > self.limit:
                raise AssertionError(f"poisoned batches trained on {self.hits} times")
            self.trainer.model.zero_grad()
            return {**out, "loss": math.nan}
        return out


def test_single_nan_loss_skips_the_update(tiny_cfg, loader_cls):
    t = build(tiny_cfg, loader_cls)
    t.forward_backward = _Poison(t, {12})
    t.fit()
    events = [json.loads(x) for x in (Path(tiny_cfg.out_dir) / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["skip_update"]
    assert events[0]["step"] == 12
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_repeated_nan_rolls_back_and_skips_offending_batches(tiny_cfg, loader_cls):
    tiny_cfg.stability.max_spikes = 3
    t = build(tiny_cfg, loader_cls)
    poison = _Poison(t, {13, 14, 15})
    t.forward_backward = poison
    t.fit()
    events = [json.loads(x) for x in (Path(tiny_cfg.out_dir) / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds == ["skip_update", "skip_update", "rollback", "skip_batch", "skip_batch", "skip_batch"]
    assert events[2]["to_step"] == 10 and events[2]["skipped_batches"] == 3
    assert poison.hits == 3  # after the rollback the poisoned batches were never trained on again
    assert t.step == 30
    seq = losses(tiny_cfg.out_dir)
    assert sorted(seq) == list(range(1, 31)) and all(math.isfinite(v) for v in seq.values())
    # the rollback is remembered in the checkpoint, so a later resume keeps skipping those batches
    state = json.loads((Path(tiny_cfg.out_dir) / "checkpoints/step_00000030/state.json").read_text())
    assert len(state["skip_positions"]) == 3


def test_loss_spike_by_zscore_is_skipped(tiny_cfg, loader_cls):
    t = build(tiny_cfg, loader_cls)
    orig = t.forward_backward

    def spiky(x, y):
        out = orig(x, y)
        return {**out, "loss": out["loss"] + 100.0} if t.loader.index == 25 else out

    t.forward_backward = spiky
    t.fit()
    events = [json.loads(x) for x in (Path(tiny_cfg.out_dir) / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("skip_update", 24)]


class _EvalBeforeSave(Callback):
    """Records, at each evaluation, whether that step's checkpoint already existed."""

    def __init__(self):
        self.seen = {}

    def on_eval_end(self, trainer, metrics):
        self.seen[trainer.step] = (trainer.ckpt_dir / f"step_{trainer.step:08d}").exists()


def test_a_step_is_evaluated_before_it_is_checkpointed(tiny_cfg, loader_cls, tmp_path):
    """A run killed right after a checkpoint must not lose that step's evaluation on resume: the save comes after."""
    tiny_cfg.train.eval_every = tiny_cfg.checkpoint.every = 10
    t = build(tiny_cfg, loader_cls, tmp_path / "r")
    t.val_batches = lambda: iter([t.loader.next_batch()])
    probe = _EvalBeforeSave()
    t.callbacks.insert(0, probe)
    t.fit()
    assert probe.seen == {10: False, 20: False, 30: False}
    assert t.last_eval is not None and t.last_eval["step"] == 30
    resumed = build(tiny_cfg, loader_cls, tmp_path / "r")  # a rerun of the finished run keeps its last eval
    assert resumed.fit()["eval"] == t.last_eval


def test_a_second_rollback_to_the_same_checkpoint_still_skips_the_first_bad_batch(tiny_cfg, loader_cls):
    """Two rollbacks to the step-10 checkpoint, whose state predates both: the batch that caused the first must
    stay skipped after the second restores that older state."""
    tiny_cfg.stability.max_spikes = 1
    t = build(tiny_cfg, loader_cls)
    poison = _Poison(t, {12, 16})
    poison.limit = 4
    t.forward_backward = poison
    t.fit()
    events = [json.loads(x) for x in (Path(tiny_cfg.out_dir) / "events.jsonl").read_text().splitlines()]
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert [e["to_step"] for e in rollbacks] == [10, 10]
    assert poison.hits == 2 and t.step == 30
    assert len(t.skip_positions) == 2


def test_rerunning_a_finished_run_leaves_its_checkpoints_untouched(tiny_cfg, loader_cls, tmp_path):
    build(tiny_cfg, loader_cls, tmp_path / "r").fit()
    final = tmp_path / "r/checkpoints/step_00000030"
    before = {f.name: f.stat().st_mtime_ns for f in final.iterdir()}
    again = build(tiny_cfg, loader_cls, tmp_path / "r")
    assert again.fit()["step"] == 30
    assert again.saved_step == 30
    assert {f.name: f.stat().st_mtime_ns for f in final.iterdir()} == before  # not saved a second time


def test_resume_off_starts_over_even_with_checkpoints(tiny_cfg, loader_cls, tmp_path):
    build(tiny_cfg, loader_cls, tmp_path / "run").fit()  # 30 steps, checkpoints up to step 30
    tiny_cfg.checkpoint.resume = False
    again = build(tiny_cfg, loader_cls, tmp_path / "run")
    steps: list[int] = []

    class Count(Callback):
        def on_step_end(self, trainer, metrics):
            steps.append(trainer.step)

    again.callbacks.append(Count())
    again.fit()
    assert steps == list(range(1, 31))  # trained from step 0 again, not resumed at the finished step 30


def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    tiny_cfg, loader_cls, tmp_path
):
    run = build(tiny_cfg, loader_cls, tmp_path / "run")
    run.callbacks.append(_KillAt(25))
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    root = tmp_path / "run" / "checkpoints"
    newest = ckpt.latest_checkpoint(root)
    (newest / "model.safetensors").write_bytes(b"torn")
    resumed = build(tiny_cfg, loader_cls, tmp_path / "run")
    resumed.fit()
    assert newest.with_name(newest.name + ".corrupt").is_dir()  # quarantined by the resuming writer
    full = build(tiny_cfg, loader_cls, tmp_path / "full")
    full.fit()
    assert losses(tmp_path / "run") == losses(tmp_path / "full")  # resumed from the checkpoint before it


def test_an_infinite_gradient_with_a_finite_loss_skips_the_update(tiny_cfg, loader_cls):
    """The batch after step 11 has a finite loss but one infinite gradient: its update is skipped like a NaN loss's
    (the event names step 11, the last completed step), so no parameter turns NaN (clipping an infinite norm would
    multiply the gradients by 0 · inf)."""
    t = build(tiny_cfg, loader_cls)
    bad = {"on": False, "fired": False}

    def poison(g):
        if not bad["on"]:
            return g
        bad["on"], bad["fired"] = False, True  # once only, whatever happens next
        return torch.full_like(g, math.inf)

    t.model.embed.weight.register_hook(poison)

    class Arm(Callback):
        def on_step_end(self, trainer, metrics):
            bad["on"] = trainer.step == 11 and not bad["fired"]  # the next backward

    t.callbacks.append(Arm())
    t.fit()
    events = [json.loads(x) for x in (Path(tiny_cfg.out_dir) / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("skip_update", 11)]
    assert math.isfinite(events[0]["loss"]) and events[0]["grad_norm"] == math.inf  # why it was skipped
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert all(math.isfinite(v) for v in losses(tiny_cfg.out_dir).values())
