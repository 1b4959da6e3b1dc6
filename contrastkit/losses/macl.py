"""L-MACL — model-aware contrastive learning: adaptive temperature + gradient re-weighting.

Spec id: L-MACL (docs/losses.md) [VERIFIED against the official core code
(chenhaoxing/MACL, winnerziqi/MACL ``MACL.py``) and lightly's ``MACLLoss``].
Paper: Huang et al. 2023 (ICML), "Model-Aware Contrastive Learning: Towards Escaping the Dilemmas".

Official core, one direction (``x`` anchors, ``y`` candidates), ``C_ij = x_i·y_j``::

    A   = sg(mean_i C_ii)                                  alignment magnitude, no gradient
    τ_A = τ₀ · α^A  ("exp", MACL-a)  |  τ₀ (1 + β A)  ("linear", MACL-b, default)
    P   = softmax_row(C / τ_A);   W_i = sg(1 / (Σ_{j≠i} P_ij + 1e-8))
    loss = mean_i  −W_i · log P_ii

``variant="lightly"`` is lightly's paper form in the SimCLR 2N layout: both views are anchors, the
positive is the other view of the same sample, the 2N − 2 other-sample views of both views are the
negatives, ``τ_A = τ₀ (1 + α (A − A₀))`` and ``V = sg(1 / (1 − P⁺ + 1e-8))``, loss = mean over 2N.
``Σ_{j≠i} P_ij`` (= ``1 − P_ii``) is computed as ``exp(LSE_{j≠i} − LSE_all)`` so it does not cancel
when ``P_ii → 1``. Defaults: τ₀ = 0.1; ``coef`` = α = 2 ("exp"), β = 1 ("linear"), α = 0.5, A₀ = 0
("lightly"). No learnable parameters. Shapes: ``x, y: [N, d]`` → scalar. N = 1 (no negatives,
loss 0) is an error unless ``allow_single=True``. A non-positive adaptive temperature (e.g. A = −1
with "linear") is an InputError.

Tiled / distributed: dense only (``TiledLoss`` / ``GatherLoss`` dispatch on clip/siglip only);
gather the embeddings first and call once. Related: L-NTXENT / L-CLIP (fixed τ, W ≡ 1), L-DCL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from contrastkit.core.checks import check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, PairLoss, maybe_normalize

__all__ = ["MACL_VARIANTS", "MACLLoss", "macl_loss", "macl_temperature"]

MACL_VARIANTS = ("exp", "linear", "lightly")
_DEFAULT_COEF = {"exp": 2.0, "linear": 1.0, "lightly": 0.5}
_EPS = 1e-8  # the reference implementations' guard on 1 / (1 − P⁺)


def macl_temperature(
    alignment: float | torch.Tensor, variant: str, temperature: float, coef: float, a0: float = 0.0
) -> float | torch.Tensor:
    """The adaptive temperature ``τ_A`` of a variant for alignment magnitude ``A``."""
    if variant == "exp":
        return temperature * coef**alignment
    if variant == "linear":
        return temperature * (1 + coef * alignment)
    return temperature * (1 + coef * (alignment - a0))


def _check_config(variant: str, temperature: float, coef: float, symmetric: bool) -> None:
    if variant not in MACL_VARIANTS:
        raise ConfigError(f"variant must be one of {MACL_VARIANTS}, got {variant!r}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if variant == "exp" and not coef > 0:
        raise ConfigError(f"coef (the base α of τ₀·α^A) must be > 0, got {coef}")
    if symmetric and variant == "lightly":
        raise ConfigError("symmetric applies to the exp/linear variants; 'lightly' already uses both views")


def _weighted_nll(logits: torch.Tensor, pos: torch.Tensor, neg_mask: torch.Tensor) -> torch.Tensor:
    """mean_a −W_a · log P⁺_a, with ``logits`` rows already masked (−inf) where excluded,
    ``pos`` the positive logit of each row and ``neg_mask`` marking its negatives."""
    log_p = pos - torch.logsumexp(logits, dim=1)
    with torch.no_grad():  # W is a constant re-weighting (sg in the paper and both codes)
        neg = torch.logsumexp(logits.masked_fill(~neg_mask, float("-inf")), dim=1)
        w = 1.0 / (torch.exp(neg - torch.logsumexp(logits, dim=1)) + _EPS)
    return -(w * log_p).mean()


def macl_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    variant: str = "linear",
    temperature: float = 0.1,
    coef: float | None = None,
    a0: float = 0.0,
    symmetric: bool = False,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """MACL loss (see the module docstring for the formula of each variant).

    Args:
        x: ``[N, d]`` anchors (view 1); ``y``: ``[N, d]`` candidates (view 2), ``y[i]`` ↔ ``x[i]``.
        variant: ``"exp"`` (MACL-a), ``"linear"`` (MACL-b, default) or ``"lightly"`` (SimCLR 2N form).
        temperature: base temperature τ₀.
        coef: α ("exp", default 2), β ("linear", default 1) or α ("lightly", default 0.5).
        a0: A₀ of the "lightly" variant (ignored otherwise).
        symmetric: exp/linear only — average the x→y and y→x directions (same τ_A); the official
            core is one direction (default).
        normalize: L2-normalise ``x`` and ``y`` first (default); A is then the mean positive cosine.
        allow_single: accept N = 1 (the loss is then 0).
    """
    coef = _DEFAULT_COEF.get(variant, 0.0) if coef is None else coef
    _check_config(variant, temperature, coef, symmetric)
    check_pair(x, y)
    n = x.shape[0]
    if n == 1 and not allow_single:
        raise InputError(
            "macl_loss got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    pos_sim = (x * y).sum(1)
    a = float(pos_sim.detach().mean())  # alignment magnitude: a constant, no gradient path
    tau = macl_temperature(a, variant, temperature, coef, a0)
    if not tau > 0:
        raise InputError(f"MACL adaptive temperature is {tau:.3g} <= 0 (alignment A = {a:.3g}, {variant})")
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    if variant == "lightly":
        z = torch.cat([x, y])
        logits = (z @ z.T / tau).masked_fill(
            torch.eye(2 * n, dtype=torch.bool, device=x.device), float("-inf")
        )
        partner = eye.repeat(2, 2) ^ torch.eye(2 * n, dtype=torch.bool, device=x.device)
        neg_mask = ~(partner | torch.eye(2 * n, dtype=torch.bool, device=x.device))
        return _weighted_nll(logits, torch.cat([pos_sim, pos_sim]) / tau, neg_mask)
    logits = x @ y.T / tau
    loss = _weighted_nll(logits, pos_sim / tau, ~eye)
    if symmetric:
        loss = 0.5 * (loss + _weighted_nll(logits.T, pos_sim / tau, ~eye))
    return loss


@LOSSES.register("macl")
class MACLLoss(PairLoss):
    """Module form of :func:`macl_loss` (no learnable parameters; all arguments as there)."""

    def __init__(
        self,
        variant: str = "linear",
        temperature: Positive = 0.1,
        coef: float | None = None,
        a0: float = 0.0,
        symmetric: bool = False,
        allow_single: bool = False,
    ) -> None:
        super().__init__()
        _check_config(
            variant, temperature, _DEFAULT_COEF.get(variant, 0.0) if coef is None else coef, symmetric
        )
        self.kwargs: dict[str, Any] = {
            "variant": variant,
            "temperature": temperature,
            "coef": coef,
            "a0": a0,
            "symmetric": symmetric,
            "allow_single": allow_single,
        }

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return macl_loss, dict(self.kwargs)
