"""Language-model loss: cross-entropy plus Z-loss.

Z-loss (PaLM, Chowdhery et al. 2022, §5; used by PLaMo-100B) pushes the softmax normaliser log Z = logsumexp(logits)
towards 0, which keeps the output logits from drifting and stabilises bf16/FP8 training:

    loss = CE + coef · mean_t( logsumexp(logits_t)² )      over non-ignored tokens t, in float32.

PaLM uses coef = 1e-4. CE and Z-loss are returned separately so both can be logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    loss: torch.Tensor  # what is back-propagated: ce + coef · z_loss
    ce: torch.Tensor  # mean cross-entropy (nats/token), detached
    z_loss: torch.Tensor  # mean logsumexp², detached (before the coefficient)
    num_tokens: int


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss_coef: float = 1e-4) -> LossOutput:
    """logits [..., V], targets [...] (IGNORE_INDEX = not scored). Computed in float32."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1)
    valid = targets != IGNORE_INDEX
    n = int(valid.sum())
    if n == 0:
        zero = logits.sum() * 0.0
        return LossOutput(zero, zero.detach(), zero.detach(), 0)
    lse = torch.logsumexp(logits, dim=-1)
    safe_targets = targets.clamp_min(0)
    target_logit = logits.gather(1, safe_targets[:, None]).squeeze(1)
    # CE = logsumexp - logit[target]; shares the logsumexp with the Z-loss instead of a second softmax.
    ce = ((lse - target_logit) * valid).sum() / n
    z = ((lse * lse) * valid).sum() / n
    loss = ce + z_loss_coef * z if z_loss_coef > 0 else ce
    return LossOutput(loss, ce.detach(), z.detach(), n)

