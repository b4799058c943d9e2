"""KV cache for serving: one slot per running sequence, position j of a sequence at index j of its slot.

The model's attention calls `update(layer, k, v)` with the new keys/values of the rows being run; they are written
at each row's own positions and the rows' whole history comes back as a view of the slot range, not a copy.
Attention masks keys past each row's position (the model does that when `pos` is a tensor), so stale entries of
a slot's previous sequence, and the positions no row has reached yet, are never read.

The one decision a reader would question: attention reads the cache's whole current width (`width`, a multiple
of `block` positions that grows and shrinks with the longest sequence), not just the positions in use. A view
that cut the width at the last position would be strided per head, and a CPU bf16 batched matmul copies such an
operand into a contiguous one first: two copies of the keys and values per layer and step, which cost more than
reading up to `block` masked positions. Resizing copies the cache, once every `block` positions at most.

`run_with_cache` is the model on a batch given only tensors (tokens, positions, the cache views), so that the
engine can hand it to `torch.compile` as is: no Python ints that change every step, no read of a device value.
"""

from __future__ import annotations

import torch
from torch import nn

from kamado.model.transformer import Block, Transformer, apply_rope, decode_attention


class SlotCache:
    def __init__(
        self, model: Transformer, n_slots: int, max_len: int, dtype: torch.dtype | None = None, block: int = 128
    ) -> None:
        c = model.cfg
        self.dtype = dtype or model.embed.weight.dtype  # the embedding: the head may be packed (`serve.weights`)
        self.device = model.embed.weight.device
        self.shape = (c.n_layers, n_slots, c.n_kv_heads, 0, c.head_dim)
        self.n_slots, self.max_len, self.block = n_slots, max_len, block
        self.k = self.v = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        self.resize(min(block, max_len))

    @property
    def width(self) -> int:
        return self.k.shape[3]

    def resize(self, width: int) -> None:
        """Make room for `width` positions per slot, keeping what the first min(old, new) positions hold."""
        keep = min(width, self.width)
        shape = (*self.shape[:3], width, self.shape[4])
        k, v = (torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(2))
        k[:, :, :, :keep] = self.k[:, :, :, :keep]
        v[:, :, :, :keep] = self.v[:, :, :, :keep]
        self.k, self.v = k, v

    def fit(self, end: int) -> None:
        """Size the width for `end` positions per slot, `end` being the furthest any slot still holds or needs:
        grow to it, or shrink once the longest sequences have left (only then, so as not to resize every step)."""
        if end > self.max_len:
            raise ValueError(f"position {end} is past the cache's {self.max_len}")
        want = min(self.max_len, -(-end // self.block) * self.block)
        if want > self.width or want < self.width // 2:
            self.resize(want)

    def views(self, lo: int, hi: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots lo..hi-1 [layers, B, H_kv, width, D], contiguous per layer, with a width
        that holds position `end` - 1 (grown if it did not)."""
        if end > self.width:
            self.fit(end)
        return self.k[:, lo:hi], self.v[:, lo:hi]

    def forward(
        self, model: Transformer, x: torch.Tensor, lo: int, hi: int, pos: torch.Tensor, last_only: bool = False
    ) -> torch.Tensor:
        """Logits of tokens x [hi - lo, T] for slots lo..hi-1, row i starting at position pos[i] (a tensor on the
        CPU: its largest value is read there); with `last_only`, of the last position only ([B, 1, vocab])."""
        k, v = self.views(lo, hi, int(pos.max()) + x.shape[1])
        return run_with_cache(model, x, pos.to(x.device), k, v, last_only)


class _Views:
    """The `LayerCache` that `run_with_cache` hands to the model: writes rows at their positions into views."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, T: int) -> None:
        self.k, self.v = k, v
        _, B, H, W, _ = k.shape
        # flat row of [B, H, W] for every new entry, in the order of k.reshape(-1, D) for new keys [B, H, T, D]
        rows = torch.arange(B * H, device=pos.device).view(B, H, 1) * W
        self.index = (rows + (pos[:, None] + torch.arange(T, device=pos.device))[:, None, :]).flatten()

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ks, vs = self.k[layer], self.v[layer]  # [B, H, W, D], contiguous
        D = ks.shape[-1]
        ks.view(-1, D).index_copy_(0, self.index, k.reshape(-1, D).to(ks.dtype))
        vs.view(-1, D).index_copy_(0, self.index, v.reshape(-1, D).to(vs.dtype))
        return ks, vs


def run_with_cache(
    model: Transformer, x: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, last_only: bool
) -> torch.Tensor:
    """Logits of tokens x [B, T] at per-row start positions pos [B], with the cache views k/v [L, B, H, W, D]
    (W covers every row's last position); the new keys/values are written into the views."""
    h = model.hidden_states(x, _Views(k, v, pos, x.shape[1]), pos)
    return model.lm_head(h[:, -1:] if last_only else h)


def decode_step(
    model: Transformer, x: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Logits [B, vocab] for one new token per row, tokens x [B] at positions pos [B], with the cache views k/v
    [L, B, H_kv, W, D] (the new keys/values are written at pos).

    The model's `Block` / `Attention` forward for this one case, written with fewer operations: activations
    [B, d] instead of [B, 1, d], and what is the same in every layer (RoPE rows, mask, cache rows) done once per
    step. At batch 1 a decode step is ~600 small operations besides the matmuls, and on a CPU each costs a few
    microseconds; this path saves ~10% of the step (LOG.md). Same function, same order of operations:
    tests/serve/test_engine.py pins its logits to `run_with_cache`'s. It calls the blocks' parts, not the blocks:
    the engine runs `run_with_cache` instead while a Block or Attention has hooks (`skips_hooks`)."""
    c = model.cfg
    B, H, n_kv, D = x.shape[0], c.n_heads, c.n_kv_heads, c.head_dim
    W = k.shape[3]
    cos, sin = model.rope_cos[pos][:, None], model.rope_sin[pos][:, None]  # [B, 1, D]
    blocked = (torch.arange(W, device=pos.device) > pos[:, None])[:, None]  # [B, 1, W]
    bias = torch.zeros(blocked.shape, device=pos.device).masked_fill_(blocked, float("-inf"))
    index = (torch.arange(B * n_kv, device=pos.device).view(B, n_kv) * W + pos[:, None]).flatten()
    h = model.embed(x)
    for block in model.layers:
        assert isinstance(block, Block)
        a = block.attn
        q, kn, vn = a.qkv_proj(block.attn_norm(h)).split([H * D, n_kv * D, n_kv * D], dim=-1)
        q, kn = q.view(B, H, D), kn.view(B, n_kv, D)
        if a.q_norm is not None and a.k_norm is not None:
            q, kn = a.q_norm(q), a.k_norm(kn)
        q, kn = apply_rope(q, cos, sin), apply_rope(kn, cos, sin)
        ks, vs = k[a.layer], v[a.layer]  # [B, H_kv, W, D], contiguous
        ks.view(-1, D).index_copy_(0, index, kn.reshape(-1, D).to(ks.dtype))
        vs.view(-1, D).index_copy_(0, index, vn.reshape(-1, D).to(vs.dtype))
        y = decode_attention(q.view(B, H, 1, D).to(vs.dtype), ks, vs, bias)
        h = h + a.o_proj(y.view(B, H * D).to(h.dtype))
        h = h + block.mlp(block.mlp_norm(h))
    return model.lm_head(model.norm(h))


def skips_hooks(model: Transformer) -> bool:
    """Whether `decode_step` would skip forward hooks: some Block or Attention (or every module) has one."""
    if nn.modules.module._global_forward_pre_hooks or nn.modules.module._global_forward_hooks:
        return True
    return any(m._forward_pre_hooks or m._forward_hooks for b in model.layers for m in (b, getattr(b, "attn", b)))
