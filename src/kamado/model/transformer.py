"""The kamado decoder-only transformer (PLaMo-100B style), in one file with no parallel code.

Pre-norm blocks: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)). Attention is grouped-query through
`F.scaled_dot_product_attention` with rotary position embeddings. **QK-Norm** (PLaMo-100B §3; the per-head form
of OLMo-2 and Qwen3): an RMSNorm with a learnable weight over `head_dim` is applied to every head's query and key
*before* RoPE, which bounds attention logits and removes the loss spikes that large learning rates cause.
Input embedding and output head are untied. The parallel plans (FSDP/TP/PP) live beside this file, never in it.

Weight init: every Linear and the embedding ~ N(0, init_std); the two projections that write into the residual
stream (attention `o_proj`, MLP `down_proj`) use init_std / sqrt(2 · n_layers) so the residual variance does not
grow with depth (GPT-2, Megatron-LM); RMSNorm weights start at 1.

Layout of fused weights (for speed: one matmul instead of three / two): `qkv_proj` rows are [q | k | v] and
`gate_up_proj` rows are [gate | up]; `kamado.serve.export_hf` splits them for Hugging Face checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kamado.config import ModelConfig
from kamado.model.loss import LossOutput, linear_lm_loss, lm_loss

# devices whose training loss is logits + `lm_loss` (compiled into the step's graph) rather than the chunked loop
LOGITS_LOSS_DEVICES = {"cuda"}


class LayerCache(Protocol):
    """What attention needs from a KV cache (see `kamado.model.generate.KVCache`)."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) with a learnable weight, run in the input's dtype.

    Casting the weight to the input dtype lets bf16 activations (e.g. q/k under autocast) use torch's fused
    kernel instead of a slow mixed-dtype fallback; the kernel accumulates in float32 either way.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_len, head_dim] for the rotate-half RoPE convention (RoFormer, Llama)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [T, D]."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Attention of one new query per row, q [B, H, 1, D], over keys/values [B, H_kv, S, D]; `bias` [B, 1, S]
    (float32) is 0 for the keys a row sees and -inf for the others (a caller decoding many layers builds it once).

    The G = H / H_kv query heads that share a key head (GQA, SDPA's `enable_gqa` order) become the rows of one
    small matrix, so each key head is read once: [B, H_kv, G, D] @ [B, H_kv, D, S]. For this shape SDPA's CPU
    kernel is 10-20x slower in bf16 (small preset, 8 and 32 rows; LOG.md). The softmax runs in float32; every row
    must see at least one key (a serving row always sees its own)."""
    B, H, _, D = q.shape
    n_kv = k.shape[1]
    scores = (q.reshape(B, n_kv, H // n_kv, D) * D**-0.5) @ k.transpose(-1, -2)
    probs = (scores.float() + bias[:, None]).softmax(-1).to(v.dtype)
    return (probs @ v).reshape(B, H, 1, D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.probe: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None  # sees q, k after RoPE

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LayerCache | None,
        pos: int | torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`pos`: the position of the first token (int), or of every token [B, T] (rows at different lengths).
        `mask` [B, 1, T, T] (True = may attend) replaces the causal mask: packed conversations (`segments`)."""
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x).split(
            [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1
        )
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv, self.head_dim)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        if self.probe is not None:  # experiments' attention-logit probe (kamado.experiments.probes); off: this check
            self.probe(self.layer, q, k)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        elif isinstance(pos, torch.Tensor):  # each query's own position [B, T] (a serving batch): key j is position j
            blocked = torch.arange(k.shape[2], device=pos.device) > pos[:, :, None]  # [B, T, S]
            if T == 1:
                bias = torch.zeros(blocked.shape, device=x.device).masked_fill_(blocked, float("-inf"))
                y = decode_attention(q, k, v, bias)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked[:, None], enable_gqa=True)
        elif T > 1 and pos > 0:  # chunked prefill after earlier tokens: explicit mask over [past | chunk]
            S = k.shape[2]
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:  # training / first prefill (causal), or one decoded token attending to everything before it
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    """FFN(x) = W_down(silu(W_gate x) * W_up x) (Shazeer 2020), gate and up fused into one matmul."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.d_model, 2 * cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(
        self, x, cos, sin, cache: LayerCache | None, pos: int | torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, pos, mask)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        std, out_std = self.cfg.init_std, self.cfg.init_std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:  # RMSNorm weights
                p.fill_(1.0)
            else:
                nn.init.normal_(p, 0.0, out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std)
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def hidden_states(
        self,
        idx: torch.Tensor,
        cache: LayerCache | None = None,
        pos: int | torch.Tensor = 0,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, d] for tokens `idx` [B, T] at positions pos..pos+T-1.

        `pos` may be a tensor [B] of per-row start positions (rows of a serving batch at different lengths); the
        cache then holds position j of every row at index j and keys past a row's own position are masked.
        `segments` [B, T] packs several sequences in a row (SFT): equal ids are one sequence, whose positions
        restart at 0 and whose tokens attend only within it (causally), so nothing leaks between them."""
        T = idx.shape[1]
        if segments is not None:
            return self._packed_hidden_states(idx, segments)
        if not isinstance(pos, torch.Tensor) and pos + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {pos + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        if isinstance(pos, torch.Tensor):  # checked by the caller: reading pos.max() here would wait for the device
            pos = pos[:, None] + torch.arange(T, device=pos.device)  # [B, T]: the blocks take each token's position
            cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]  # [B, 1, T, D]
        else:
            cos, sin = self.rope_cos[pos : pos + T], self.rope_sin[pos : pos + T]
        x = self.embed(idx)
        for block in self.layers:
            x = block(x, cos, sin, cache, pos)
        return self.norm(x)

    def _packed_hidden_states(self, idx: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if self.cfg.max_seq_len < T:
            raise ValueError(f"sequence of {T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        at = torch.arange(T, device=idx.device).expand_as(segments)
        starts = torch.ones_like(segments, dtype=torch.bool)
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
        pos = at - torch.where(starts, at, 0).cummax(dim=1).values  # [B, T]: offset from the segment's start
        cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
        mask = ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]  # [B, 1, T, T]
        x = self.embed(idx)
        for block in self.layers:
            x = block(x, cos, sin, None, 0, mask)
        return self.norm(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        z_loss_coef: float = 0.0,
        cache: LayerCache | None = None,
        pos: int | torch.Tensor = 0,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor | LossOutput:
        """Logits [B, T, vocab]; or, given `targets`, the training loss (CE + Z-loss, `kamado.model.loss`).

        On a CPU the loss is computed chunk by chunk without materialising the logits (`linear_lm_loss`: 1.2× HF
        compiled there). On a GPU the logits + `lm_loss` path is used: it compiles into the step's graph, which
        the chunked loop cannot (H200: 1.16× HF compiled at 1B vs 1.01× for the chunked loop; LOG.md)."""
        h = self.hidden_states(idx, cache, pos, segments)
        if targets is None:
            return self.lm_head(h)
        if h.device.type in LOGITS_LOSS_DEVICES:
            return lm_loss(self.lm_head(h), targets, z_loss_coef)
        return linear_lm_loss(h, self.lm_head.weight, targets, z_loss_coef)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embedding else n
