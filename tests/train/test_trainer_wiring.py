"""What the trainer hands to the model and the optimizer, checked against values computed here independently:
the configured Z-loss coefficient, gradient clipping, and resuming (rollback history, the monitor, the RNG)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kamado.model.transformer import Transformer
from kamado.train import checkpoint as ckpt
from kamado.train.callbacks import Callback, Checkpointer, MetricsLogger
from kamado.train.trainer import Trainer


def make_trainer(cfg, loader, out_dir: Path, model: nn.Module | None = None, callbacks=None) -> Trainer:
    if model is None:
        torch.manual_seed(cfg.train.seed)
        model = Transformer(cfg.model)
    return Trainer(cfg, model, loader, out_dir, callbacks=callbacks if callbacks is not None else [])


def first_batch(cfg, loader_cls):
    return loader_cls(cfg.model.vocab_size, cfg.train.batch_size, cfg.data.seq_len).next_batch()


def reference_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, coef: float) -> torch.Tensor:
    """CE + coef · mean(logsumexp²) from the model's logits (PaLM's Z-loss), written out here."""
    logits = model(x).flatten(0, 1)
    ce = F.cross_entropy(logits, y.flatten())
    lse = torch.logsumexp(logits, dim=-1)
    return ce + coef * (lse**2).mean()


# --- Z-loss ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coef", [0.0, 1e-4, 0.05])
def test_trained_loss_is_ce_plus_the_configured_z_loss(tiny_cfg, loader_cls, tmp_path, coef):
    tiny_cfg.train.dtype, tiny_cfg.train.z_loss, tiny_cfg.train.grad_accum = "fp32", coef, 2
    trainer = make_trainer(tiny_cfg, loader_cls(64, 4, 16), tmp_path)
    x, y = first_batch(tiny_cfg, loader_cls)
    twin = copy.deepcopy(trainer.model)
    expected = reference_loss(twin, x, y, coef)
    (expected / 2).backward()  # two micro-batches per step: each contributes half its gradient

    got = trainer.forward_backward(x, y)
    assert got["loss"] == pytest.approx(expected.item(), rel=1e-6, abs=1e-6)
    for (name, p), q in zip(trainer.model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_z_loss_coefficient_changes_the_loss_by_coef_times_mean_lse_squared(tiny_cfg, loader_cls, tmp_path):
    """At init logsumexp ≈ log(64), so the default 1e-4 adds ≈ 1.7e-3: small, but measured exactly here."""
    tiny_cfg.train.dtype = "fp32"
    x, y = first_batch(tiny_cfg, loader_cls)
    loss = {}
    for coef in (0.0, 1e-4):
        tiny_cfg.train.z_loss = coef
        loss[coef] = make_trainer(tiny_cfg, loader_cls(64, 4, 16), tmp_path).forward_backward(x, y)["loss"]
    with torch.no_grad():
        lse = torch.logsumexp(make_trainer(tiny_cfg, loader_cls(64, 4, 16), tmp_path).model(x), dim=-1)
    assert loss[1e-4] - loss[0.0] == pytest.approx(1e-4 * float((lse**2).mean()), rel=1e-2)
    assert loss[1e-4] - loss[0.0] > 1e-3


# --- gradient clipping ----------------------------------------------------------------------------------------------


def unclipped_gradients(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], float]:
    twin = copy.deepcopy(trainer.model)
    reference_loss(twin, x, y, trainer.cfg.train.z_loss).backward()
    grads = [p.grad.clone() for p in twin.parameters()]
    return grads, math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))


def test_gradients_are_clipped_to_the_limit_and_the_logged_norm_is_before_clipping(tiny_cfg, loader_cls, tmp_path):
    tiny_cfg.train.dtype, tiny_cfg.optim.grad_clip = "fp32", 0.05
    trainer = make_trainer(tiny_cfg, loader_cls(64, 4, 16), tmp_path)
    grads, norm = unclipped_gradients(trainer, *first_batch(tiny_cfg, loader_cls))
    assert norm > 0.5  # ten times the limit: clipping has work to do

    metrics = trainer.train_step()
    after = [p.grad for p in trainer.model.parameters()]
    clipped_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in after))
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)  # what is logged: the norm before clipping
    assert clipped_norm <= 0.05 * (1 + 1e-5) and clipped_norm == pytest.approx(0.05, rel=1e-4)
    for g, a in zip(grads, after, strict=True):  # the direction is kept: every gradient scaled by limit / norm
        expected = g * (0.05 / norm)
        torch.testing.assert_close(a, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("limit", [0.0, 1000.0])
def test_no_clipping_when_disabled_or_under_the_limit(tiny_cfg, loader_cls, tmp_path, limit):
    tiny_cfg.train.dtype, tiny_cfg.optim.grad_clip = "fp32", limit
    trainer = make_trainer(tiny_cfg, loader_cls(64, 4, 16), tmp_path)
    grads, norm = unclipped_gradients(trainer, *first_batch(tiny_cfg, loader_cls))
    metrics = trainer.train_step()
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)
    for g, p in zip(grads, trainer.model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5 * float(g.abs().max()))


# --- resuming -------------------------------------------------------------------------------------------------------

SENTINEL = 63  # a corrupt batch starts every row with this token


class CorruptingLoader:
    """The counting stream of `tests/train/conftest.py`, with corrupt batches (rows starting with SENTINEL) at
    chosen loader indices."""

    def __init__(self, loader_cls, corrupt: set[int]):
        self.inner, self.corrupt = loader_cls(64, 4, 16), corrupt

    def next_batch(self):
        i = self.inner.index
        x, y = self.inner.next_batch()
        if i in self.corrupt:
            x[:, 0] = SENTINEL
        return x, y

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


class SpikesOnCorruptBatches(nn.Module):
    """The tiny model, whose training loss jumps by 50 on a corrupt batch (the gradient is the normal one)."""

    def __init__(self, cfg):
        super().__init__()
        self.model = Transformer(cfg)

    def forward(self, x, targets=None, **kw):
        out = self.model(x, targets, **kw)
        if targets is not None and bool((x[:, 0] == SENTINEL).all()):
            out = dataclasses.replace(out, loss=out.loss + 50.0)
        return out


class KillAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.step:
            raise KeyboardInterrupt  # as if the process were killed after logging this step


def spiky_run(cfg, loader_cls, out: Path, kill_at: int | None = None) -> Trainer:
    """Corrupt batches 12-14 (three spikes in a row: rollback to step 10) and 23 (one spike: skipped update)."""
    callbacks = [MetricsLogger(out, tensorboard=False), Checkpointer()]
    if kill_at is not None:
        callbacks.append(KillAt(kill_at))
    loader = CorruptingLoader(loader_cls, {12, 13, 14, 23})
    torch.manual_seed(cfg.train.seed)
    return make_trainer(cfg, loader, out, model=SpikesOnCorruptBatches(cfg.model), callbacks=callbacks)


def rows(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def test_resume_after_a_rollback_continues_exactly_as_the_uninterrupted_run(tiny_cfg, loader_cls, tmp_path):
    full = spiky_run(tiny_cfg, loader_cls, tmp_path / "full")
    full.fit()
    events = rows(tmp_path / "full", "events.jsonl")
    assert [(e["event"], e["step"]) for e in events] == [
        ("skip_update", 12),  # batch 12 (step 13), then 13 (step 14), then 14: rollback to step 10
        ("skip_update", 13),
        ("rollback", 10),
        *[("skip_batch", s) for s in (12, 12, 12)],  # batches 12-14 are passed over after steps 11-12
        ("skip_update", 20),  # batch 23 is one spike: its update is skipped, nothing rolled back
    ]
    assert {e["reason"] for e in events if e["event"] == "skip_batch"} == {"caused a rollback earlier"}

    killed = spiky_run(tiny_cfg, loader_cls, tmp_path / "resumed", kill_at=25)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert ckpt.latest_checkpoint(tmp_path / "resumed/checkpoints").name == "step_00000020"
    spiky_run(tiny_cfg, loader_cls, tmp_path / "resumed").fit()

    def by_step(run: str) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in rows(tmp_path / run, "metrics.jsonl")}

    assert by_step("resumed") == by_step("full")  # bit for bit, so the same batches were trained on
    for run in ("full", "resumed"):  # the rows past the rollback (and past the resumed checkpoint) were replaced
        steps = [r["step"] for r in rows(tmp_path / run, "metrics.jsonl") if "loss" in r]
        assert steps == sorted(set(steps)), run
    assert rows(tmp_path / "resumed", "events.jsonl")[-1] == events[-1]  # batch 23 still spotted as a spike
    final = [
        json.loads((tmp_path / run / "checkpoints/step_00000030/state.json").read_text()) for run in ("full", "resumed")
    ]
    assert len(final[0]["skip_positions"]) == 3
    for key in ("skip_positions", "stability", "loader"):  # a second resume would continue the same way too
        assert final[1][key] == final[0][key], key


def add_noise_to_embeddings(model: Transformer) -> None:
    """Training-time noise from torch's global RNG (as dropout would draw): the step's loss depends on the RNG."""

    def hook(module, inputs, output):
        return output + 0.5 * torch.randn_like(output) if module.training else output

    model.embed.register_forward_hook(hook)


def test_resume_with_random_noise_in_the_step_gives_identical_losses(tiny_cfg, loader_cls, tmp_path):
    tiny_cfg.train.steps = 20

    def run(out: Path, kill_at: int | None = None) -> Trainer:
        torch.manual_seed(tiny_cfg.train.seed)
        model = Transformer(tiny_cfg.model)
        add_noise_to_embeddings(model)
        callbacks = [MetricsLogger(out, tensorboard=False), Checkpointer(), *([KillAt(kill_at)] if kill_at else [])]
        return make_trainer(tiny_cfg, loader_cls(64, 4, 16), out, model=model, callbacks=callbacks)

    run(tmp_path / "full").fit()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", kill_at=14).fit()
    torch.manual_seed(1234)  # whatever the RNG holds at the restart, the checkpoint's state must replace it
    run(tmp_path / "resumed").fit()
    a = {r["step"]: r["loss"] for r in rows(tmp_path / "full", "metrics.jsonl")}
    b = {r["step"]: r["loss"] for r in rows(tmp_path / "resumed", "metrics.jsonl")}
    assert sorted(b) == list(range(1, 21))
    assert [b[s] for s in range(11, 21)] == [a[s] for s in range(11, 21)]  # bit for bit

    # the noise is real: another noise stream gives another loss
    other = run(tmp_path / "other")
    torch.manual_seed(99)
    assert other.train_step()["loss"] != a[1]


# --- the learning rate reaches the optimizer ------------------------------------------------------------------------


def test_the_scheduled_learning_rate_is_what_the_update_uses(tiny_cfg, loader_cls, tmp_path):
    """AdamW's first update moves every weight by lr · g/|g| = ±lr (bias-corrected moments; decay is 0 here)."""
    tiny_cfg.train.dtype, tiny_cfg.optim.weight_decay = "fp32", 0.0
    tiny_cfg.optim.lr, tiny_cfg.schedule.warmup_steps = 1e-3, 4  # step 0 of the warmup: lr = 1e-3 · 1/4
    trainer = make_trainer(tiny_cfg, loader_cls(64, 4, 16), tmp_path)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.train_step()["lr"] == pytest.approx(2.5e-4)
    trainer.optimizer.step()
    moved = torch.cat(
        [(p.detach() - b).abs().flatten() for p, b in zip(trainer.model.parameters(), before, strict=True)]
    )
    moved = moved[moved > 0]
    assert moved.max().item() == pytest.approx(2.5e-4, rel=1e-3)
    assert moved.median().item() == pytest.approx(2.5e-4, rel=1e-2)


