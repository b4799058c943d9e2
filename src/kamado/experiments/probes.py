"""Probes for the instabilities Wortsman et al. (2023) trace at high learning rates, off unless attached.

- **Attention-logit growth**: the largest pre-softmax attention logit q·k/√d of each layer (over the heads, the
  batch, and the causal query/key pairs a token may attend to), read from the q and k the model computes after
  QK-Norm and RoPE (`Attention.probe`). Without QK-Norm these grow until the softmax collapses to one key.
- **Output-logit divergence**: the mean log Z = logsumexp of the output logits, which the loss already reduces
  (`LossOutput.log_z`); Z-loss pulls it to 0, and without it (or weight decay) it drifts far below.
Nothing here changes the model's computation: the probe reads detached copies, and detaching it restores the
attribute the model checks (`None`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kamado.model.transformer import Attention
from kamado.train.callbacks import Callback
from kamado.train.trainer import Trainer


def max_attention_logit(q: torch.Tensor, k: torch.Tensor) -> float:
    """q [B, H, T, D], k [B, H_kv, T, D] (grouped-query: H_kv divides H); causal pairs (key j <= query i) only."""
    with torch.no_grad():
        q, k = q.detach().float(), k.detach().float()
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        T, S = scores.shape[-2:]
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        return float(scores.masked_fill(~allowed, float("-inf")).amax())


class AttentionLogitProbe:
    """Attach to a model; after each forward pass, `read()` gives {layer: max logit} and starts afresh."""

    def __init__(self) -> None:
        self.layers: list[Attention] = []
        self.values: dict[int, float] = {}

    def attach(self, model: nn.Module) -> AttentionLogitProbe:
        self.layers = [m for m in model.modules() if isinstance(m, Attention)]
        for attn in self.layers:
            attn.probe = self._record
        return self

    def detach(self) -> None:
        for attn in self.layers:
            attn.probe = None
        self.layers = []

    def _record(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> None:
        value = max_attention_logit(q, k)
        self.values[layer] = max(value, self.values.get(layer, -math.inf))

    def read(self) -> dict[int, float]:
        values, self.values = self.values, {}
        return values


class ProbeLogger(Callback):
    """A trainer callback: each step's row gets `attn_logit_L` (the layer's largest attention logit during the
    step's forward passes); validation passes are not counted."""

    def __init__(self, probe: AttentionLogitProbe):
        self.probe = probe

    def on_train_start(self, trainer: Trainer) -> None:
        self.probe.read()

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        for layer, value in sorted(self.probe.read().items()):
            metrics[f"attn_logit_{layer}"] = value

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.probe.read()  # validation forwards: discarded
