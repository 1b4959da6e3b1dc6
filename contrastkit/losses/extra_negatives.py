"""Losses over pairs plus per-sample extra negatives ``negatives [N, K, d]``: PromCSE's energy-based
hinge (``promcse``, ``energy_hinge``) and the spurious-attribute fine-tuning loss (``spurious_clip``).

The extra negatives are the batch field ``negatives`` (K embedded texts per pair, as ``clip_in``
takes them; in training ``data.text_negatives`` fills it with K = 1 hard-negative caption per pair).

* ``promcse`` — R-PROMCSE [VERIFIED], Jiang et al. 2022, "Improved Universal Sentence Embeddings
  with Prompt-based Contrastive Learning and Energy-based Learning" (seed 66). Triplets (anchor
  ``x_i``, positive ``y_i``, hard negatives ``n_ik``), cosines ``c``::

      L_NCE = CE([c(x_i, y_j)/τ]_j ++ [c(x_i, n_jk)/τ + w·[j = i]]_{j,k}, target i)      (N + NK columns)
      pos_i = c(x_i, y_i),  neg_i = max( max_{j≠i} c(x_i, y_j), max_{j,k} c(x_i, n_jk) )
      L_EH  = mean_i max(0, m − (pos_i − neg_i))
      L     = L_NCE + λ · L_EH

  Defaults (reference supervised scripts): τ = 0.05, m = 0.2, λ = 10, hard-negative weight w = 0.
  Every hard negative of the batch is a candidate of every anchor (SimCSE's 2N columns for K = 1);
  EH uses raw cosines (the reference multiplies its τ-scaled logits back by τ) without w. The spec
  defines EH with hard negatives present; K = 0 (``negatives=None``) is accepted as the degenerate
  case — L_NCE is then one-directional InfoNCE and ``neg_i`` the hardest in-batch positive of
  another anchor — so the loss also trains on plain pairs. N = 1 with K = 0 is an error.
* ``energy_hinge`` — the L_EH term alone (m = 0.2), to add to any loss as a term:
  ``terms: {clip: 1.0, energy_hinge: 10.0}``.
* ``spurious_clip`` — no spec entry; Yang et al. 2023, "Mitigating Spurious Correlations in
  Multi-modal Models during Fine-tuning" (seed 119). UNVERIFIED: spec form from the abstract, not
  checked against the original. The language side names the spurious attribute: ``a_ik`` are
  embedded descriptions of image i's spurious attributes ("a photo of water"), given as
  ``negatives``. Each image must prefer its class text over its own spurious descriptions::

      L = CLIP(x, y; s) + λ · mean_i [ LSE(s x_i·y_i, s x_i·a_i1, …, s x_i·a_iK) − s x_i·y_i ]

  λ = 1 (our choice), CLIP's learnable s (init 1/0.07, clamp [0, ln 100]). K = 0 ⇒ L-CLIP.

Exactness: dense formulas, values and gradients equal naive float64 loops (tests). Tiled /
distributed: dense only (no tiled form); several processes gather embeddings and negatives first
(``GatherAllLoss``). Related: ``clip_in`` (negative captions inside CLIP's softmax), L-NTXENT,
L-HCL, ``hard_negative_penalty``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_finite, check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive
from contrastkit.losses.base import LOSSES, LearnableScaleLoss, MaxScale, PairLoss, maybe_normalize
from contrastkit.losses.clip import clip_loss

__all__ = [
    "EnergyHingeLoss",
    "PromCSELoss",
    "SpuriousCLIPLoss",
    "check_negatives",
    "energy_hinge_loss",
    "promcse_loss",
    "spurious_clip_loss",
]


def check_negatives(negatives: torch.Tensor | None, n: int, d: int) -> int:
    """K of a ``negatives [N, K, d]`` batch field (0 for ``None``); an InputError naming the shape."""
    if negatives is None:
        return 0
    if not isinstance(negatives, torch.Tensor) or negatives.ndim != 3 or negatives.shape[0] != n:
        shape = tuple(negatives.shape) if isinstance(negatives, torch.Tensor) else type(negatives).__name__
        raise InputError(f"negatives must have shape [N, K, d] = [{n}, K, {d}], got {shape}")
    if negatives.shape[2] != d or not negatives.is_floating_point():
        raise InputError(f"negatives must be a floating [N, K, d={d}] tensor, got {tuple(negatives.shape)}")
    check_finite("negatives", negatives)
    return negatives.shape[1]


def _cosines(
    x: torch.Tensor, y: torch.Tensor, negatives: torch.Tensor | None, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``c(x_i, y_j) [N, N]`` and ``c(x_i, n_jk) [N, N·K]`` (column ``j·K + k``)."""
    check_pair(x, y)
    n, d = x.shape
    k = check_negatives(negatives, n, d)
    x = maybe_normalize(x, normalize)
    cos_pos = x @ maybe_normalize(y, normalize).to(x.dtype).T
    if k == 0:
        return cos_pos, cos_pos.new_zeros(n, 0)
    negs = maybe_normalize(negatives, normalize).to(x.dtype).reshape(n * k, d)  # type: ignore[union-attr]
    return cos_pos, x @ negs.T