def test_warmup_ends_at_the_peak(tiny_cfg):
    from kamado.train.optim import lr_at

    s = tiny_cfg.schedule
    s.kind, s.warmup_steps, s.min_lr_ratio = "cosine", 1, 0.1
    assert lr_at(0, 100, 2.0, s) == 2.0  # one warmup step: its learning rate is the peak itself
    s.warmup_steps = 10
    assert [lr_at(i, 100, 2.0, s) for i in (0, 9, 10)] == [0.2, 2.0, 2.0]  # then the cosine starts at the peak


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
def test_schedules_end_where_they_say_and_stay_there(tiny_cfg, kind):
    from kamado.train.optim import lr_at

    s = tiny_cfg.schedule
    s.kind, s.warmup_steps, s.min_lr_ratio, s.decay_fraction = kind, 2, 0.1, 0.2
    end = 1.0 if kind == "constant" else 0.1
    assert [lr_at(i, 12, 1.0, s) for i in (12, 13, 20)] == pytest.approx([end] * 3)  # past the end: clamped
    assert lr_at(3, 3, 1.0, s) == pytest.approx(end)  # one step after warmup: the whole decay in one step
    if kind == "wsd":  # 5 steps, 20% decay: one decay step, after 4 at the peak
        assert [lr_at(i, 5, 1.0, s) for i in (3, 4, 5)] == pytest.approx([1.0, 1.0, 0.1])


