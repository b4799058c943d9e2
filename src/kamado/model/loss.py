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


class _LinearLMLoss(torch.autograd.Function):
    """Output head + CE + Z-loss in row chunks, gradients computed during the forward pass.

    The full [tokens, vocab] float32 logits tensor never exists: each chunk of rows is projected, reduced to
    (CE, logsumexp) and turned into its logit gradient in place, then into the gradients of the hidden states and
    of the head weight (the approach of Liger-Kernel's fused linear cross-entropy). On a CPU this removes the
    dominant memory-bound work of the step (several passes over a 4096×32000 float32 tensor); on a GPU it removes
    the largest activation. The backward pass only scales the stored gradients by the incoming scalar.

    d loss / d logit_j = (softmax_j · (1 + 2·coef·lse) − [j = target]) / n     for each scored row.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, coef, chunk_rows, compute_dtype, need_grad):
        d = hidden.shape[-1]
        h = hidden.reshape(-1, d).to(compute_dtype)
        w = weight.to(compute_dtype)
        t = targets.reshape(-1)
        valid = t != IGNORE_INDEX
        n = max(int(valid.sum()), 1)
        ce_sum = torch.zeros((), dtype=torch.float32)
        z_sum = torch.zeros((), dtype=torch.float32)
        # gradients are filled during the forward pass (empty when no gradient is needed, e.g. in evaluation)
        grad_h = torch.empty_like(h) if need_grad else h.new_empty(0)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32) if need_grad else h.new_empty(0)
        with torch.autocast("cpu", enabled=False):
            for s in range(0, h.shape[0], chunk_rows):
                hc, tc, vc = h[s : s + chunk_rows], t[s : s + chunk_rows], valid[s : s + chunk_rows]
                logits = (hc @ w.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                safe_t = tc.clamp_min(0)
                target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
                ce_sum += ((lse - target_logit) * vc).sum()
                z_sum += ((lse * lse) * vc).sum()
                if need_grad:
                    scale = vc.float() / n
                    probs = logits.sub_(lse[:, None]).exp_()  # in place: logits become softmax
                    probs.mul_(((1 + 2 * coef * lse) * scale)[:, None])
                    probs.scatter_add_(1, safe_t[:, None], -scale[:, None])
                    g = probs.to(compute_dtype)
                    grad_h[s : s + chunk_rows] = g @ w
                    grad_w.add_(g.T @ hc)
        if need_grad:
            ctx.save_for_backward(grad_h.view(hidden.shape).to(hidden.dtype), grad_w.to(weight.dtype))
        ce, z = ce_sum / n, z_sum / n
        ctx.mark_non_differentiable(ce, z)
        return ce + coef * z, ce, z

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_z):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None, None, None


@torch.compiler.disable
def linear_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    z_loss_coef: float = 1e-4,
    chunk_rows: int = 256,
) -> LossOutput:
    """`lm_loss(hidden @ weight.T, targets)` without materialising the logits; same values and gradients.

    Runs the matmuls in the autocast dtype when autocast is on (as `nn.Linear` would), reductions in float32.
    """
    compute_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    n = int((targets != IGNORE_INDEX).sum())
    loss, ce, z = _LinearLMLoss.apply(hidden, weight, targets, z_loss_coef, chunk_rows, compute_dtype, need_grad)
    return LossOutput(loss, ce.detach(), z.detach(), n)
