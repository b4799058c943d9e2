"""Autoregressive sampling with a KV cache: greedy, temperature, top-k and top-p (nucleus), stop tokens.

The prompt is run once (prefill) and every new token then costs one position of attention against the cached
keys/values, instead of recomputing the whole prefix (tests pin the two to the same greedy tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kamado.config import SAMPLING_RANGES
from kamado.config_checks import check_fields
from kamado.model.transformer import Transformer


class KVCache:
    """Preallocated keys/values [layers, B, n_kv_heads, max_len, head_dim]; `pos` = tokens already cached."""

    def __init__(self, model: Transformer, batch_size: int, max_len: int, dtype: torch.dtype = torch.float32):
        c = model.cfg
        shape = (c.n_layers, batch_size, c.n_kv_heads, max_len, c.head_dim)
        device = model.lm_head.weight.device
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        # a negative temperature once passed for greedy and top_p 0 failed inside torch: both are ConfigErrors now
        check_fields(self, "", **SAMPLING_RANGES)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) everything outside the top-k and outside the smallest set with probability ≥ top_p."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]."""
    if p.temperature == 0:
        return logits.argmax(-1)
    # In float64 and shifted so that the top logit is 0 (the same distribution): a temperature as small as 1e-300
    # then scales the others towards -inf, where in float32 it would be 0 and the top logit would become inf, NaN.
    logits = logits.double()
    scaled = (logits - logits.amax(-1, keepdim=True)) / p.temperature
    probs = filter_logits(scaled, p.top_k, p.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.inference_mode()
def generate(model: Transformer, prompt_ids: list[int], params: SamplingParams) -> list[int]:
    """Return the new tokens (without the prompt); stops early at a stop id (which is included)."""
    if not prompt_ids:
        raise ValueError("generate needs at least one prompt token")
    prompt_ids = prompt_ids[-(model.cfg.max_seq_len - 1) :]
    max_len = min(model.cfg.max_seq_len, len(prompt_ids) + params.max_new_tokens)
    device = model.lm_head.weight.device
    gen = torch.Generator(device).manual_seed(params.seed) if params.seed is not None else None
    cache = KVCache(model, 1, max_len)
    x = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out: list[int] = []
    pos = 0
    while len(out) < params.max_new_tokens and pos + x.shape[1] <= max_len:
        logits = model(x, cache=cache, pos=pos)[:, -1]
        cache.advance(x.shape[1])
        pos += x.shape[1]
        nxt = int(sample_next(logits, params, gen)[0])
        out.append(nxt)
        if nxt in params.stop_ids:
            break
        x = torch.tensor([[nxt]], dtype=torch.long, device=x.device)
    return out
