"""Language-model loss: cross-entropy plus Z-loss.

Z-loss (PaLM, Chowdhery et al. 2022, §5; used by PLaMo-100B) pushes the softmax normaliser log Z = logsumexp(logits)
towards 0, which keeps the output logits from drifting and stabilises bf16/FP8 training:

    loss = CE + coef · mean_t( logsumexp(logits_t)² )      over non-ignored tokens t, in float32.

PaLM uses coef = 1e-4. CE and Z-loss are returned separately so both can be logged.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    loss: torch.Tensor  # what is back-propagated: ce + coef · z_loss
    ce: torch.Tensor  # mean cross-entropy (nats/token), detached
    z_loss: torch.Tensor  # mean logsumexp², detached (before the coefficient)
    token_count: torch.Tensor  # scored tokens, as a tensor: reading it as a number waits for the device
    log_z: torch.Tensor | None = None  # mean logsumexp (log Z of the output softmax), detached: what Z-loss pulls to 0

    @property
    def num_tokens(self) -> int:
        return int(self.token_count)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss_coef: float = 1e-4) -> LossOutput:
    """logits [..., V], targets [...] (IGNORE_INDEX = not scored). Computed in float32."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1)
    valid = targets != IGNORE_INDEX
    count = valid.sum()
    n = count.clamp_min(1)  # no int(): on a GPU that would wait for the device and break a compiled graph
    lse = torch.logsumexp(logits, dim=-1)
    safe_targets = targets.clamp_min(0)
    target_logit = logits.gather(1, safe_targets[:, None]).squeeze(1)
    # CE = logsumexp - logit[target]; shares the logsumexp with the Z-loss instead of a second softmax.
    ce = ((lse - target_logit) * valid).sum() / n  # all ignored: 0, with a (zero) gradient path
    z = ((lse * lse) * valid).sum() / n
    loss = ce + z_loss_coef * z if z_loss_coef > 0 else ce
    log_z = ((lse * valid).sum() / n).detach()
    return LossOutput(loss, ce.detach(), z.detach(), count, log_z)


_WORKSPACE = threading.local()  # per thread: two threads computing a loss at once must not share buffers


def _workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A work buffer kept from one call to the next (in this thread), so that steps after the first do not
    page-fault it in again. `release_workspace()` frees them."""
    numel = math.prod(shape)
    buffers: dict[str, torch.Tensor] = _WORKSPACE.__dict__.setdefault("buffers", {})
    buf = buffers.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
        buf = buffers[name] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel].view(shape)


def release_workspace() -> None:
    """Free this thread's loss work buffers (e.g. after training, before serving in the same process)."""
    _WORKSPACE.__dict__.pop("buffers", None)


