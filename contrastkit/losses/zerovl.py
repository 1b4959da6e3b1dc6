"""D-ZEROVL — ZeroVL's MixUpNCE: CLIP with soft targets on a coin-flip mixup step.

Paper: Cui et al. 2022, "Contrastive Vision-Language Pre-training with Limited Resources"
(ZeroVL). Reference: zerovl/ZeroVL ``mml_loss.py`` (``MixUpNCE``), ``pipelines/clip.py``
(``forward_text_project``). The batch comes from the ``single_source`` sampler with ``mixup``
(docs/data.md, "Batch samplers"), which mixes images on pixels and adds per-row fields:
``mix_lambda`` (λ), ``mix_partner`` (the global row ``p(i)`` mixed into row ``i``; ZeroVL's
``flip(i) = b−1−i`` inside each process's batch) and ``mix_text`` (1: mix the text embeddings).

Formula, with ``t`` the projected text embeddings BEFORE L2 normalisation::

    t̃_i = λ t_i + (1−λ) t_p(i)            (rows with mix_text = 1; else t̃ = t)
    L = s · norm(x) · norm(t̃)ᵀ,   T_ii += λ_i,  T_i,p(i) += 1−λ_i
    loss = ½ [ CE_soft(L, T) + CE_soft(Lᵀ, T) ]

the same λ and partner in both directions (p is an involution, so T is symmetric). Without the
fields (λ = 1) it is CLIP at ``s = 1/τ``. Defaults: ``τ = 0.02``, fixed (ZeroVL's DGA recipe);
``learnable=True`` learns it, clamped to ``τ ∈ [0.001, 0.5]`` after each optimizer step.
Distributed: the fields are per-row and gathered with the embeddings (``GatherAllLoss``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, PairLoss, maybe_normalize

__all__ = ["MixUpNCELoss", "mixup_nce_loss", "mixup_targets"]

_TAU_RANGE = (0.001, 0.5)  # ZeroVL clamps its temperature to this range


def mixup_targets(lam: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """``T = diag(λ) + (1−λ)`` at ``(i, partner[i])`` (rows sum to 1; ``partner[i] = i`` gives 1)."""
    n = lam.shape[0]
    rows = torch.arange(n, device=lam.device)
    t = torch.zeros(n, n, dtype=lam.dtype, device=lam.device)
    t[rows, rows] += lam
    t.index_put_((rows, partner), 1 - lam, accumulate=True)
    return t


def _check_fields(n: int, lam: torch.Tensor, partner: torch.Tensor, text: torch.Tensor | None) -> None:
    if lam.shape != (n,) or not lam.is_floating_point() or bool(((lam < 0) | (lam > 1)).any()):
        raise InputError(f"mix_lambda must be floats in [0, 1] of shape [N]=[{n}], got {tuple(lam.shape)}")
    if partner.shape != (n,) or partner.is_floating_point() or bool(((partner < 0) | (partner >= n)).any()):
        raise InputError(
            f"mix_partner must be row indices in [0, {n}) of shape [N], got {tuple(partner.shape)}"
        )
    if text is not None and text.shape != (n,):
        raise InputError(f"mix_text must have shape [N]=[{n}], got {tuple(text.shape)}")


def mixup_nce_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    mix_lambda: torch.Tensor | None = None,
    mix_partner: torch.Tensor | None = None,
    mix_text: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """MixUpNCE (module docstring): ``x`` image ``[N, d]``, ``y`` text ``[N, d]`` (unnormalised
    projections), ``scale`` = ``1/τ``; the three fields as the ``single_source`` sampler makes them."""
    check_pair(x, y)
    n = x.shape[0]
    if (mix_lambda is None) != (mix_partner is None):
        raise InputError("mix_lambda and mix_partner come together (from the single_source sampler)")
    lam = torch.ones(n, dtype=x.dtype, device=x.device) if mix_lambda is None else mix_lambda.to(x.dtype)
    partner = torch.arange(n, device=x.device) if mix_partner is None else mix_partner.long()
    _check_fields(n, lam, partner, mix_text)
    if mix_text is not None and bool(mix_text.any()):  # text mixup on the projections, before norm
        w = lam[:, None]
        mixed = w * y + (1 - w) * y[partner]
        y = torch.where(mix_text.bool()[:, None], mixed, y)
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    logits = scale * (x @ y.T)
    t = mixup_targets(lam, partner)
    ce = -(t * F.log_softmax(logits, dim=1)).sum(1).mean()
    ce_t = -(t * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (ce + ce_t)


@LOSSES.register("mixup_nce")
class MixUpNCELoss(PairLoss):
    """ZeroVL's MixUpNCE, CLIP with mixup soft targets (D-ZEROVL; uses ``mix_lambda``, ``mix_partner``,
    ``mix_text`` from the ``single_source`` sampler with ``mixup``).

    Args:
        temperature: ``τ`` (ZeroVL: 0.02). learnable: learn ``τ`` (clamped to [0.001, 0.5]).
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"mix_lambda", "mix_partner", "mix_text"})

    def __init__(self, temperature: Positive = 0.02, learnable: bool = False) -> None:
        super().__init__()
        if not _TAU_RANGE[0] <= temperature <= _TAU_RANGE[1]:
            raise ConfigError(f"mixup_nce: temperature must lie in {list(_TAU_RANGE)}, got {temperature}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learnable)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return mixup_nce_loss, {"scale": self.log_scale.exp()}

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.log_scale.clamp_(math.log(1 / _TAU_RANGE[1]), math.log(1 / _TAU_RANGE[0]))

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.log_scale.detach().exp())}