def _eh(cos_pos: torch.Tensor, cos_neg: torch.Tensor, margin: float) -> torch.Tensor:
    eye = torch.eye(cos_pos.shape[0], dtype=torch.bool, device=cos_pos.device)
    hardest = cos_pos.masked_fill(eye, float("-inf")).amax(1)  # the diagonal never wins
    if cos_neg.shape[1]:
        hardest = torch.maximum(hardest, cos_neg.amax(1))
    return F.relu(margin - (cos_pos.diagonal() - hardest)).mean()


def energy_hinge_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    negatives: torch.Tensor | None = None,
    margin: float = 0.2,
    normalize: bool = True,
) -> torch.Tensor:
    """PromCSE's energy-based hinge ``mean_i max(0, m − (c(x_i, y_i) − neg_i))`` (module docstring);
    gradient reaches the positive and the arg-max negative only."""
    if not margin >= 0:
        raise ConfigError(f"margin must be >= 0, got {margin}")
    cos_pos, cos_neg = _cosines(x, y, negatives, normalize)
    if x.shape[0] == 1 and cos_neg.shape[1] == 0:
        raise InputError("energy_hinge_loss needs N >= 2 pairs or K >= 1 hard negatives, got N=1, K=0")
    return _eh(cos_pos, cos_neg, margin)


def promcse_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.05,
    margin: float = 0.2,
    lambda_eh: float = 10.0,
    hard_negative_weight: float = 0.0,
    normalize: bool = True,
) -> torch.Tensor:
    """PromCSE: supervised SimCSE NT-Xent over ``[positives | hard negatives]`` + λ·EH (R-PROMCSE).

    Args:
        x: ``[N, d]`` anchors. y: ``[N, d]`` positives (``y[i]`` of ``x[i]``).
        negatives: ``[N, K, d]`` hard negatives (K ≥ 0; every one is a candidate of every anchor).
        temperature: τ (0.05). margin: m of the hinge (0.2). lambda_eh: λ (10).
        hard_negative_weight: w added to the logits of an anchor's own hard negatives (0).
        normalize: cosine (default) or raw dot products.
    """
    if not temperature > 0 or not margin >= 0 or not lambda_eh >= 0:
        raise ConfigError(
            "promcse needs temperature > 0, margin >= 0, lambda_eh >= 0; "
            f"got {temperature}, {margin}, {lambda_eh}"
        )
    cos_pos, cos_neg = _cosines(x, y, negatives, normalize)
    n, nk = cos_neg.shape
    if n == 1 and nk == 0:
        raise InputError("promcse_loss needs N >= 2 pairs or K >= 1 hard negatives, got N=1, K=0")
    neg_logits = cos_neg / temperature
    if nk and hard_negative_weight:  # column j·K + k belongs to sample j
        owner = torch.arange(nk, device=cos_neg.device) // (nk // n)
        own = owner[None, :] == torch.arange(n, device=cos_neg.device)[:, None]
        neg_logits = neg_logits + hard_negative_weight * own
    logits = torch.cat([cos_pos / temperature, neg_logits], 1)
    nce = F.cross_entropy(logits, torch.arange(n, device=x.device))
    return nce + lambda_eh * _eh(cos_pos, cos_neg, margin) if lambda_eh else nce