class _LinearLMLoss(torch.autograd.Function):
    """Output head + CE + Z-loss in row chunks, gradients computed during the forward pass.

    The full [tokens, vocab] float32 logits tensor never exists: each chunk of rows is projected, reduced to
    (CE, logsumexp) and turned into its logit gradient in place, then into the gradients of the hidden states and
    of the head weight (the approach of Liger-Kernel's fused linear cross-entropy). The backward pass only scales
    the stored gradients by the incoming scalar.

    On a CPU the head is a third of the step's FLOPs, and what its three matmuls leave over is memory traffic and
    page faults (a fresh tensor of tens of megabytes is faulted in page by page on first touch, which costs more
    than several arithmetic passes over it). So each chunk works in buffers allocated once per call: the logits
    buffer is overwritten by their gradient, the softmax runs in place in one float32 buffer, and the gradients
    handed to autograd are scaled in place rather than copied.

    d loss / d logit_j = (softmax_j · (1 + 2·coef·lse) − [j = target]) / n     for each scored row.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, coef, chunk_rows, compute_dtype, need_grad):
        d = hidden.shape[-1]
        h = hidden.reshape(-1, d).to(compute_dtype)
        w = weight.to(compute_dtype)
        t = targets.reshape(-1, 1)
        valid = t != IGNORE_INDEX
        n = max(int(valid.sum()), 1)
        ce_sum = h.new_zeros((), dtype=torch.float32)
        z_sum = h.new_zeros((), dtype=torch.float32)
        lse_sum = h.new_zeros((), dtype=torch.float32)
        rows = min(chunk_rows, h.shape[0])
        logits = _workspace("logits", (rows, w.shape[0]), compute_dtype, h.device)  # then their gradient
        x = _workspace("x", logits.shape, torch.float32, h.device)  # float32 work buffer for the softmax
        if need_grad:  # filled during the forward pass
            grad_h = torch.empty_like(h)
            grad_w = h.new_zeros(weight.shape, dtype=torch.float32)
            grad_w_chunk = _workspace("grad_w_chunk", w.shape, compute_dtype, h.device)
            grad_w_chunk32 = _workspace("grad_w_chunk32", w.shape, torch.float32, h.device)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, h.shape[0], rows):
                hc, tc, vc = h[s : s + rows], t[s : s + rows].clamp_min(0), valid[s : s + rows]
                lg, xc = torch.mm(hc, w.T, out=logits[: len(hc)]), x[: len(hc)]
                xc.copy_(lg)
                target_logit = xc.gather(1, tc)
                m = xc.amax(dim=1, keepdim=True)
                sum_exp = xc.sub_(m).exp_().sum(dim=1, keepdim=True)  # xc = exp(logit - max) from here on
                lse = m + sum_exp.log()
                ce_sum += ((lse - target_logit) * vc).sum()
                z_sum += ((lse * lse) * vc).sum()
                lse_sum += (lse * vc).sum()
                if need_grad:
                    scale = vc.float() / n
                    xc.mul_((1 + 2 * coef * lse) * scale / sum_exp)
                    xc.scatter_add_(1, tc, -scale)
                    lg.copy_(xc)
                    torch.mm(lg, w, out=grad_h[s : s + len(hc)])
                    # summed in float32 through a buffer: a mixed-dtype add_ would allocate a float32 copy each time
                    grad_w.add_(grad_w_chunk32.copy_(torch.mm(lg.T, hc, out=grad_w_chunk)))
        if need_grad:  # kept on ctx, not saved: backward scales them in place and hands them over without a copy
            ctx.grads = grad_h.view(hidden.shape).to(hidden.dtype), grad_w.to(weight.dtype)
        ce, z, log_z = ce_sum / n, z_sum / n, lse_sum / n
        ctx.mark_non_differentiable(ce, z, log_z)
        return ce + coef * z, ce, z, log_z

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_z, _grad_log_z):
        if not hasattr(ctx, "grads"):
            raise RuntimeError("linear_lm_loss supports one backward pass per forward (its gradients are handed over)")
        grad_h, grad_w = ctx.grads
        del ctx.grads
        return grad_h.mul_(grad_loss), grad_w.mul_(grad_loss), None, None, None, None, None


def linear_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    z_loss_coef: float = 1e-4,
    chunk_rows: int = 512,
) -> LossOutput:
    """`lm_loss(hidden @ weight.T, targets)` without materialising the logits; same values and gradients.

    Runs the matmuls in the autocast dtype when autocast is on (as `nn.Linear` would), reductions in float32.
    Called from code that torch.compile traces, it runs eagerly, outside the graph (`torch.compiler.disable`,
    applied here rather than as a decorator: the decorator imports torch._dynamo, 1.3 s, into every process).
    """
    if torch.compiler.is_compiling():
        return torch.compiler.disable(_linear_lm_loss)(hidden, weight, targets, z_loss_coef, chunk_rows)
    return _linear_lm_loss(hidden, weight, targets, z_loss_coef, chunk_rows)


def _linear_lm_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, z_loss_coef: float, chunk_rows: int
) -> LossOutput:
    dev = hidden.device.type  # autocast is per device type: on a GPU, the CUDA autocast dtype applies
    compute_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    n = int((targets != IGNORE_INDEX).sum())
    out = _LinearLMLoss.apply(hidden, weight, targets, z_loss_coef, chunk_rows, compute_dtype, need_grad)
    loss, ce, z, log_z = out
    return LossOutput(loss, ce.detach(), z.detach(), torch.tensor(n), log_z.detach())
