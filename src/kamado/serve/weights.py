"""The engine's own copy of the model for serving: weights cast to the serving dtype and, on a CPU in bf16, every
Linear pre-packed once for oneDNN.

Why pack: decoding reads every weight once per step for only 1-32 rows, so a step is bound by memory bandwidth.
On the 2-core EPYC (AVX512-BF16), aten's bf16 matmul reads the weights at ~15 GB/s for one row; oneDNN's linear
on a weight reordered into its blocked layout reads the same bytes at ~40 GB/s (single thread, weights larger
than the cache; LOG.md), and its output equals aten's bit for bit. Inductor's freezing pass does the same to a
compiled graph (`mkldnn._linear_pointwise`); doing it here makes eager decoding fast without a compile.

The copy is a snapshot: a model trained after the engine was built is not seen by it (pass dtype=None to serve
the model's live weights, unpacked). RoPE tables stay in float32.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kamado.model.transformer import Transformer


class PackedLinear(nn.Module):
    """`nn.Linear` without bias whose weight is kept in oneDNN's blocked layout (bf16, CPU); same outputs."""

    packed: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        assert linear.bias is None
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)  # 1: a hint of the rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def serving_copy(model: Transformer, dtype: torch.dtype | None, pack: bool = True) -> Transformer:
    """The model itself when no dtype is asked for; else a copy in eval mode with its weights in `dtype`, and
    its Linear layers packed where `can_pack` says oneDNN runs them faster."""
    if dtype is None:
        return model.eval()
    served = copy.deepcopy(model).eval()
    for p in served.parameters():
        p.requires_grad_(False)
        p.data = p.data.to(dtype)
    if pack and can_pack(served.embed.weight.device, dtype):
        for module in list(served.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    setattr(module, name, PackedLinear(child))
    return served
