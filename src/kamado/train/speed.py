"""Throughput and model FLOPs utilisation (MFU).

Model FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B), for a forward + backward pass:

    flops/token = 6 · N  +  12 · L · d · T

N = parameters taking part in matmuls (everything but the input embedding, which is a lookup; the untied output
head counts), L layers, d = n_heads · head_dim, T = sequence length. The second term is attention's QKᵀ and AV
products (counted in full, as PaLM does, although a causal kernel skips half of them).

MFU = tokens/s · flops/token / peak FLOP/s. The peak is stated in the config (`train.peak_flops`) or measured at
start-up as the best of a few large matmuls in the training dtype, so on a CPU the percentage is relative to what
this machine's matmul actually reaches, not a datasheet number.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kamado.config import ModelConfig

if TYPE_CHECKING:  # torch is imported where a matmul is timed: `kamado plan` and `kamado --help` go without it
    import torch


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in matmuls (no embedding, no norms)."""
    d, hd = cfg.d_model, cfg.head_dim
    attn = d * (cfg.n_heads + 2 * cfg.n_kv_heads) * hd + cfg.n_heads * hd * d
    mlp = 3 * d * cfg.ffn_hidden
    return cfg.n_layers * (attn + mlp) + d * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len


def matmul_plan(device: str | torch.device) -> tuple[int, int]:
    """(n, products per timing) for `measure_matmul_peak`: 8192 and 10 on a GPU (one product is too short to time
    between synchronisations, and smaller ones stay below its peak), 2048 and 1 on a CPU."""
    import torch

    return (8192, 10) if torch.device(device).type == "cuda" else (2048, 1)


def measure_matmul_peak(
    dtype: torch.dtype | None = None,
    n: int | None = None,
    seconds: float = 1.0,
    device: str | torch.device = "cpu",
) -> float:
    """Best FLOP/s of an n×n×n matmul in `dtype` (bf16 by default) on `device` over about `seconds` of repeats. By
    default n is 2048 on a CPU and 8192 on a GPU (large enough to reach its peak); on a GPU each timing covers 10
    products between synchronisations."""
    import torch

    dtype = dtype or torch.bfloat16
    gpu = torch.device(device).type == "cuda"
    size, reps = matmul_plan(device)
    n = n or size
    gen = torch.Generator().manual_seed(0)  # a private generator: measuring must not shift the training RNG
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(device)

    torch.mm(a, b)  # warm-up: kernel selection, page faults
    sync()
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync()
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0))
    return best


class SpeedMeter:
    """Tokens/s and MFU over the steps since the last `read()`."""

    def __init__(self, flops_per_token: float, peak_flops: float):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.tokens = 0
        self.t0 = time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def read(self) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        tps = self.tokens / dt
        self.tokens, self.t0 = 0, time.perf_counter()
        mfu = tps * self.flops_per_token / self.peak_flops if self.peak_flops > 0 else 0.0
        return {"tokens_per_s": tps, "mfu": mfu}
