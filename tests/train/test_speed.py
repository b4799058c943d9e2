"""Model FLOPs per token and the measured matmul peak (`kamado.train.speed`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kamado.config import ModelConfig
from kamado.model.transformer import Transformer
from kamado.train import speed
from kamado.train.speed import SpeedMeter, flops_per_token, matmul_params, matmul_plan, measure_matmul_peak


@pytest.mark.parametrize("kv", [1, 2, 4])
def test_matmul_params_are_the_weights_of_every_linear_layer(kv):
    cfg = ModelConfig(vocab_size=97, d_model=64, n_layers=3, n_heads=4, n_kv_heads=kv, ffn_hidden=80, max_seq_len=16)
    model = Transformer(cfg)
    counted = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert matmul_params(cfg) == counted


def test_flops_per_token_by_hand():
    # d=8, 2 heads of 4, 1 kv head, ffn 16, vocab 10, 1 layer, T = 5:
    # attention 8*(2+2)*4 + 2*4*8 = 192; mlp 3*8*16 = 384; head 8*10 = 80 -> N = 656
    # 6N = 3936; 12 * L * d * T = 12 * 1 * 8 * 5 = 480
    cfg = ModelConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=16, max_seq_len=8)
    assert matmul_params(cfg) == 656
    assert flops_per_token(cfg, 5) == 3936 + 480
    # two layers: attention and mlp twice (2 * 576 + 80 = 1232 -> 6N = 7392), attention FLOPs 12 * 2 * 8 * 5 = 960
    two = ModelConfig(vocab_size=10, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=16, max_seq_len=8)
    assert matmul_params(two) == 1232
    assert flops_per_token(two, 5) == 7392 + 960


class _Clock:
    """perf_counter advancing by `tick` seconds on every read."""

    def __init__(self, tick: float):
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def test_measured_peak_is_two_n_cubed_over_the_best_time(monkeypatch):
    monkeypatch.setattr(speed.time, "perf_counter", _Clock(0.25))
    # every timed product reads 0.25 s: 2 * 64^3 / 0.25 flop/s
    assert measure_matmul_peak(torch.float32, n=64, seconds=1.0) == pytest.approx(2 * 64**3 / 0.25)


def test_the_timing_loop_runs_for_its_seconds_and_times_products_in_the_given_dtype(monkeypatch):
    seen = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: seen.append((a.dtype, b.dtype)) or real_mm(a, b))
    monkeypatch.setattr(speed.time, "perf_counter", _Clock(0.25))
    measure_matmul_peak(n=8)  # default: bf16, about one second
    # reads: start 0.25; check 0.5 (elapsed 0.25 < 1), t0 0.75, product, 1.0; check 1.25: elapsed exactly 1.0 is
    # not < 1, so the loop ends: the warm-up + 1 timed product (2 s, or <=, would time more)
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 2
    seen.clear()
    measure_matmul_peak(torch.float32, n=8, seconds=1.0)
    assert seen == [(torch.float32, torch.float32)] * 2


def test_a_slow_matmul_reads_as_slow(monkeypatch):
    monkeypatch.setattr(speed.time, "perf_counter", _Clock(1e9))  # 1e9 s per product: far below 1 flop/s
    # start 1e9; check 2e9 (elapsed 1e9 < 3e9), t0 3e9, product, 4e9; check 5e9 ends it: one product of 1e9 s
    assert measure_matmul_peak(torch.float32, n=64, seconds=3e9) == pytest.approx(2 * 64**3 / 1e9)


def test_matmul_plan_by_device():
    assert matmul_plan("cuda") == matmul_plan("cuda:1") == matmul_plan(torch.device("cuda", 0)) == (8192, 10)
    assert matmul_plan("cpu") == (2048, 1)


def test_measuring_does_not_move_the_training_rng():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    peak = measure_matmul_peak(torch.float32, n=64, seconds=0.05)
    assert torch.equal(before, torch.get_rng_state())
    assert peak > 1e6  # a 64^3 float32 matmul takes well under 0.5 s anywhere


def test_speed_meter_reads_tokens_per_second_and_mfu(monkeypatch):
    clock = _Clock(0.0)
    monkeypatch.setattr(speed.time, "perf_counter", clock)
    meter = SpeedMeter(flops_per_token=100.0, peak_flops=1e6)
    meter.add(3000)
    meter.add(1000)
    clock.t = 2.0
    got = meter.read()
    assert got == {"tokens_per_s": 2000.0, "mfu": pytest.approx(2000 * 100 / 1e6)}
    clock.t = 3.0  # read() restarts the window
    meter.add(500)
    assert meter.read()["tokens_per_s"] == 500.0
    assert SpeedMeter(1.0, 0.0).read()["mfu"] == 0.0  # unknown peak: no MFU, not a division by zero
    tiny = SpeedMeter(flops_per_token=1.0, peak_flops=1.0)  # any positive peak is a peak, even 1 flop/s
    tiny.add(10)
    clock.t = 4.0
    assert tiny.read()["mfu"] == pytest.approx(10.0)
