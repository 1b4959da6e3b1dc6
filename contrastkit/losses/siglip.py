"""L-SIGLIP — pairwise sigmoid loss with learnable temperature and bias.

Spec id: L-SIGLIP (docs/losses.md), verified against big_vision and open_clip.
Paper: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training".

Formula, with ``x_i, y_j`` L2-normalised, ``t = exp(t')``, ``z_ij = +1`` if ``i = j`` else ``−1``::

    ℓ_ij = t · x_i·y_j + b
    loss = (1/N) Σ_i Σ_j softplus(−z_ij · ℓ_ij)

Normalised by N (sum over each row, mean over rows), not N², as in big_vision.
Shapes: ``x, y: [N, d]`` → scalar; an explicit ``labels`` matrix in {−1, +1} ``[N, M]`` allows
several positives per row or N ≠ M. Defaults: ``t' = log 10``, ``b = −10``, no clamp (big_vision),
both excluded from weight decay. N = 1 is valid (a single positive term). Normalisation uses
``F.normalize`` (eps 1e-12); big_vision divides by ``‖z‖ + 1e-8`` — identical for non-tiny norms.

Similarity as a choice (seed 79): ``similarity="dot" | "neg_sq_dist" | "rbf"`` replaces
``x_i·y_j`` by that similarity of the raw embeddings (:mod:`contrastkit.losses.similarity`); the
chunked and ring forms refuse it (cosine only).

Related: L-CLIP (softmax over the row instead of independent sigmoids). The chunked and ring
(multi-device) forms are wrappers in ``contrastkit.scale``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_embeddings, check_scalar_param
from contrastkit.core.errors import InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, PairLoss
from contrastkit.losses.similarity import (
    DEFAULT_SIMILARITY,
    check_similarity,
    similarity_kwargs,
    similarity_matrix,
)

__all__ = ["SigLIPLoss", "siglip_loss"]


def siglip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float,
    *,
    labels: torch.Tensor | None = None,
    normalize: bool = True,
    similarity: str = DEFAULT_SIMILARITY,
    bandwidth: float = 1.0,
) -> torch.Tensor:
    """Sigmoid loss (SigLIP). ``scale`` is ``t`` (not its log).

    Args:
        x: ``[N, d]`` image embeddings.
        y: ``[M, d]`` text embeddings (``M = N`` unless ``labels`` is given).
        scale: temperature multiplier ``t > 0``.
        bias: logit bias ``b``.
        labels: optional ``[N, M]`` matrix of ±1; default ``2·I − 1``.
        normalize: L2-normalise ``x`` and ``y`` first (default; cosine only).
        similarity: ``"cosine"`` (default), ``"dot"``, ``"neg_sq_dist"`` or ``"rbf"``
            (:mod:`contrastkit.losses.similarity`); bandwidth: σ of ``"rbf"``.
    Returns:
        0-d tensor ``(1/N) Σ_ij softplus(−z_ij ℓ_ij)``.
    """
    check_embeddings("x", x)
    check_embeddings("y", y)
    if x.shape[1] != y.shape[1]:
        raise InputError(f"embedding dimension mismatch: x has d={x.shape[1]}, y has d={y.shape[1]}")
    if labels is None:
        if x.shape[0] != y.shape[0]:
            raise InputError(
                f"batch size mismatch: x has {x.shape[0]} rows, y has {y.shape[0]}; "
                "pass an explicit labels matrix for unpaired batches"
            )
    elif labels.shape != (x.shape[0], y.shape[0]):
        raise InputError(f"labels must have shape {(x.shape[0], y.shape[0])}, got {tuple(labels.shape)}")
    for name, v in (("scale", scale), ("bias", bias)):
        if isinstance(v, torch.Tensor):
            check_scalar_param(name, v)
    logits = scale * similarity_matrix(x, y, similarity, bandwidth=bandwidth, normalize=normalize) + bias
    if labels is None:
        # softplus(−z·ℓ) summed = Σ_all softplus(ℓ) − Σ_diag ℓ  (softplus(−a) = softplus(a) − a)
        total = F.softplus(logits).sum() - logits.diagonal().sum()
    else:
        total = F.softplus(-labels.to(logits.dtype) * logits).sum()
    return total / x.shape[0]


@LOSSES.register("siglip")
class SigLIPLoss(PairLoss):
    """Module form of :func:`siglip_loss` holding ``t' = log t`` and ``b``.

    Args:
        init_scale: initial ``t`` (SigLIP: 10).
        init_bias: initial ``b`` (SigLIP: −10).
        learnable: learn ``t'`` and ``b``.
        max_scale: optional clamp ``t ≤ max_scale`` after each step (big_vision: none).
        similarity: ``"cosine"`` (default), ``"dot"``, ``"neg_sq_dist"`` or ``"rbf"``;
            bandwidth: σ of ``"rbf"`` (1.0).
    """

    def __init__(
        self,
        init_scale: Positive = 10.0,
        init_bias: float = -10.0,
        learnable: bool = True,
        max_scale: Positive | None = None,
        similarity: str = DEFAULT_SIMILARITY,
        bandwidth: Positive = 1.0,
    ) -> None:
        super().__init__()
        check_similarity(similarity, bandwidth)
        self.similarity, self.bandwidth = similarity, float(bandwidth)
        if not init_scale > 0:
            raise InputError(f"init_scale must be > 0, got {init_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)), requires_grad=learnable)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)), requires_grad=learnable)
        self.max_log_scale = None if max_scale is None else math.log(max_scale)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return siglip_loss, {
            "scale": self.log_scale.exp(),
            "bias": self.bias,
            **similarity_kwargs(self.similarity, self.bandwidth),
        }

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.max_log_scale is not None:
            self.log_scale.clamp_(max=self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.log_scale.detach().exp()), "logit_bias": float(self.bias.detach())}
