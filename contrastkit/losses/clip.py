"""L-CLIP — symmetric InfoNCE with a learnable logit scale.

Spec id: L-CLIP (docs/losses.md), verified against open_clip's ``ClipLoss``.
Paper: Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision".

Formula, with ``x_i, y_j`` L2-normalised and ``s = exp(θ_s)``::

    L_ij = s · x_i·y_j (+ b)
    loss = ½ [ CE(L, arange N) + CE(Lᵀ, arange N) ]

Shapes: ``x, y: [N, d]`` → scalar. Defaults: ``θ_s = log(1/0.07)`` (s ≈ 14.29), clamped to
``[0, ln 100]`` after every optimizer step (not inside autograd), excluded from weight decay.
N = 1 has no negatives and the loss is identically 0: an error unless ``allow_single=True``.

Per-pair form (noisy-pair correction, Arazo et al. 2019 applied to pairs): pair i's loss is its
row and column term, ``ℓ_i = ½ [CE(L_i·, i) + CE(L_·i, i)]`` (:func:`clip_pair_losses`), so
``loss = (1/N) Σ_i ℓ_i``. With per-pair weights ``w`` (batch field ``pair_weights [N]``, constants)
the loss is ``(1/N) Σ_i w_i·ℓ_i``; pair i stays a negative for every other anchor whatever ``w_i``.

Similarity as a choice (Le-Khac et al. 2020, seed 79): ``similarity="dot" | "neg_sq_dist" | "rbf"``
replaces ``x_i·y_j`` by that similarity of the raw embeddings (:mod:`contrastkit.losses.similarity`);
the ``scale`` wrappers refuse it (cosine only).

Related: L-SIGLIP (sigmoid, no softmax), L-NTXENT (both views in one 2N batch), L-DCL
(positive removed from the denominator). Memory tricks (tiled, gathered, gradient-cached) are
wrappers in ``contrastkit.scale`` around :func:`clip_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_pair, check_scalar_param
from contrastkit.core.errors import InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, MaxScale, PairLoss, learnable_log_scale
from contrastkit.losses.similarity import (
    DEFAULT_SIMILARITY,
    check_similarity,
    similarity_kwargs,
    similarity_matrix,
)

__all__ = ["CLIPLoss", "check_pair_weights", "clip_loss", "clip_pair_losses"]


def clip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float | None = None,
    *,
    normalize: bool = True,
    allow_single: bool = False,
    pair_weights: torch.Tensor | None = None,
    similarity: str = DEFAULT_SIMILARITY,
    bandwidth: float = 1.0,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP). ``scale`` is the multiplier ``s`` (not its log).

    Args:
        x: ``[N, d]`` image (or view-1) embeddings.
        y: ``[N, d]`` text (or view-2) embeddings; ``y[i]`` is the positive of ``x[i]``.
        scale: logit scale ``s > 0`` (tensor for a learnable one).
        bias: optional additive logit bias (none in CLIP).
        normalize: L2-normalise ``x`` and ``y`` first (default).
        allow_single: accept N = 1 (the loss is then exactly 0).
        pair_weights: optional ``[N]`` finite weights ``w_i >= 0`` (no gradient flows to them):
            the loss is then ``(1/N) Σ_i w_i·ℓ_i`` with ℓ_i of :func:`clip_pair_losses`.
        similarity: ``x_i·y_j`` replaced by ``S_ij`` of this similarity (``"cosine"`` default,
            ``"dot"``, ``"neg_sq_dist"``, ``"rbf"``; :mod:`contrastkit.losses.similarity`).
        bandwidth: σ of the ``"rbf"`` similarity.
    Returns:
        0-d tensor, mean over the 2N cross-entropies / 2, in float32 (float64 for float64 input).
    """
    if pair_weights is not None:
        w = check_pair_weights(pair_weights, x.shape[0])
        ell = clip_pair_losses(
            x,
            y,
            scale,
            bias,
            normalize=normalize,
            allow_single=allow_single,
            similarity=similarity,
            bandwidth=bandwidth,
        )
        return (w.to(ell.dtype) * ell).mean()
    logits = _logits(x, y, scale, bias, normalize, allow_single, similarity, bandwidth)
    target = torch.arange(x.shape[0], device=x.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def clip_pair_losses(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float | None = None,
    *,
    normalize: bool = True,
    allow_single: bool = False,
    similarity: str = DEFAULT_SIMILARITY,
    bandwidth: float = 1.0,
) -> torch.Tensor:
    """Each pair's share of :func:`clip_loss`: ``ℓ_i = ½ [CE(L_i·, i) + CE(L_·i, i)]``, ``[N]``
    (row i: image i against every text; column i: text i against every image). Their mean is
    ``clip_loss(x, y, scale, bias)``. Arguments as in :func:`clip_loss`."""
    logits = _logits(x, y, scale, bias, normalize, allow_single, similarity, bandwidth)
    target = torch.arange(x.shape[0], device=x.device)
    rows = F.cross_entropy(logits, target, reduction="none")
    cols = F.cross_entropy(logits.T, target, reduction="none")
    return 0.5 * (rows + cols)


def check_pair_weights(w: torch.Tensor, n: int) -> torch.Tensor:
    """``w`` detached, once checked to be a finite, non-negative ``[n]`` tensor (else InputError)."""
    if not isinstance(w, torch.Tensor) or w.shape != (n,):
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise InputError(f"pair_weights must be a [N={n}] tensor, got {shape}")
    w = w.detach()  # weights are constants of the step: the loss never moves them
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise InputError("pair_weights must be finite and >= 0")
    return w


def _logits(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float | None,
    normalize: bool,
    allow_single: bool,
    similarity: str = DEFAULT_SIMILARITY,
    bandwidth: float = 1.0,
) -> torch.Tensor:
    check_pair(x, y)
    if x.shape[0] == 1 and not allow_single:
        raise InputError(
            "clip_loss got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    if isinstance(scale, torch.Tensor):
        check_scalar_param("scale", scale)
    # one matmul; the text→image direction uses the transposed view
    logits = scale * similarity_matrix(x, y, similarity, bandwidth=bandwidth, normalize=normalize)
    if bias is not None:
        logits = logits + bias
    return logits


@LOSSES.register("clip")
class CLIPLoss(PairLoss):
    """Module form of :func:`clip_loss` holding ``θ_s = log s`` (and an optional bias). Accepts
    the batch field ``pair_weights [N]`` (per-pair weights, e.g. noisy-pair clean probabilities).

    Args:
        init_temperature: initial ``τ = 1/s`` (CLIP: 0.07).
        learnable: learn ``θ_s`` (CLIP) or keep it fixed.
        max_scale: clamp ``s ≤ max_scale`` after each optimizer step (CLIP: 100); ``θ_s ≥ 0`` too.
        init_bias: add a learnable logit bias with this initial value (default: none).
        allow_single: see :func:`clip_loss`.
        similarity: ``"cosine"`` (default), ``"dot"``, ``"neg_sq_dist"`` or ``"rbf"``
            (:mod:`contrastkit.losses.similarity`); bandwidth: σ of ``"rbf"`` (1.0).
    """

    accepts = frozenset({"pair_weights"})

    def __init__(
        self,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        init_bias: float | None = None,
        allow_single: bool = False,
        similarity: str = DEFAULT_SIMILARITY,
        bandwidth: Positive = 1.0,
    ) -> None:
        super().__init__()
        check_similarity(similarity, bandwidth)
        self.similarity, self.bandwidth = similarity, float(bandwidth)
        self.log_scale, self.max_log_scale = learnable_log_scale(init_temperature, max_scale, learnable)
        self.bias = None if init_bias is None else nn.Parameter(torch.tensor(float(init_bias)))
        self.allow_single = allow_single

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return clip_loss, {
            "scale": self.log_scale.exp(),
            "bias": self.bias,
            "allow_single": self.allow_single,
            **similarity_kwargs(self.similarity, self.bandwidth),
        }

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        out = {"logit_scale": float(self.log_scale.detach().exp())}
        if self.bias is not None:
            out["logit_bias"] = float(self.bias.detach())
        return out
