"""Cross-entropy + Z-loss on vocabulary-sharded logits (tensor parallelism), without gathering the vocabulary.

Each tensor-parallel rank holds logits for its slice [lo, hi) of the vocabulary. The softmax normaliser is a
distributed logsumexp (Megatron-LM's vocab-parallel cross-entropy, Shoeybi et al. 2019):

    m      = max over ranks of the local row maxima                   (all-reduce MAX; a constant for autograd)
    log Z  = m + log Σ_ranks Σ_local exp(logit − m)                   (all-reduce SUM, differentiable)
    logit[target] = Σ_ranks (the local logit if the target is in [lo, hi), else 0)   (all-reduce SUM)
    loss   = mean_t(log Z − logit[target]) + coef · mean_t((log Z)²)    over scored tokens, in float32

so the Z-loss (PaLM §5) is computed from the same sharded log Z. Every rank computes the same (replicated) loss, so the
gradient of a summed quantity is already the same on every rank: the SUM all-reduce passes gradients through
unchanged (Megatron's "reduce forward, identity backward"), giving each rank the gradient of its own slice. (torch's
differentiable `all_reduce` would sum the gradients again, which is right for a loss summed over ranks, not here.)
With one rank (no group) this is `kamado.model.loss.lm_loss`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kamado.model.loss import IGNORE_INDEX, LossOutput, lm_loss


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _sum_over_ranks(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _SumOverRanks.apply(x, group)


def vocab_parallel_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, z_loss_coef: float, group: dist.ProcessGroup | None
) -> LossOutput:
    """logits [..., V/tp] (this rank's vocabulary slice, rank r holding [r·V/tp, (r+1)·V/tp)), targets [...]."""
    if group is None or dist.get_world_size(group) == 1:
        return lm_loss(logits, targets, z_loss_coef)
    local = logits.reshape(-1, logits.shape[-1]).float()
    t = targets.reshape(-1)
    width = local.shape[-1]
    lo = dist.get_rank(group) * width
    valid = t != IGNORE_INDEX
    count = valid.sum()
    n = count.clamp_min(1)
    m = local.detach().amax(dim=-1)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    sum_exp = _sum_over_ranks((local - m[:, None]).exp().sum(dim=-1), group)
    lse = m + sum_exp.log()
    mine = (t >= lo) & (t < lo + width)
    picked = local.gather(1, (t - lo).clamp(0, width - 1)[:, None]).squeeze(1) * mine
    target_logit = _sum_over_ranks(picked, group)
    ce = ((lse - target_logit) * valid).sum() / n
    z = ((lse * lse) * valid).sum() / n
    loss = ce + z_loss_coef * z if z_loss_coef > 0 else ce
    return LossOutput(loss, ce.detach(), z.detach(), count, ((lse * valid).sum() / n).detach())
