"""L-NTXENT and InfoNCE — softmax contrastive losses over two views or two modalities.

* :func:`ntxent_loss` (registry ``ntxent``), spec id L-NTXENT [VERIFIED] (docs/losses.md).
  Paper: Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"
  (SimCLR). Both views form one batch ``z = [x; y]`` of 2N rows; every row is an anchor whose
  positive is the other view of the same sample and whose candidates are all 2N − 1 other rows::

      q = z zᵀ / τ,   ℓ_k = −q_{k,k⁺} + LSE_{a≠k} q_{k,a},   loss = (1/2N) Σ_k ℓ_k

* :func:`infonce_loss` (registry ``infonce``): no spec entry of its own — it is the x→y half of
  L-CLIP (van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding";
  Radford et al. 2021 for the cosine/temperature form)::

      L_ij = s · x_i·y_j,   loss = CE(L, arange N)       (symmetric=True: ½[CE(L) + CE(Lᵀ)] = L-CLIP)

Shapes: ``x, y: [N, d]`` → 0-d tensor (float32, or float64 for float64 input).
Tiled: ``scale.tile_size`` runs ``ntxent`` and one-directional ``infonce`` in O(N·d + tile²)
memory, exactly (:mod:`contrastkit.scale.tiled_zoo`). Distributed: for several devices gather the
embeddings first. An
``InfoNCELoss(symmetric=True)`` module's ``pure()`` *is* ``clip_loss``, so it runs under both
wrappers. Similarity as a choice (seed 79): both take ``similarity="dot" | "neg_sq_dist" | "rbf"``
in place of the cosine (:mod:`contrastkit.losses.similarity`; the tiled forms refuse it).
Related: L-CLIP, L-SUPCON (NT-Xent = SupCon with two views and distinct labels), L-DCL
(positive removed from the denominator), L-AM-NTXENT (margin on the positive).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, MaxScale, PairLoss, as_float, learnable_log_scale
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.similarity import (
    DEFAULT_SIMILARITY,
    check_similarity,
    similarity_kwargs,
    similarity_matrix,
)

__all__ = ["InfoNCELoss", "NTXentLoss", "infonce_loss", "ntxent_loss"]

Reduction = Literal["mean", "sum", "simclr"]


def _check_positive(name: str, value: torch.Tensor | float) -> None:
    if isinstance(value, torch.Tensor):
        check_scalar_param(name, value)
    elif not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def ntxent_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: torch.Tensor | float = 0.1,
    *,
    reduction: Reduction = "mean",
    normalize: bool = True,
    allow_single: bool = False,
    similarity: str = DEFAULT_SIMILARITY,
    bandwidth: float = 1.0,
) -> torch.Tensor:
    """NT-Xent (SimCLR) over the 2N rows ``[x; y]`` (spec L-NTXENT).

    Args:
        x: ``[N, d]`` view-1 embeddings.
        y: ``[N, d]`` view-2 embeddings; ``y[i]`` is the positive of ``x[i]`` and vice versa.
        temperature: ``τ > 0`` (SimCLR ImageNet default 0.1; 0.5 is the usual CIFAR value).
        reduction: ``"mean"`` — ``(1/2N) Σ_k ℓ_k`` (default, the spec form); ``"sum"`` — ``Σ_k ℓ_k``;
            ``"simclr"`` — what the SimCLR TF code returns, ``loss_a + loss_b`` with each a mean over
            N anchors, i.e. exactly 2× ``"mean"`` (matters only for learning-rate comparisons).
        normalize: L2-normalise ``x`` and ``y`` first (default; SimCLR ``hidden_norm=True``).
        allow_single: accept N = 1, where each anchor's only candidate is its positive and the loss
            is identically 0; an :class:`InputError` otherwise.
        similarity: ``z_a·z_b`` replaced by this similarity (``"cosine"`` default, ``"dot"``,
            ``"neg_sq_dist"``, ``"rbf"``; :mod:`contrastkit.losses.similarity`); bandwidth: σ of rbf.
    Returns:
        0-d tensor. Memory: one ``[2N, 2N]`` logit matrix.
    """
    check_pair(x, y)
    n = x.shape[0]
    if n == 1 and not allow_single:
        raise InputError(
            "ntxent_loss got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    if reduction not in ("mean", "sum", "simclr"):
        raise ConfigError(f"reduction must be 'mean', 'sum' or 'simclr', got {reduction!r}")
    _check_positive("temperature", temperature)
    check_similarity(similarity, bandwidth)
    z = torch.cat([as_float(x), as_float(y).to(as_float(x).dtype)])
    q = similarity_matrix(z, z, similarity, bandwidth=bandwidth, normalize=normalize) / temperature
    idx = torch.arange(2 * n, device=z.device)
    pos = q[idx, (idx + n) % (2 * n)]  # row k's positive is the other view of the same sample
    # the anchor itself is not a candidate; in-place keeps a single 2N×2N matrix alive
    per_anchor = q.fill_diagonal_(float("-inf")).logsumexp(1) - pos
    if reduction == "sum":
        return per_anchor.sum()
    return per_anchor.mean() * (2.0 if reduction == "simclr" else 1.0)


def infonce_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    symmetric: bool = False,
    normalize: bool = True,
    allow_single: bool = False,
    similarity: str = DEFAULT_SIMILARITY,
    bandwidth: float = 1.0,
) -> torch.Tensor:
    """One-directional InfoNCE x→y: ``CE(s · x yᵀ, arange N)``; the candidates of ``x[i]`` are all ``y``.

    Args:
        x: ``[N, d]`` anchors (queries, images, view 1).
        y: ``[N, d]`` candidates; ``y[i]`` is the positive of ``x[i]``, the other rows its negatives.
        scale: logit scale ``s = 1/τ > 0`` (tensor for a learnable one).
        symmetric: average with the y→x direction, ``½[CE(L) + CE(Lᵀ)]`` — equal to :func:`clip_loss`.
        normalize: L2-normalise ``x`` and ``y`` first (default).
        allow_single: accept N = 1 (the loss is then exactly 0); an :class:`InputError` otherwise.
        similarity: ``x_i·y_j`` replaced by this similarity (see :func:`ntxent_loss`); bandwidth: σ.
    Returns:
        0-d tensor, mean over the N anchors.
    """
    check_pair(x, y)
    if x.shape[0] == 1 and not allow_single:
        raise InputError(
            "infonce_loss got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    _check_positive("scale", scale)
    logits = scale * similarity_matrix(x, y, similarity, bandwidth=bandwidth, normalize=normalize)
    target = torch.arange(x.shape[0], device=x.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss


@LOSSES.register("ntxent")
class NTXentLoss(PairLoss):
    """Module form of :func:`ntxent_loss` (fixed temperature, no learnable parameters).

    Args:
        temperature: ``τ`` (SimCLR: 0.1 on ImageNet).
        reduction: ``"mean"`` | ``"sum"`` | ``"simclr"`` (2× mean, as the SimCLR TF code).
        allow_single: see :func:`ntxent_loss`.
        similarity: ``"cosine"`` (default), ``"dot"``, ``"neg_sq_dist"``, ``"rbf"``; bandwidth: σ of rbf.
    """

    def __init__(
        self,
        temperature: Positive = 0.1,
        reduction: Reduction = "mean",
        allow_single: bool = False,
        similarity: str = DEFAULT_SIMILARITY,
        bandwidth: Positive = 1.0,
    ) -> None:
        super().__init__()
        check_similarity(similarity, bandwidth)
        self.similarity, self.bandwidth = similarity, float(bandwidth)
        _check_positive("temperature", temperature)
        if reduction not in ("mean", "sum", "simclr"):
            raise ConfigError(f"reduction must be 'mean', 'sum' or 'simclr', got {reduction!r}")
        self.temperature = float(temperature)
        self.reduction: Reduction = reduction
        self.allow_single = allow_single

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return ntxent_loss, {
            "temperature": self.temperature,
            "reduction": self.reduction,
            "allow_single": self.allow_single,
            **similarity_kwargs(self.similarity, self.bandwidth),
        }


@LOSSES.register("infonce")
class InfoNCELoss(PairLoss):
    """Module form of :func:`infonce_loss` holding ``θ_s = log(1/τ)`` (CLIP's parametrisation).

    Args:
        init_temperature: initial (or fixed) ``τ`` (default 0.07, CLIP's init).
        learnable: learn ``θ_s`` (default, as in CLIP) or keep ``τ`` fixed.
        max_scale: clamp ``s ≤ max_scale`` (and ``θ_s ≥ 0``) after each optimizer step (CLIP: 100).
        symmetric: use both directions; ``pure()`` then returns :func:`clip_loss` itself, so the
            module equals ``CLIPLoss`` and runs under the tiled / gathered wrappers.
        allow_single: see :func:`infonce_loss`.
    """

    def __init__(
        self,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        symmetric: bool = False,
        allow_single: bool = False,
        similarity: str = DEFAULT_SIMILARITY,
        bandwidth: Positive = 1.0,
    ) -> None:
        super().__init__()
        check_similarity(similarity, bandwidth)
        self.similarity, self.bandwidth = similarity, float(bandwidth)
        self.log_scale, self.max_log_scale = learnable_log_scale(init_temperature, max_scale, learnable)
        self.symmetric = symmetric
        self.allow_single = allow_single

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "scale": self.log_scale.exp(),
            "allow_single": self.allow_single,
            **similarity_kwargs(self.similarity, self.bandwidth),
        }
        if self.symmetric:
            return clip_loss, kwargs
        return infonce_loss, kwargs

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.log_scale.requires_grad:  # a fixed τ stays exactly what was asked for
            self.log_scale.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.log_scale.detach().exp())}
