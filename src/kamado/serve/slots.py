"""KV cache for serving: one slot per running sequence, position j of a sequence at index j of its slot.

The model's attention calls `update(layer, k, v)` with the new keys/values of the rows being run; they are written
at each row's own positions and the rows' whole history (up to the furthest position in the batch) comes back as
a view of the slot range, not a copy. Attention masks keys past each row's position (the model does that when
`pos` is a tensor), so stale entries of a slot's previous sequence are never read.
"""

from __future__ import annotations

import torch

from kamado.model.transformer import Transformer


class SlotCache:
    def __init__(self, model: Transformer, n_slots: int, max_len: int, dtype: torch.dtype | None = None) -> None:
        c = model.cfg
        dtype = dtype or model.lm_head.weight.dtype
        device = model.lm_head.weight.device
        shape = (c.n_layers, n_slots, c.n_kv_heads, max_len, c.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.n_slots, self.max_len = n_slots, max_len
        self._lo, self._hi, self._width = 0, 0, 0
        self._rows = torch.zeros(0, 1, dtype=torch.long)
        self._where = torch.zeros(0, 0, dtype=torch.long)

    def forward(self, model: Transformer, x: torch.Tensor, lo: int, hi: int, pos: torch.Tensor) -> torch.Tensor:
        """Logits of tokens x [hi - lo, T] for slots lo..hi-1, row i starting at position pos[i]."""
        T = x.shape[1]
        pos = pos.to(x.device)
        if int(pos.max()) + T > self.max_len:
            raise ValueError(f"position {int(pos.max()) + T} is past the cache's {self.max_len}")
        self._lo, self._hi, self._width = lo, hi, int(pos.max()) + T
        self._rows = torch.arange(hi - lo, device=x.device)[:, None]
        self._where = pos[:, None] + torch.arange(T, device=x.device)
        out = model(x, cache=self, pos=pos)
        assert isinstance(out, torch.Tensor)
        return out

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ks, vs = self.k[layer, self._lo : self._hi], self.v[layer, self._lo : self._hi]  # views [B, H, L, D]
        # advanced indices on dims 0 and 2 put the indexed dims first: [B, T, H, D]
        ks[self._rows, :, self._where] = k.transpose(1, 2).to(ks.dtype)
        vs[self._rows, :, self._where] = v.transpose(1, 2).to(vs.dtype)
        return ks[:, :, : self._width], vs[:, :, : self._width]