def spurious_clip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    negatives: torch.Tensor | None = None,
    lambda_sp: float = 1.0,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """``clip_loss(x, y, s) + λ · mean_i [LSE(s x_i·y_i, s x_i·a_ik) − s x_i·y_i]`` with the spurious
    descriptions ``a = negatives [N, K, d]`` (module docstring; UNVERIFIED form). K = 0 ⇒ CLIP."""
    if not lambda_sp >= 0:
        raise ConfigError(f"lambda_sp must be >= 0, got {lambda_sp}")
    if isinstance(scale, torch.Tensor):
        check_scalar_param("scale", scale)
    con = clip_loss(x, y, scale, normalize=normalize, allow_single=allow_single)
    k = check_negatives(negatives, x.shape[0], x.shape[1])
    if k == 0 or not lambda_sp:
        return con
    xn = maybe_normalize(x, normalize)
    pos = scale * (xn * maybe_normalize(y, normalize).to(xn.dtype)).sum(1)
    spur = scale * torch.einsum("nd,nkd->nk", xn, maybe_normalize(negatives, normalize).to(xn.dtype))
    sp = (torch.logsumexp(torch.cat([pos[:, None], spur], 1), 1) - pos).mean()
    return con + lambda_sp * sp


@LOSSES.register("promcse")
class PromCSELoss(PairLoss):
    """Module form of :func:`promcse_loss` (fixed τ, no learnable parameters); batch field
    ``negatives [N, K, d]`` (optional: K = 0 without it)."""

    accepts: ClassVar[frozenset[str]] = frozenset({"negatives"})

    def __init__(
        self,
        temperature: Positive = 0.05,
        margin: NonNegative = 0.2,
        lambda_eh: NonNegative = 10.0,
        hard_negative_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.kwargs: dict[str, Any] = {
            "temperature": float(temperature),
            "margin": float(margin),
            "lambda_eh": float(lambda_eh),
            "hard_negative_weight": float(hard_negative_weight),
        }

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return promcse_loss, dict(self.kwargs)


@LOSSES.register("energy_hinge")
class EnergyHingeLoss(PairLoss):
    """Module form of :func:`energy_hinge_loss` (PromCSE's EH term alone); ``negatives`` optional."""

    accepts: ClassVar[frozenset[str]] = frozenset({"negatives"})

    def __init__(self, margin: NonNegative = 0.2) -> None:
        super().__init__()
        self.margin = float(margin)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return energy_hinge_loss, {"margin": self.margin}


@LOSSES.register("spurious_clip")
class SpuriousCLIPLoss(LearnableScaleLoss):
    """Module form of :func:`spurious_clip_loss`: CLIP's learnable s (init 1/0.07, clamp
    ``[0, ln max_scale]``), λ; batch field ``negatives [N, K, d]`` = the spurious descriptions."""

    accepts: ClassVar[frozenset[str]] = frozenset({"negatives"})

    def __init__(
        self,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        lambda_sp: NonNegative = 1.0,
        allow_single: bool = False,
    ) -> None:
        super().__init__(init_temperature, learnable, max_scale)
        self.lambda_sp, self.allow_single = float(lambda_sp), allow_single

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return spurious_clip_loss, {
            "scale": self.log_scale.exp(),
            "lambda_sp": self.lambda_sp,
            "allow_single": self.allow_single,
        }
