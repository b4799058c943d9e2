"""One pipeline stage of the transformer: a slice of its blocks, with the embedding on the first stage and the final
norm and output head on the last. Every layout runs through this module — without pipeline parallelism there is one
stage holding everything — so the distributed step has one code path.

Parameter names are the full model's (`embed.weight`, `layers.7.attn.qkv_proj.weight`, `lm_head.weight`): the
blocks sit in a ModuleDict keyed by their index in the model. A DCP checkpoint therefore names each tensor the same
way whatever the pipeline split, which is what lets a run saved on one layout resume on another.
"""

from __future__ import annotations

import torch
from torch import nn

from kamado.model.transformer import Transformer


class ModelStage(nn.Module):
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, model: Transformer, layers: range, first: bool, last: bool):
        super().__init__()
        self.cfg = model.cfg
        self.first, self.last = first, last
        self.embed = model.embed if first else None
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layers})
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None
        self.register_buffer("rope_cos", model.rope_cos, persistent=False)
        self.register_buffer("rope_sin", model.rope_sin, persistent=False)
        self.seq_shards = 1  # tensor parallelism with sequence parallel: activations hold 1/tp of the sequence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] (first stage) or hidden states → hidden states, or logits on the last stage (this rank's
        vocabulary shard under tensor parallelism, as a plain tensor: the loss is vocab-parallel)."""
        h = self.embed(x) if self.embed is not None else x
        T = x.shape[1] if self.embed is not None else h.shape[1] * self.seq_shards
        if self.cfg.max_seq_len < T:
            raise ValueError(f"sequence of {T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for block in self.layers.values():
            h = block(h, cos, sin, None, 0)
        if self.norm is None or self.lm_head is None:
            return h
        logits = self.lm_head(self.norm(h))
        return logits.to_local() if hasattr(logits, "to_local") else logits


def split_stages(model: Transformer, layer_counts: list[int], stage_ids: list[int]) -> list[ModelStage]:
    """The stages `stage_ids` of a model cut into consecutive blocks of `layer_counts`."""
    starts = [sum(layer_counts[:i]) for i in range(len(layer_counts) + 1)]
    last = len(layer_counts) - 1
    return [ModelStage(model, range(starts[s], starts[s + 1]), s == 0, s == last) for s in stage_ids]
