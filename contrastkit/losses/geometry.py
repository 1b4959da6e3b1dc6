"""Geometry losses on the hypersphere: L-ALIGN, L-UNIFORM, their sum, and L-CUA / L-CUAXU.

* L-ALIGN / L-UNIFORM [VERIFIED] (docs/losses.md), checked against SsnL/align_uniform.
  Paper: Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment
  and Uniformity on the Hypersphere"::

      L_align(x, y; α) = mean_i ‖x_i − y_i‖^α                        (α = 2: = 2 − 2·mean_i x_i·y_i)
      L_uniform(x; t)  = log mean_{i<j} exp(−t ‖x_i − x_j‖²)          (t = 2)
      align_uniform    = L_align + λ · ½(L_uniform(x) + L_uniform(y))  (λ = 1, the reference README form)

  As a pair loss, ``uniformity`` is ``½(L_uniform(x) + L_uniform(y))``; :func:`uniformity` is the
  one-batch metric. Uniformity is a biased, N-dependent estimate: report N with it.
* L-CUA [PARTIAL]. Paper: Fahim, Murphy & Fyshe 2024, "It's Not a Modality Gap: Characterizing and
  Addressing the Contrastive Gap" (unit term weights from a public implementation, not the paper)::

      L_CUA   = L-CLIP(s) + ½(L_uniform(x) + L_uniform(y)) + L_align(x, y)
      L_CUAXU = L_CUA + log mean_{i≠j} exp(−t ‖x_i − y_j‖²)          (cross-modal uniformity)

Computation: squared distances come from one Gram matrix, ``‖a‖² + ‖b‖² − 2a·b`` (clamped at 0);
the mean over pairs ``i<j`` of a symmetric matrix equals the mean over ``i≠j``, so the diagonal is
masked instead of gathering a triangle: ``L_uniform = LSE_{i≠j}(−t d²_ij) − log(N(N−1))``.
Shapes: ``x, y: [N, d]`` → 0-d tensor. N = 1: ``alignment`` works; everything with a uniformity or
CLIP term raises :class:`InputError` (no pairs / no negatives). Memory O(N²).
Tiled / distributed: dense only (``TiledLoss`` and ``GatherLoss`` dispatch on clip/siglip only);
gather the embeddings first. Related: L-CLIP, L-DCL, L-DECUNIF, E-ALIGNUNIF (the metrics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from contrastkit.core.checks import check_embeddings, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive
from contrastkit.losses.base import LOSSES, LearnableScaleLoss, MaxScale, PairLoss, maybe_normalize
from contrastkit.losses.clip import clip_loss

__all__ = [
    "AlignUniformLoss",
    "AlignmentLoss",
    "CUALoss",
    "CUAXULoss",
    "UniformityLoss",
    "align_uniform_loss",
    "alignment_loss",
    "cross_uniformity",
    "cua_loss",
    "cuaxu_loss",
    "log_mean_exp_offdiag",
    "uniformity",
    "uniformity_loss",
]


def _check(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


class _OffDiagLogMeanExp(torch.autograd.Function):
    """``log mean_{i≠j} exp(−t ‖a_i − b_j‖²)`` with a hand-written backward.

    Why not plain autograd: it keeps several N×N temporaries and, for ``a is b`` (uniformity),
    runs two N×N×D products where one suffices. Here forward keeps one N×N matrix (the exponents)
    and backward needs one product (``a is b``: the weights are symmetric) or two (cross form):
    with ``W = −t·g·softmax_offdiag(e)`` (``g`` the incoming gradient),
    ``∂/∂a_i = 2(Σ_j W_ij a_i − Σ_j W_ij b_j)`` and ``∂/∂b_j = 2(Σ_i W_ij b_j − Σ_i W_ij a_i)``.
    Rounding can make ``‖a_i − b_j‖²`` slightly negative for coincident points; it is clamped to 0
    (its gradient there is ≈ 0 either way: ``2(a_i − b_j)``).
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, t: float, same: bool) -> torch.Tensor:
        n = a.shape[0]
        na, nb = (a * a).sum(1), (b * b).sum(1)
        e = torch.mm(a, b.T).mul_(2.0).sub_(na[:, None]).sub_(nb[None, :])  # −‖a_i − b_j‖²
        e.clamp_max_(0.0).mul_(t).fill_diagonal_(float("-inf"))
        lse = e.flatten().logsumexp(0)
        ctx.save_for_backward(a, b, e, lse)
        ctx.t, ctx.same = t, same
        return lse - math.log(n * (n - 1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b, e, lse = ctx.saved_tensors
        w = (e - lse).exp_().mul_(-ctx.t * grad)  # e stays intact: backward may run again
        if ctx.same:  # w is symmetric: both sides' terms are equal, 4(rowsum·x − W x)
            return (w.sum(1)[:, None] * a - w @ a).mul_(4.0), None, None, None
        ga = (w.sum(1)[:, None] * a - w @ b).mul_(2.0)
        gb = (w.sum(0)[:, None] * b - w.T @ a).mul_(2.0)
        return ga, gb, None, None


def log_mean_exp_offdiag(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """``log mean_{i≠j} exp(−t ‖a_i − b_j‖²)`` over the N(N−1) off-diagonal pairs (pass the same
    tensor twice for one set's uniformity: its backward then needs a single product)."""
    n = a.shape[0]
    if n < 2:
        raise InputError(f"uniformity needs N >= 2 points (it averages over pairs), got N={n}")
    same = a is b
    return _OffDiagLogMeanExp.apply(a, a if same else b, float(t), same)


def alignment_loss(
    x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0, *, normalize: bool = True
) -> torch.Tensor:
    """``L_align = mean_i ‖x_i − y_i‖₂^α`` (spec L-ALIGN; α = 2). N = 1 is fine.
    For α < 1 the gradient at an exactly aligned pair is unbounded (not finite)."""
    check_pair(x, y)
    _check("alpha", alpha)
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    return torch.linalg.vector_norm(x - y, dim=1).pow(alpha).mean()


def uniformity(x: torch.Tensor, t: float = 2.0, *, normalize: bool = True) -> torch.Tensor:
    """One batch's ``L_uniform(x; t) = log mean_{i<j} exp(−t ‖x_i − x_j‖²)`` (spec L-UNIFORM); N ≥ 2.
    Ranges over ``[−4t, 0]`` for unit vectors: 0 when all points coincide."""
    check_embeddings("x", x)
    _check("t", t)
    x = maybe_normalize(x, normalize)
    return log_mean_exp_offdiag(x, x, t)


def uniformity_loss(
    x: torch.Tensor, y: torch.Tensor, t: float = 2.0, *, normalize: bool = True
) -> torch.Tensor:
    """Pair form ``½(L_uniform(x) + L_uniform(y))`` (each modality on its own); N ≥ 2."""
    check_pair(x, y)
    return 0.5 * (uniformity(x, t, normalize=normalize) + uniformity(y, t, normalize=normalize))


def cross_uniformity(
    x: torch.Tensor, y: torch.Tensor, t: float = 2.0, *, normalize: bool = True
) -> torch.Tensor:
    """``L_xuniform = log mean_{i≠j} exp(−t ‖x_i − y_j‖²)`` over the off-diagonal (unpaired) x–y
    pairs (the extra term of L-CUAXU); N ≥ 2."""
    check_pair(x, y)
    _check("t", t)
    x = maybe_normalize(x, normalize)
    return log_mean_exp_offdiag(x, maybe_normalize(y, normalize).to(x.dtype), t)


def align_uniform_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 2.0,
    t: float = 2.0,
    lam: float = 1.0,
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """``L_align(α) + λ · ½(L_uniform(x; t) + L_uniform(y; t))`` (the reference README training loss)."""
    check_pair(x, y)
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    return alignment_loss(x, y, alpha, normalize=False) + lam * uniformity_loss(x, y, t, normalize=False)


def cua_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    t: float = 2.0,
    alpha: float = 2.0,
    clip_weight: float = 1.0,
    uniform_weight: float = 1.0,
    align_weight: float = 1.0,
    cross_uniform_weight: float = 0.0,
    normalize: bool = True,
) -> torch.Tensor:
    """L-CUA: ``w_c·CLIP(s) + w_u·½(L_unif(x) + L_unif(y)) + w_a·L_align`` (+ ``w_x·L_xuniform``).

    Args:
        x: ``[N, d]`` image embeddings; N ≥ 2.
        y: ``[N, d]`` text embeddings.
        scale: CLIP logit scale ``s`` (tensor for a learnable one).
        t: uniformity exponent (2).
        alpha: alignment exponent (2).
        clip_weight: weight of the CLIP term (1).
        uniform_weight: weight of the uniformity terms (1).
        align_weight: weight of the alignment term (1).
        cross_uniform_weight: weight of the cross-modal uniformity (0 here; 1 in :func:`cuaxu_loss`).
        normalize: L2-normalise first (default); every term sees the unit vectors.
    """
    check_pair(x, y)
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    loss = clip_weight * clip_loss(x, y, scale, normalize=False)
    loss = loss + uniform_weight * uniformity_loss(x, y, t, normalize=False)
    loss = loss + align_weight * alignment_loss(x, y, alpha, normalize=False)
    if cross_uniform_weight != 0.0:
        loss = loss + cross_uniform_weight * cross_uniformity(x, y, t, normalize=False)
    return loss


def cuaxu_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    t: float = 2.0,
    alpha: float = 2.0,
    clip_weight: float = 1.0,
    uniform_weight: float = 1.0,
    align_weight: float = 1.0,
    cross_uniform_weight: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """L-CUAXU = L-CUA + ``w_x`` · L_xuniform: :func:`cua_loss` with ``cross_uniform_weight`` 1."""
    return cua_loss(
        x,
        y,
        scale,
        t=t,
        alpha=alpha,
        clip_weight=clip_weight,
        uniform_weight=uniform_weight,
        align_weight=align_weight,
        cross_uniform_weight=cross_uniform_weight,
        normalize=normalize,
    )


@LOSSES.register("alignment")
class AlignmentLoss(PairLoss):
    """Module form of :func:`alignment_loss` (``alpha``, default 2)."""

    def __init__(self, alpha: Positive = 2.0) -> None:
        super().__init__()
        _check("alpha", alpha)
        self.alpha = float(alpha)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return alignment_loss, {"alpha": self.alpha}


@LOSSES.register("uniformity")
class UniformityLoss(PairLoss):
    """Module form of :func:`uniformity_loss`, ``½(L_uniform(x) + L_uniform(y))`` (``t``, default 2)."""

    def __init__(self, t: Positive = 2.0) -> None:
        super().__init__()
        _check("t", t)
        self.t = float(t)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return uniformity_loss, {"t": self.t}


@LOSSES.register("align_uniform")
class AlignUniformLoss(PairLoss):
    """Module form of :func:`align_uniform_loss` (``alpha`` 2, ``t`` 2, ``lam`` 1)."""

    def __init__(self, alpha: Positive = 2.0, t: Positive = 2.0, lam: NonNegative = 1.0) -> None:
        super().__init__()
        _check("alpha", alpha)
        _check("t", t)
        self.alpha, self.t, self.lam = float(alpha), float(t), float(lam)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return align_uniform_loss, {"alpha": self.alpha, "t": self.t, "lam": self.lam}


@LOSSES.register("cua")
class CUALoss(LearnableScaleLoss):
    """Module form of :func:`cua_loss` with CLIP's learnable ``θ_s = log s`` (init ``log(1/0.07)``,
    clamped to ``[0, ln max_scale]`` after each optimizer step).

    Args:
        init_temperature: as ``CLIPLoss``.
        learnable: as ``CLIPLoss``.
        max_scale: as ``CLIPLoss``.
        t: uniformity exponent (2).
        alpha: alignment exponent (2).
        clip_weight: term weight (1).
        uniform_weight: term weight (1).
        align_weight: term weight (1).
        cross_uniform_weight: term weight (0).
    """

    default_cross_uniform_weight = 0.0
    fn: Callable[..., torch.Tensor] = staticmethod(cua_loss)

    def __init__(
        self,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        t: Positive = 2.0,
        alpha: Positive = 2.0,
        clip_weight: NonNegative = 1.0,
        uniform_weight: NonNegative = 1.0,
        align_weight: NonNegative = 1.0,
        cross_uniform_weight: NonNegative | None = None,
    ) -> None:
        super().__init__(init_temperature, learnable, max_scale)
        _check("t", t)
        _check("alpha", alpha)
        if cross_uniform_weight is None:
            cross_uniform_weight = self.default_cross_uniform_weight
        self.kwargs: dict[str, float] = {
            "t": float(t),
            "alpha": float(alpha),
            "clip_weight": float(clip_weight),
            "uniform_weight": float(uniform_weight),
            "align_weight": float(align_weight),
            "cross_uniform_weight": float(cross_uniform_weight),
        }

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return type(self).fn, {"scale": self.log_scale.exp(), **self.kwargs}


@LOSSES.register("cuaxu")
class CUAXULoss(CUALoss):
    """:class:`CUALoss` with the cross-modal uniformity term on (``cross_uniform_weight`` 1)."""

    default_cross_uniform_weight = 1.0
    fn = staticmethod(cuaxu_loss)