def test_adamw_gets_the_configured_betas_eps_and_decay():
    """Two AdamW steps written out (Loshchilov & Hutter): decoupled decay on matrices only, bias-corrected moments."""
    from kamado.config import OptimConfig
    from kamado.train.optim import build_optimizer

    model = nn.Module()
    model.w, model.b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    lr, (b1, b2), eps, wd = 0.1, (0.5, 0.6), 0.3, 0.2
    opt = build_optimizer(model, OptimConfig(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd))
    grads = [torch.tensor(2.0), torch.tensor(-1.0)]
    for g in grads:
        model.w.grad, model.b.grad = torch.full((2, 2), float(g)), torch.full((2,), float(g))
        opt.step()
    expected = {}
    for name, decay in (("w", wd), ("b", 0.0)):
        p, m, v = 1.0, 0.0, 0.0
        for t, g in enumerate(grads, start=1):
            p -= lr * decay * p
            m, v = b1 * m + (1 - b1) * float(g), b2 * v + (1 - b2) * float(g) ** 2
            p -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
        expected[name] = p
    assert model.w.detach().flatten().tolist() == pytest.approx([expected["w"]] * 4, rel=1e-5)
    assert model.b.detach().tolist() == pytest.approx([expected["b"]] * 2, rel=1e-5)
    assert expected["w"] != pytest.approx(expected["b"])  # the decay is visible


