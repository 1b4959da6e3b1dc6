"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from contrastkit.train.config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "param_groups"]


def param_groups(model: nn.Module, loss: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (decayed) and everything else — biases, norm gains, and all of the
    loss's learnable scalars (CLIP/SigLIP exclude those from weight decay)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    no_decay += [p for p in loss.parameters() if p.requires_grad]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# optim.impl -> AdamW's flags; "auto" passes none (torch picks foreach on CUDA, the for-loop on CPU)
_IMPL_FLAGS: dict[str, dict[str, bool]] = {
    "auto": {},
    "for_loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def build_optimizer(cfg: OptimConfig, groups: Iterable[dict]) -> torch.optim.AdamW:
    """AdamW over ``groups`` with ``cfg.impl``'s implementation (``auto``: torch's default)."""
    flags = _IMPL_FLAGS[cfg.impl]
    return torch.optim.AdamW(list(groups), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **flags)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    )
