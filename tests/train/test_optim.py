"""Schedules (pure functions of the step), weight-decay groups, gradient accumulation."""

import itertools
import math

import pytest
import torch

from kamado.config import ModelConfig, OptimConfig, ScheduleConfig
from kamado.errors import ConfigError
from kamado.model.transformer import Transformer
from kamado.train.optim import build_optimizer, lr_at
from kamado.train.trainer import Trainer


def test_warmup_then_cosine_to_min_lr():
    s = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 110, 1.0, s) == pytest.approx(0.1)
    assert lr_at(9, 110, 1.0, s) == pytest.approx(1.0)
    assert lr_at(60, 110, 1.0, s) == pytest.approx(0.55)  # halfway through the cosine: (1 + 0.1) / 2
    assert lr_at(110, 110, 1.0, s) == pytest.approx(0.1)
    lrs = [lr_at(i, 110, 1.0, s) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_warmup_stable_decay():
    s = ScheduleConfig(kind="wsd", warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_at(50, 100, 2.0, s) == 2.0 and lr_at(79, 100, 2.0, s) == 2.0  # stable phase
    assert lr_at(90, 100, 2.0, s) == pytest.approx(1.0)  # halfway through the linear decay
    assert lr_at(100, 100, 2.0, s) == pytest.approx(0.0)


def test_unknown_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match=r"schedule\.kind"):
        lr_at(50, 100, 1.0, ScheduleConfig(kind="linear", warmup_steps=0))


def test_norm_weights_are_not_decayed():
    m = Transformer(ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32))
    opt = build_optimizer(m, OptimConfig(weight_decay=0.1))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(m.parameters()))


class SliceLoader:
    def __init__(self, data, batch):
        self.data, self.batch, self.i = data, batch, 0

    def next_batch(self):
        x = self.data[self.i : self.i + self.batch]
        self.i += self.batch
        return x[:, :-1], x[:, 1:]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def test_gradient_accumulation_equals_one_big_batch(tiny_cfg, tmp_path):
    tiny_cfg.train.dtype = "fp32"
    data = torch.randint(0, 64, (8, 17))
    grads = []
    for batch, accum in ((8, 1), (2, 4)):
        tiny_cfg.train.batch_size, tiny_cfg.train.grad_accum = batch, accum
        torch.manual_seed(0)
        t = Trainer(tiny_cfg, Transformer(tiny_cfg.model), SliceLoader(data, batch), tmp_path / f"r{accum}")
        out = t.train_step()
        grads.append((out, [p.grad.clone() for p in t.model.parameters()]))
    (a, ga), (b, gb) = grads
    assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5) and math.isclose(
        a["grad_norm"], b["grad_norm"], rel_tol=1e-4
    )
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)


def test_adamw_uses_the_fused_kernel():
    """The fused AdamW (CPU and CUDA since torch 2.4) is several times faster than the for-each one; both give the
    same updates, so only this pins the choice."""
    m = Transformer(ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32))
    assert build_optimizer(m, OptimConfig()).defaults["fused"] is True
