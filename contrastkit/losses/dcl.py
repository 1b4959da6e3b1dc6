"""L-DCL / L-DCLW — decoupled contrastive learning (positive removed from the denominator).

Spec ids: L-DCL, L-DCLW [VERIFIED] (docs/losses.md), checked against lightly
``loss/dcl_loss.py`` and raminnakhli/Decoupled-Contrastive-Learning.
Paper: Yeh et al. 2022, "Decoupled Contrastive Learning".

With ``s(a, b)`` the cosine similarity, for anchor ``z¹_i`` (direction 1→2)::

    ℓ_i = −w_i · s(z¹_i, z²_i)/τ + LSE_{k≠i}[ s(z¹_i, z¹_k)/τ , s(z¹_i, z²_k)/τ ]   (2N − 2 negatives)
    loss = ½ (mean_i ℓ_i(1→2) + mean_i ℓ_i(2→1))

* DCL: ``w_i = 1``.
* DCLW: ``w_i = 2 − N · softmax_i(s(z¹_i, z²_i)/σ)`` (= 2 − e^{s_i/σ} / mean_j e^{s_j/σ}; Σ_i w_i = N),
  computed on *detached* embeddings as in lightly (raminnakhli does not detach); the same weights
  serve both directions because ``s`` is symmetric.

Defaults: τ = 0.1, σ = 0.5. The loss can be negative. N = 1 has no negatives: an error.
Shapes: ``x, y: [N, d]`` → 0-d tensor. Memory: one ``[2N, 2N]`` similarity matrix.
Tiled: ``scale.tile_size`` runs DCL and DCLW in O(N·d + tile²) memory, exactly
(:mod:`contrastkit.scale.tiled_zoo`). Distributed: dense only.
The spec's distributed form (negatives from all ranks, positives local) is obtained by gathering
the embeddings first and calling this loss on the full batch (same value; each rank then holds
every anchor's term). Related: L-NTXENT (ℓ_NTXent − ℓ_DCL = log(1 + exp(q⁺ − LSE_neg)) per anchor),
L-CLIP, L-ALIGN / L-UNIFORM (DCL decouples the two).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from contrastkit.core.checks import check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, PairLoss, maybe_normalize

__all__ = ["DCLLoss", "DCLWLoss", "dcl_loss", "dclw_loss", "dclw_weights"]


def _check_positive(name: str, value: torch.Tensor | float) -> None:
    if isinstance(value, torch.Tensor):
        check_scalar_param(name, value)
    elif not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def dclw_weights(pos_sim: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """DCLW weights ``w_i = 2 − N · softmax_i(pos_sim_i / σ)`` from the positive similarities ``[N]``
    (no detach here: :func:`dclw_loss` passes detached similarities)."""
    _check_positive("sigma", sigma)
    return 2.0 - pos_sim.shape[0] * torch.softmax(pos_sim / sigma, dim=0)


def _decoupled(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: torch.Tensor | float,
    sigma: float | None,
    normalize: bool,
    who: str,
) -> torch.Tensor:
    check_pair(x, y)
    n = x.shape[0]
    if n == 1:
        raise InputError(f"{who} needs N >= 2: the negatives are the other samples' views")
    _check_positive("temperature", temperature)
    x = maybe_normalize(x, normalize)
    z = torch.cat([x, maybe_normalize(y, normalize).to(x.dtype)])
    sim = z @ z.T  # [2N, 2N]: x·x, x·y / y·x, y·y blocks in one matmul
    idx = torch.arange(2 * n, device=z.device)
    partner = (idx + n) % (2 * n)
    pos_sim = sim[idx, partner]  # [2N]: s(x_i, y_i) twice (both directions)
    q = sim / temperature
    # negatives of anchor k: every row but k itself and its other view (k ± N); in place on the
    # fresh quotient so only one more 2N×2N matrix exists
    inf = q.new_tensor(float("-inf"))
    q.index_put_((idx, idx), inf).index_put_((idx, partner), inf)
    lse_neg = q.logsumexp(1)
    pos = pos_sim / temperature
    if sigma is not None:
        w = dclw_weights(pos_sim[:n].detach(), sigma).repeat(2)
        pos = w * pos
    # mean over 2N anchors = ½ (mean over the N of direction 1→2 + mean over the N of 2→1)
    return (lse_neg - pos).mean()


def dcl_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: torch.Tensor | float = 0.1,
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Decoupled contrastive loss (spec L-DCL), symmetric over the two views.

    Args:
        x: ``[N, d]`` view-1 embeddings; N ≥ 2.
        y: ``[N, d]`` view-2 embeddings, ``y[i]`` positive of ``x[i]``.
        temperature: ``τ > 0`` (default 0.1).
        normalize: L2-normalise first (default): ``s`` is the cosine similarity.
    Returns:
        0-d tensor (may be negative).
    """
    return _decoupled(x, y, temperature, None, normalize, "dcl_loss")


def dclw_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: torch.Tensor | float = 0.1,
    sigma: float = 0.5,
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Weighted decoupled contrastive loss (spec L-DCLW): DCL with the positive term of anchor i
    weighted by ``w_i = 2 − N softmax_i(s_ii/σ)`` on detached embeddings (σ → ∞ gives DCL).

    Args:
        x: ``[N, d]`` view-1 embeddings; N ≥ 2.
        y: ``[N, d]`` view-2 embeddings.
        temperature: ``τ > 0`` (default 0.1). sigma: ``σ > 0`` (default 0.5).
        normalize: L2-normalise first (default).
    Returns:
        0-d tensor (may be negative).
    """
    _check_positive("sigma", sigma)
    return _decoupled(x, y, temperature, sigma, normalize, "dclw_loss")


@LOSSES.register("dcl")
class DCLLoss(PairLoss):
    """Module form of :func:`dcl_loss` (fixed temperature; no learnable parameters).

    Args:
        temperature: ``τ`` (default 0.1).
    """

    def __init__(self, temperature: Positive = 0.1) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = float(temperature)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return dcl_loss, {"temperature": self.temperature}


@LOSSES.register("dclw")
class DCLWLoss(PairLoss):
    """Module form of :func:`dclw_loss` (fixed temperature and σ; no learnable parameters).

    Args:
        temperature: ``τ`` (default 0.1). sigma: ``σ`` of the weighting (default 0.5).
    """

    def __init__(self, temperature: Positive = 0.1, sigma: Positive = 0.5) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        _check_positive("sigma", sigma)
        self.temperature = float(temperature)
        self.sigma = float(sigma)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return dclw_loss, {"temperature": self.temperature, "sigma": self.sigma}
