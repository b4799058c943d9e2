"""What the trainer reports at each step (tokens seen, the data phase), when it evaluates, and the error it gives
when a rollback has nowhere to go. Expected values are computed here from the configuration, not by the trainer."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from kamado.model.transformer import Transformer
from kamado.train.callbacks import Callback, Checkpointer
from kamado.train.trainer import Trainer


class Recorder(Callback):
    """Keeps every step's metrics and every evaluation the trainer hands to its callbacks."""

    def __init__(self):
        self.steps: list[dict] = []
        self.evals: list[dict] = []

    def on_step_end(self, trainer, metrics):
        self.steps.append(dict(metrics))

    def on_eval_end(self, trainer, metrics):
        self.evals.append(dict(metrics))


def make(cfg, loader, callbacks):
    torch.manual_seed(cfg.train.seed)
    return Trainer(cfg, Transformer(cfg.model), loader, cfg.out_dir, callbacks=callbacks)


def test_each_step_reports_the_tokens_trained_on_so_far(tiny_cfg, loader_cls):
    tiny_cfg.train.steps, tiny_cfg.train.grad_accum = 6, 2
    rec = Recorder()
    make(tiny_cfg, loader_cls(64, 4, 16), [rec]).fit()
    per_step = 4 * 2 * 16  # batch 4 × grad_accum 2 × 16 tokens per sequence
    assert [m["tokens"] for m in rec.steps] == [per_step * s for s in range(1, 7)]


class PhasedLoader:
    """The conftest's counting stream with a data phase that switches after 3 batches, like the two-phase loader."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def current_phase(self) -> str:
        return "phase1" if self.inner.index < 3 else "phase2"

    def next_batch(self):
        return self.inner.next_batch()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def test_each_step_reports_the_loaders_data_phase(tiny_cfg, loader_cls):
    tiny_cfg.train.steps = 5
    rec = Recorder()
    make(tiny_cfg, PhasedLoader(loader_cls(64, 4, 16)), [rec]).fit()
    # step s has read s batches: the phase after batch 3 is phase2
    assert [m["phase"] for m in rec.steps] == ["phase1", "phase1", "phase2", "phase2", "phase2"]
    plain = Recorder()
    make(tiny_cfg, loader_cls(64, 4, 16), [plain]).fit()
    assert all("phase" not in m for m in plain.steps)  # a loader without phases adds no key


@pytest.mark.parametrize(("every", "expected"), [(1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]), (0, [5])])
def test_evaluation_runs_every_n_steps_and_at_the_last(tiny_cfg, loader_cls, every, expected):
    tiny_cfg.train.steps, tiny_cfg.train.eval_every = 5, every
    rec = Recorder()
    t = make(tiny_cfg, loader_cls(64, 4, 16), [rec])
    t.val_batches = lambda: iter([loader_cls(64, 4, 16, seed=7).next_batch()])
    t.fit()
    assert [e["step"] for e in rec.evals] == expected
    assert all(math.isfinite(e["val_ce"]) for e in rec.evals)


class DeleteCheckpoints(Callback):
    """Removes the run's checkpoints once training starts (a user cleaning the folder under a running job)."""

    def on_train_start(self, trainer):
        shutil.rmtree(trainer.ckpt_dir)


def test_a_rollback_with_no_checkpoint_left_says_so(tiny_cfg, loader_cls):
    tiny_cfg.stability.max_spikes = 1
    t = make(tiny_cfg, loader_cls(64, 4, 16), [DeleteCheckpoints(), Checkpointer()])
    orig = t.forward_backward
    t.forward_backward = lambda x, y: {**orig(x, y), "loss": math.nan} if t.step >= 2 else orig(x, y)
    with pytest.raises(RuntimeError, match=r"^stability monitor asked for a rollback but no checkpoint exists$"):
        t.fit()
