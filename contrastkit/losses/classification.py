"""Classification losses with a contrastive use: squentropy and the harmonic loss.

* ``squentropy`` [L-SQUENTROPY] — Hui, Belkin & Wright 2023: ``ℓ = CE(f, y) + (1/(C−1)) Σ_{j≠y} f_j²``.
* ``harmonic`` [L-HARMONIC, PARTIAL] — Baek et al. 2025: logits ``−n·log(‖x − w_c‖ + ε)``, then CE;
  ε = 1e-8, n = sqrt(D) by default (the paper's guidance, a config value).

Contrastive use (the registered modules): row i of x is classified against the N rows
of y as its "classes", target i. Squentropy logits are ``s·cos(x_i, y_j)`` (s = 1/τ, τ = 0.07 fixed);
harmonic logits are ``−n·log(‖x_i − y_j‖ + ε)`` between (normalised) anchors and candidates.
``symmetric=True`` averages with the y→x direction. Both need N ≥ 2 (C = N ≥ 2 classes).

Tiled / distributed: dense only (``TiledLoss`` and ``GatherLoss`` dispatch on clip/siglip only);
gather embeddings (and targets) across devices first. Related: L-CLIP, L-INFONCE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive
from contrastkit.losses.base import LOSSES, PairLoss, as_float, maybe_normalize

__all__ = [
    "HarmonicLoss",
    "SquentropyLoss",
    "harmonic_contrastive_loss",
    "harmonic_logits",
    "harmonic_loss",
    "squentropy_contrastive_loss",
    "squentropy_loss",
]


def squentropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squentropy: ``mean_i [CE(f_i, y_i) + (1/(C−1)) Σ_{j≠y_i} f_ij²]`` over ``logits [N, C]`` (C ≥ 2),
    ``target [N]`` class indices."""
    check_embeddings("logits", logits)
    if logits.shape[1] < 2:
        raise InputError(f"squentropy needs C >= 2 classes, got C={logits.shape[1]}")
    if (
        not isinstance(target, torch.Tensor)
        or target.shape != (logits.shape[0],)
        or target.dtype != torch.long
    ):
        raise InputError(f"target must be a LongTensor of shape [N] = [{logits.shape[0]}]")
    if ((target < 0) | (target >= logits.shape[1])).any():
        raise InputError(f"target must hold class indices in [0, {logits.shape[1]})")
    f = as_float(logits)
    is_target = F.one_hot(target, f.shape[1]).bool()
    squares = f.pow(2).masked_fill(is_target, 0.0).sum(1) / (f.shape[1] - 1)
    return (F.cross_entropy(f, target, reduction="none") + squares).mean()


def _contrastive(
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    symmetric: bool,
) -> torch.Tensor:
    check_pair(x, y)
    if x.shape[0] < 2:
        raise InputError("a classification-style contrastive loss needs N >= 2 (the y rows are the classes)")
    logits = logits_fn(x, y)
    target = torch.arange(x.shape[0], device=x.device)
    out = loss_fn(logits, target)
    return 0.5 * (out + loss_fn(logits.T, target)) if symmetric else out


def squentropy_contrastive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float = 1 / 0.07,
    *,
    normalize: bool = True,
    symmetric: bool = False,
) -> torch.Tensor:
    """Squentropy with logits ``s · cos(x_i, y_j)`` and target i (x classified among the y rows)."""

    def logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = maybe_normalize(a, normalize)
        return scale * (a @ maybe_normalize(b, normalize).to(a.dtype).T)

    return _contrastive(logits, squentropy_loss, x, y, symmetric)


def harmonic_logits(
    x: torch.Tensor, w: torch.Tensor, n: float | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """``−n·log(‖x_i − w_c‖₂ + ε)``, ``[N, C]``; n = sqrt(D) when ``None``.

    Distances come from ``torch.cdist`` without the matrix-product shortcut (no cancellation for
    near-coincident points; its gradient is 0, not NaN, at distance 0). ε = 0 is allowed but a zero
    distance then gives an infinite logit.
    """
    n = math.sqrt(x.shape[1]) if n is None else n
    if not n > 0 or eps < 0:
        raise ConfigError(f"harmonic: need n > 0 and eps >= 0, got n={n}, eps={eps}")
    x = as_float(x)
    d = torch.cdist(x, w.to(x.dtype), compute_mode="donot_use_mm_for_euclid_dist")
    return -n * torch.log(d + eps)


def harmonic_loss(
    x: torch.Tensor,
    class_vectors: torch.Tensor,
    target: torch.Tensor,
    *,
    n: float | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Harmonic loss: ``mean_i −log p_{y_i}``, ``p_c = d_c^{−n} / Σ_j d_j^{−n}`` (with ``d + ε``)."""
    check_embeddings("x", x)
    check_embeddings("class_vectors", class_vectors)
    if class_vectors.shape[1] != x.shape[1]:
        raise InputError(f"class_vectors must have d={x.shape[1]}, got {class_vectors.shape[1]}")
    c = class_vectors.shape[0]
    if not isinstance(target, torch.Tensor) or target.shape != (x.shape[0],) or target.dtype != torch.long:
        raise InputError(f"target must be a LongTensor of shape [N] = [{x.shape[0]}]")
    if ((target < 0) | (target >= c)).any():
        raise InputError(f"target must hold class indices in [0, {c})")
    return F.cross_entropy(harmonic_logits(x, class_vectors, n, eps), target)


def harmonic_contrastive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n: float | None = None,
    eps: float = 1e-8,
    normalize: bool = True,
    symmetric: bool = False,
) -> torch.Tensor:
    """Harmonic loss with the y rows as class vectors: logits ``−n·log(‖x_i − y_j‖ + ε)``, target i."""

    def logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return harmonic_logits(maybe_normalize(a, normalize), maybe_normalize(b, normalize), n, eps)

    return _contrastive(logits, F.cross_entropy, x, y, symmetric)


@LOSSES.register("squentropy")
class SquentropyLoss(PairLoss):
    """Module form of :func:`squentropy_contrastive_loss` (fixed temperature τ, s = 1/τ)."""

    def __init__(self, temperature: Positive = 0.07, symmetric: bool = False, normalize: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.symmetric, self.normalize = float(temperature), symmetric, normalize

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        kwargs = {"scale": 1.0 / self.temperature, "normalize": self.normalize, "symmetric": self.symmetric}
        return squentropy_contrastive_loss, kwargs


@LOSSES.register("harmonic")
class HarmonicLoss(PairLoss):
    """Module form of :func:`harmonic_contrastive_loss` (n = sqrt(d) unless given)."""

    def __init__(
        self, n: float | None = None, eps: NonNegative = 1e-8, symmetric: bool = False, normalize: bool = True
    ) -> None:
        super().__init__()
        if (n is not None and not n > 0) or eps < 0:
            raise ConfigError(f"harmonic: need n > 0 and eps >= 0, got n={n}, eps={eps}")
        self.n, self.eps, self.symmetric, self.normalize = n, float(eps), symmetric, normalize

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        kw = {"n": self.n, "eps": self.eps, "normalize": self.normalize, "symmetric": self.symmetric}
        return harmonic_contrastive_loss, kw