# --- the stability monitor's arithmetic ------------------------------------------------------------------------------


def monitor(**kw):
    from kamado.config import StabilityConfig
    from kamado.train.stability import StabilityMonitor

    return StabilityMonitor(StabilityConfig(**{"window": 5, "min_history": 5, "z_threshold": 6.0, **kw}))


def test_zscore_of_two_losses():
    m = monitor(min_history=2)
    m.load_state_dict({"history": [0.0, 2.0], "consecutive": 0})  # mean 1, std sqrt(2 / 1)
    assert m.zscore(3.0) == pytest.approx(math.sqrt(2))


def test_zscore_uses_the_sample_standard_deviation_of_the_window():
    """History 0, 0, 2, 2, 1: mean 1, squared deviations 1+1+1+1+0 = 4 over n - 1 = 4: std exactly 1."""
    m = monitor()
    m.load_state_dict({"history": [1000.0, 0.0, 0.0, 2.0, 2.0, 1.0], "consecutive": 0})  # the window keeps 5
    assert m.zscore(4.0) == 3.0 and m.zscore(1.0) == 0.0 and m.zscore(-2.0) == -3.0
    assert not m.is_spike(7.0) and m.is_spike(7.001)  # z = 6 is not above the threshold of 6
    m.load_state_dict({"history": [2.0, 2.0, 2.0, 2.0, 2.0], "consecutive": 0})  # std 0: any rise is a spike
    assert m.is_spike(2.001) and not m.is_spike(2.0)


def test_detection_starts_at_min_history_accepted_losses_and_keeps_a_window():
    m = monitor()
    for loss in (1000.0, 0.0, 0.0, 2.0):
        assert m.check(loss).value == "ok"
    assert not m.is_spike(1e6)  # 4 losses: too few to judge
    assert m.check(2.0).value == "ok"
    assert m.is_spike(1e6)  # 5: judged
    assert m.check(1.0).value == "ok"  # the 1000 leaves the window of 5: 0, 0, 2, 2, 1 remain
    assert m.zscore(4.0) == 3.0


def test_rollback_needs_max_spikes_in_a_row():
    m = monitor(max_spikes=3)
    for loss in (0.0, 0.0, 2.0, 2.0, 1.0):
        m.check(loss)
    verdicts = [m.check(loss).value for loss in (1.0, 99.0, 99.0, 1.0, 99.0, 99.0, 99.0, 99.0, 99.0, 99.0)]
    assert verdicts == ["ok", "skip", "skip", "ok", "skip", "skip", "rollback", "skip", "skip", "rollback"]
    fresh = monitor(max_spikes=3)  # a non-finite loss is a spike even before min_history
    assert [fresh.check(math.nan).value for _ in range(3)] == ["skip", "skip", "rollback"]


def test_a_steps_logged_metrics_are_the_float64_mean_of_its_micro_batches(tiny_cfg, loader_cls, tmp_path):
    """The micro-batches' metrics stay on the device until the step reads them all at once (`host_values`); the
    mean is still taken in float64, as when each was read as a Python float."""
    tiny_cfg.train.grad_accum = 3
    trainer = make_trainer(tiny_cfg, loader_cls(64, 4, 16), tmp_path)
    seen: list[dict[str, float]] = []
    inner = trainer.forward_backward

    def recording(*batch):
        metrics = inner(*batch)
        seen.append({k: float(v) for k, v in metrics.items()})
        return metrics

    trainer.forward_backward = recording
    logged = trainer.train_step()
    assert len(seen) == 3
    for key in ("loss", "ce", "z_loss", "log_z"):
        assert logged[key] == sum(m[key] / 3 for m in seen), key  # exact: the same float64 operations
    assert logged["grad_norm"] > 0
