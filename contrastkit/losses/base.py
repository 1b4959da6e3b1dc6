"""The contract every contrastkit loss follows.

* A **pure function** (``clip_loss``, ``siglip_loss``…) over embeddings and plain scalars: no
  state, no ranks, no chunks, no model. This is what tests compare against naive formulas and what
  the ``scale`` wrappers (tiling, gathering, gradient caching) call.
* A **thin module** (``CLIPLoss``…) holding the learnable scalars (temperature, bias) with their
  paper initialisation, applying post-step constraints (clamps) and reporting its scalars for logs.

Modules are registered by name in :data:`LOSSES` so configs select them; the registry checks
parameter names against the constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.registry import Registry

__all__ = ["LOSSES", "LossConfig", "PairLoss", "as_float", "maybe_normalize"]


@dataclass(frozen=True)
class LossConfig:
    """A loss by registry name and its constructor parameters (checked against the signature)."""

    name: str = "clip"
    params: dict[str, Any] = field(default_factory=dict)


LOSSES: Registry[PairLoss] = Registry("loss")


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are promoted to float32 so logits and log-sum-exps are exact enough;
    float32/float64 pass through unchanged (float64 is what the naive-formula tests use)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def maybe_normalize(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """L2-normalise rows (``F.normalize``, eps 1e-12) when asked; always promote half precision."""
    x = as_float(x)
    return F.normalize(x, dim=-1) if normalize else x


class PairLoss(nn.Module):
    """Base module for losses over two paired embedding batches ``x[i] ↔ y[i]``.

    Subclasses implement ``forward(x, y) -> scalar Tensor``. The trainer calls
    :meth:`after_optimizer_step` after every optimizer step and logs :meth:`log_values`.
    All parameters of a loss module are excluded from weight decay.
    """

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        """The pure function and its keyword arguments (learnable scalars as live tensors) such
        that ``forward(x, y) == fn(x, y, **kwargs)``. Wrappers in ``contrastkit.scale`` (tiling,
        gathering, gradient caching) dispatch on ``fn`` so they never look inside a loss."""
        raise NotImplementedError(f"{type(self).__name__} does not expose a pure function")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fn, kwargs = self.pure()
        return fn(x, y, **kwargs)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Apply constraints that live outside autograd (e.g. CLIP's logit-scale clamp)."""

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging every step (temperature, bias…)."""
        return {}
