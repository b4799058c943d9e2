"""What the trainer reports at each step (tokens seen, the data phase), when it evaluates, and the error it gives
when a rollback has nowhere to go. Expected values are computed here from the configuration, not by the trainer."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from kamado.errors import ConfigError
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


def make(cfg, loader, callbacks, val_batches=None):
    torch.manual_seed(cfg.train.seed)
    return Trainer(cfg, Transformer(cfg.model), loader, cfg.out_dir, val_batches=val_batches, callbacks=callbacks)


def test_each_step_reports_the_tokens_trained_on_so_far(tiny_cfg, loader_cls):
    tiny_cfg.train.steps, tiny_cfg.train.grad_accum = 6, 2
    rec = Recorder()
    result = make(tiny_cfg, loader_cls(64, 4, 16), [rec]).fit()
    per_step = 4 * 2 * 16  # batch 4 × grad_accum 2 × 16 tokens per sequence
    assert [m["tokens"] for m in rec.steps] == [per_step * s for s in range(1, 7)]
    assert all(math.isfinite(m["log_z"]) for m in rec.steps)  # the output softmax's log Z, what Z-loss watches
    assert result == {"step": 6, "eval": None}  # no validation data: no evaluation result


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
    val = lambda: iter([loader_cls(64, 4, 16, seed=7).next_batch()])  # noqa: E731
    make(tiny_cfg, loader_cls(64, 4, 16), [rec], val_batches=val).fit()
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


def test_a_nan_loss_at_the_very_first_step_is_skipped(tiny_cfg, loader_cls):
    t = make(tiny_cfg, loader_cls(64, 4, 16), [])
    orig = t.forward_backward
    t.forward_backward = lambda x, y: {**orig(x, y), "loss": math.nan} if t.loader.index == 1 else orig(x, y)
    assert t.fit()["step"] == tiny_cfg.train.steps
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_a_one_step_run_saves_its_step(tiny_cfg, loader_cls):
    """Nothing saved yet when the loop starts (no stability checkpoint at step 0): the end of step 1 saves it."""
    tiny_cfg.train.steps, tiny_cfg.stability.enabled = 1, False
    t = make(tiny_cfg, loader_cls(64, 4, 16), [Checkpointer()])
    t.fit()
    assert [p.name for p in sorted(t.ckpt_dir.iterdir())] == ["step_00000001"]


def test_a_trainers_checkpoint_rebuilds_its_model_alone(tiny_cfg, loader_cls):
    """`kamado generate`, `serve` and `eval` load a run's checkpoint with no config beside it: the state holds it."""
    from kamado.train import checkpoint as ckpt

    tiny_cfg.train.steps, tiny_cfg.model.d_model, tiny_cfg.model.ffn_hidden = 2, 48, 96  # not the defaults
    t = make(tiny_cfg, loader_cls(64, 4, 16), [Checkpointer()])
    t.fit()
    model, found = ckpt.load_model(t.ckpt_dir / "step_00000002")
    assert found.name == "step_00000002" and model.cfg == tiny_cfg.model
    x = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(x), t.model.eval()(x))


def test_the_configured_settings_reach_torch(tiny_cfg, loader_cls):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # not what is configured, whatever OMP_NUM_THREADS this process started with
        tiny_cfg.train.threads = 1
        t = make(tiny_cfg, loader_cls(64, 4, 16), [])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert t.peak_flops == tiny_cfg.train.peak_flops  # what MFU divides by, before any callback measures one
    with t.autocast():  # train.dtype = "bf16"
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    tiny_cfg.train.dtype, tiny_cfg.train.steps = "fp32", 3
    plain = make(tiny_cfg, loader_cls(64, 4, 16), [])
    with plain.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert plain.fit()["step"] == 3
    tiny_cfg.train.compile = True
    compiled = make(tiny_cfg, loader_cls(64, 4, 16), [])
    assert isinstance(compiled.forward, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.forward._orig_mod is compiled.model


def test_an_unknown_dtype_is_a_config_error(tiny_cfg, loader_cls):
    tiny_cfg.train.dtype = "fp16"
    with pytest.raises(ConfigError, match=r"^train\.dtype must be 'bf16' or 'fp32', got 'fp16'$"):
        make(tiny_cfg, loader_cls(64, 4, 16), [])
