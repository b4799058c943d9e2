"""AdamW and the learning-rate schedules (warmup + cosine, warmup-stable-decay, constant).

The schedule is a pure function of the step, so it has no state to checkpoint and can be plotted or tested alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kamado.config import OptimConfig, ScheduleConfig
from kamado.errors import ConfigError


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms (1-D weights) are not decayed (GPT-3, Llama practice)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel exists for CPU and CUDA since torch 2.4 and is several times faster than the for-loop one.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)


def lr_at(step: int, total_steps: int, base_lr: float, cfg: ScheduleConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`."""
    min_lr = base_lr * cfg.min_lr_ratio
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return base_lr * (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return base_lr
    if cfg.kind == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t))
    if cfg.kind == "wsd":
        # Warmup-stable-decay (MiniCPM, Hu et al. 2024): flat at base_lr, then a linear decay over the last
        # `decay_fraction` of training; a stable-phase checkpoint can be decayed later for continued training.
        decay_steps = max(1, int(total_steps * cfg.decay_fraction))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return base_lr
        t = min(1.0, (step - decay_start) / decay_steps)
        return base_lr + (min_lr - base_lr) * t
    raise ConfigError(f"schedule.kind must be 'cosine', 'wsd' or 'constant', got '{cfg.kind}'")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
