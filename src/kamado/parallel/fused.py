"""A layout of the fused projections that any tensor-parallel degree can split into whole heads.

The model stores `qkv_proj` rows as [q | k | v] and `gate_up_proj` rows as [gate | up] (one matmul each). Cut into
`tp` contiguous row blocks, as a column-wise `Shard(0)` does, the first rank would get only query heads. So the
distributed path stores both weights *grouped*:

- `qkv_proj`: one group per key/value head g, rows [q heads of g (n_heads / n_kv_heads of them) | k_g | v_g];
- `gate_up_proj`: one group per hidden unit i, rows [gate_i | up_i].

Any `tp` dividing n_kv_heads (and ffn_hidden) then gives each rank whole groups — the query heads that share its
key/value heads, or whole SwiGLU units — and the layout does not depend on `tp`, so a DCP checkpoint saved at one
degree loads at any other. A forward hook puts each rank's output columns back into [q | k | v] / [gate | up]
order for the unchanged model code (one copy of the activation). `kamado checkpoint consolidate` ungroups.
"""

from __future__ import annotations

import torch
from torch import nn

from kamado.config import ModelConfig

QKV, GATE_UP = "attn.qkv_proj.weight", "mlp.gate_up_proj.weight"


def _qkv_order(cfg: ModelConfig) -> torch.Tensor:
    """Row index (in the model's [q | k | v] layout) of each row of the grouped layout."""
    hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    g = nh // nkv
    heads = torch.arange(nh * hd).view(nkv, g * hd)  # query rows, by key/value group
    k = nh * hd + torch.arange(nkv * hd).view(nkv, hd)
    v = (nh + nkv) * hd + torch.arange(nkv * hd).view(nkv, hd)
    return torch.cat([heads, k, v], dim=1).reshape(-1)


def _gate_up_order(cfg: ModelConfig) -> torch.Tensor:
    f = cfg.ffn_hidden
    return torch.stack([torch.arange(f), f + torch.arange(f)], dim=1).reshape(-1)


def grouped_order(name: str, cfg: ModelConfig) -> torch.Tensor | None:
    """The row order that turns parameter `name` into its grouped layout, or None for unfused parameters."""
    if name.endswith(QKV):
        return _qkv_order(cfg)
    if name.endswith(GATE_UP):
        return _gate_up_order(cfg)
    return None


def to_grouped(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Model-layout tensors → grouped layout (rows reordered; every other tensor as it is)."""
    out = {}
    for name, t in state.items():
        order = grouped_order(name, cfg)
        out[name] = t if order is None else t[order.to(t.device)]
    return out


def to_model_layout(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Grouped layout → the model's [q | k | v] / [gate | up] rows (the inverse of `to_grouped`)."""
    out = {}
    for name, t in state.items():
        order = grouped_order(name, cfg)
        out[name] = t if order is None else t[torch.argsort(order).to(t.device)]
    return out


@torch.no_grad()
def group_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Reorder the fused weights of a full (unsharded) model in place into the grouped layout."""
    for name, p in model.named_parameters():
        order = grouped_order(name, cfg)
        if order is not None:
            p.copy_(p[order.to(p.device)])


def add_ungroup_hooks(model: nn.Module, cfg: ModelConfig) -> None:
    """Hook every block's projections to put their (local) outputs back in the model's order. Registered after
    tensor parallelism and FP8 have replaced or wrapped the linears, so the hooks see the local output tensor."""
    for module in model.modules():
        attn, mlp = getattr(module, "attn", None), getattr(module, "mlp", None)
        if attn is not None and mlp is not None:
            attn.qkv_proj.kamado_groups = (cfg.n_heads // cfg.n_kv_heads, cfg.head_dim)
            attn.qkv_proj.register_forward_hook(_ungroup_qkv)
            mlp.gate_up_proj.register_forward_hook(_ungroup_gate_up)


def _ungroup_qkv(module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
    """[..., groups·(g+2)·hd] grouped columns (this rank's groups) → [q | k | v] for these groups."""
    g, hd = int(module.kamado_groups[0]), int(module.kamado_groups[1])  # type: ignore[index]
    lead = out.shape[:-1]
    x = out.view(*lead, -1, g + 2, hd)
    q, k, v = x[..., :g, :], x[..., g, :], x[..., g + 1, :]
    return torch.cat([q.reshape(*lead, -1), k.reshape(*lead, -1), v.reshape(*lead, -1)], dim=-1)


def _ungroup_gate_up(_module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
    x = out.view(*out.shape[:-1], -1, 2)
    return torch.cat([x[..., 0], x[..., 1]], dim=-1)
