"""L-AM-NTXENT / L-AAM-NTXENT — NT-Xent with an additive (CosFace) or additive angular (ArcFace)
margin on the positive.

Spec ids: L-AM-NTXENT, L-AAM-NTXENT [VERIFIED code defaults] (docs/losses.md), checked
against theolepage/sslsv ``methods/SimCLRMargins``.
Paper: Lepage & Dehak 2023 (Interspeech), "Experimenting with Additive Margins for Contrastive
Self-Supervised Speaker Verification".

On cosine logits ``c = z·z'`` the positive's cosine ``c⁺ = cos θ⁺`` is replaced by ``pos′``, then
everything is multiplied by ``s = 1/τ`` and a cross-entropy picks the positive::

    AM  (CosFace): pos′ = c⁺ − m
    AAM (ArcFace): pos′ = cos(θ⁺ + m) = c⁺ cos m − sin θ⁺ sin m   if c⁺ > cos(π − m)
                          c⁺ − m sin(π − m)                        otherwise (standard fallback)
    ℓ_k = −s·pos′_k + LSE(s·pos′_k, s·c_{k,a} for the negatives a of k)

``symmetric=True`` (default, sslsv): both views are anchors over the 2N rows ``[x; y]``; the
negatives of a row are the 2N − 2 rows of other samples (NT-Xent layout, identity excluded); mean
over 2N anchors. ``symmetric=False``: anchors ``x`` only, candidates ``y`` (N − 1 negatives, the
x→y InfoNCE layout of sslsv's non-symmetric branch). With m = 0 both equal NT-Xent / InfoNCE at τ = 1/s.

Defaults: s = 5 (τ = 0.2), m = 0.2 (sslsv; the paper's best m was not seen). ``sin θ = √clamp(1 − c², 0, 1)``;
where it is exactly 0 (θ⁺ = 0 or π) its derivative is unbounded and we use 0 instead, so identical
views give finite gradients (sslsv yields NaN there). Margin warm-up: :func:`margin_schedule`; a
trainer sets ``loss.margin = margin_schedule(epoch, epochs, m)`` at each epoch.
Shapes: ``x, y: [N, d]`` → 0-d tensor. N = 1 has no negatives: an error unless ``allow_single=True``.
Tiled: ``scale.tile_size`` runs both margin losses in O(N·d + tile²) memory, exactly
(:mod:`contrastkit.scale.tiled_zoo`). Distributed: gather the embeddings first.
Related: L-NTXENT, L-CLIP, L-SUPCON.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from contrastkit.core.checks import check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive
from contrastkit.losses.base import LOSSES, PairLoss, maybe_normalize

__all__ = [
    "AAMNTXentLoss",
    "AMNTXentLoss",
    "aam_ntxent_loss",
    "additive_angular_margin",
    "am_ntxent_loss",
    "margin_schedule",
]


def margin_schedule(epoch: float, total_epochs: float, m: float) -> float:
    """sslsv's margin warm-up: ``m(e) = m − m·(cos(π e / (E/2)) + 1)/2`` for ``e ≤ E/2``, then ``m``
    (0 at epoch 0, rising along a half cosine to ``m`` at mid-training)."""
    if not total_epochs > 0:
        raise ConfigError(f"total_epochs must be > 0, got {total_epochs}")
    if epoch < 0:
        raise ConfigError(f"epoch must be >= 0, got {epoch}")
    half = total_epochs / 2
    if epoch > half:
        return float(m)
    return float(m - m * (math.cos(math.pi * epoch / half) + 1) / 2)


def additive_angular_margin(c: torch.Tensor, m: float) -> torch.Tensor:
    """ArcFace's ``cos(θ + m)`` from ``c = cos θ`` with the fallback ``c − m sin(π − m)`` when
    ``c ≤ cos(π − m)`` (there ``θ + m`` would pass π and the function would stop decreasing)."""
    s2 = (1.0 - c * c).clamp(0.0, 1.0)
    ok = s2 > 0
    # double where: the value at sin θ = 0 is exact and its (unbounded) derivative is replaced by 0
    sin = torch.where(ok, torch.where(ok, s2, 1.0).sqrt(), 0.0)
    phi = c * math.cos(m) - sin * math.sin(m)
    return torch.where(c > math.cos(math.pi - m), phi, c - m * math.sin(math.pi - m))


def _margin_ntxent(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    margin: float,
    angular: bool,
    symmetric: bool,
    normalize: bool,
    allow_single: bool,
    who: str,
) -> torch.Tensor:
    check_pair(x, y)
    n = x.shape[0]
    if n == 1 and not allow_single:
        raise InputError(
            f"{who} got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    if isinstance(scale, torch.Tensor):
        check_scalar_param("scale", scale)
    elif not scale > 0:
        raise ConfigError(f"scale must be > 0, got {scale}")
    if not (0 <= margin < math.pi):
        raise ConfigError(f"margin must lie in [0, π), got {margin}")
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    rows = torch.cat([x, y]) if symmetric else x
    cols = rows if symmetric else y
    cos = rows @ cols.T  # [2N, 2N] (symmetric) or [N, N]
    idx = torch.arange(rows.shape[0], device=x.device)
    partner = (idx + n) % (2 * n) if symmetric else idx
    c_pos = cos[idx, partner]
    pos = additive_angular_margin(c_pos, margin) if angular else c_pos - margin
    logits = scale * cos
    logits.index_put_((idx, partner), scale * pos)  # the margin touches the positive only
    if symmetric:
        logits.fill_diagonal_(float("-inf"))  # a row is not its own candidate
    return (logits.logsumexp(1) - scale * pos).mean()


def am_ntxent_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float = 5.0,
    margin: float = 0.2,
    *,
    symmetric: bool = True,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """NT-Xent with an additive cosine margin (CosFace) on the positive (spec L-AM-NTXENT).

    Args:
        x: ``[N, d]`` view-1 embeddings.
        y: ``[N, d]`` view-2 embeddings, ``y[i]`` positive of ``x[i]``.
        scale: ``s = 1/τ`` (default 5, τ = 0.2). margin: ``m ≥ 0`` (default 0.2).
        symmetric: both views as anchors over ``[x; y]`` (default) or x→y only.
        normalize: L2-normalise first (default). allow_single: accept N = 1 (loss 0).
    """
    return _margin_ntxent(x, y, scale, margin, False, symmetric, normalize, allow_single, "am_ntxent_loss")


def aam_ntxent_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float = 5.0,
    margin: float = 0.2,
    *,
    symmetric: bool = True,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """NT-Xent with an additive angular margin (ArcFace) on the positive (spec L-AAM-NTXENT).

    Args: as :func:`am_ntxent_loss`; ``margin`` is an angle in radians in ``[0, π)``.
    """
    return _margin_ntxent(x, y, scale, margin, True, symmetric, normalize, allow_single, "aam_ntxent_loss")


class _MarginModule(PairLoss):
    fn: Callable[..., torch.Tensor]

    def __init__(
        self,
        scale: Positive = 5.0,
        margin: NonNegative = 0.2,
        symmetric: bool = True,
        allow_single: bool = False,
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"scale must be > 0, got {scale}")
        if not (0 <= margin < math.pi):
            raise ConfigError(f"margin must lie in [0, π), got {margin}")
        self.scale = float(scale)
        self.margin = float(margin)  # plain attribute: a warm-up schedule may overwrite it per epoch
        self.symmetric = symmetric
        self.allow_single = allow_single

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return type(self).fn, {
            "scale": self.scale,
            "margin": self.margin,
            "symmetric": self.symmetric,
            "allow_single": self.allow_single,
        }

    def log_values(self) -> dict[str, float]:
        return {"margin": self.margin}


@LOSSES.register("am_ntxent")
class AMNTXentLoss(_MarginModule):
    """Module form of :func:`am_ntxent_loss` (``scale`` 5, ``margin`` 0.2, ``symmetric`` True)."""

    fn = staticmethod(am_ntxent_loss)


@LOSSES.register("aam_ntxent")
class AAMNTXentLoss(_MarginModule):
    """Module form of :func:`aam_ntxent_loss` (``scale`` 5, ``margin`` 0.2 rad, ``symmetric`` True)."""

    fn = staticmethod(aam_ntxent_loss)
