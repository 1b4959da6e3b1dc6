"""L-AMCL — adaptive multi-head contrastive learning (SimCLR form).

Spec id: L-AMCL (docs/losses.md) [UNVERIFIED]: spec form (the v2 ``amcl/losses.py`` of
LeiWangR/cl as described by the spec), not checked against the original paper's equations.
Paper: Wang, Koniusz, Gedeon, Zheng 2024 (ECCV), "Adaptive Multi-head Contrastive Learning".

C projection heads ``g_h`` give ``z^h = norm(g_h(v))`` for both views ``v ∈ {x, y}``; a shared
temperature net φ (Linear d→d, ReLU, Linear d→d) gives the pair temperature
``τ(a, b) = η + ι · sigmoid(−φ(a)·φ(b))``, ``ι = τ_max − η``, and ``Ω(τ) = (d/2) log τ + 1/τ``.
Per head, for each of the 2N anchors ``a`` (both views) with positive ``p`` (the other view of the
same sample) and the k most cosine-similar of the 2N − 2 other-sample views as negatives::

    ℓ(a) = −s(a,p)/τ(a,p) + (1/k) Σ_{n∈top-k} s(a,n)/τ(a,n)
           + β Ω(τ(a,p)) − β Σ_{n∈top-k} [log τ(a,n) + 1/τ(a,n)]
    loss = Σ_h mean over the 2 directions of the mean over anchors

Defaults: C = 3, η = 1e-5, τ_max = 2, β = 0.01, k = 100 (clamped to 2N − 2). The top-k mean stands
in for the paper's log-sum-exp (the spec's "practical approximation"); the selection is by detached
cosine, the selected similarities carry gradients. Temperatures are evaluated in float32 or wider.

The heads and φ are learnable and live in this loss module (``AMCLLoss``), not in the model: the
trainer optimises them with the loss's parameters (without weight decay, like every loss
parameter). They act on the embeddings the model hands to the loss (``[N, d]`` per view); φ reads the
normalised head outputs. With ``dim=None`` the layers are lazy (d read from the first batch; the
optimiser may be built before it); pass ``dim`` for distributed training (parameters are broadcast
before the first step). MoCo / SimSiam / Barlow-Twins forms of the spec are not implemented.

Caution (a property of the spec form, kept as written): the objective is unbounded below in τ.
For a positive pair with ``s(a,p) > β``, φ can drive ``τ(a,p) → η`` and the positive terms tend to
``(β − s)/η`` (about −1e5 per head); in a 60-step Shapes run the loss settles near
``−C(1 − β)/η ≈ −3e5`` while the towers still learn. The loss is negative, so a positive-loss spike
guard (``contrastkit.train`` StepGuard) misreads it.

Tiled / distributed: dense only (``TiledLoss`` and ``GatherLoss`` dispatch on clip/siglip only); for
several devices gather the embeddings first. N = 1 is an error (no negatives).
Related: L-NTXENT (one head, fixed τ, log-sum-exp over negatives), L-DCL.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from contrastkit.core.checks import check_finite, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, PairLoss, as_float, maybe_normalize

__all__ = ["AMCLLoss", "amcl_loss", "amcl_temperature"]


def amcl_temperature(prod: torch.Tensor, eta: float = 1e-5, tau_max: float = 2.0) -> torch.Tensor:
    """``τ = η + (τ_max − η) · sigmoid(−φ(a)·φ(b))`` from the products ``φ(a)·φ(b)``."""
    return eta + (tau_max - eta) * torch.sigmoid(-prod)


def _heads_view(name: str, z: torch.Tensor) -> torch.Tensor:
    if not isinstance(z, torch.Tensor) or z.ndim not in (2, 3):
        raise InputError(f"{name} must have shape [N, d] or [C, N, d]")
    if not z.is_floating_point():
        raise InputError(f"{name} must be a floating tensor, got dtype {z.dtype}")
    check_finite(name, z)
    return as_float(z if z.ndim == 3 else z[None])


def amcl_loss(
    zx: torch.Tensor,
    zy: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    *,
    eta: float = 1e-5,
    tau_max: float = 2.0,
    beta: float = 0.01,
    k: int = 100,
    normalize: bool = True,
) -> torch.Tensor:
    """AMCL loss (SimCLR form) from head outputs and temperature-net features.

    Args:
        zx: ``[C, N, d]`` (or ``[N, d]`` for one head) head outputs of view 1.
        zy: the same for view 2.
        tx: ``[C, N, e]`` (or ``[N, e]``) φ features of the rows of ``zx`` (``φ(norm(z))``).
        ty: the same for ``zy``.
        eta: lower end η of the temperature range ``[η, τ_max]``.
        tau_max: upper end τ_max of the temperature range.
        beta: regulariser weight β.
        k: negatives per anchor (top-k by cosine), clamped to ``2N − 2``.
        normalize: L2-normalise ``zx, zy`` (cosine similarity ``s``); ``d`` in Ω is their width.
    Returns:
        0-d tensor, summed over heads.
    """
    zx, zy, tx, ty = (_heads_view(n, t) for n, t in (("zx", zx), ("zy", zy), ("tx", tx), ("ty", ty)))
    if zx.shape != zy.shape:
        raise InputError(f"zx and zy must have the same shape, got {tuple(zx.shape)} and {tuple(zy.shape)}")
    if tx.shape != ty.shape or tx.shape[:2] != zx.shape[:2]:
        raise InputError(f"tx, ty must have shape [C, N, e] = [{zx.shape[0]}, {zx.shape[1]}, e]")
    n, d = zx.shape[1], zx.shape[2]
    if n < 2:
        raise InputError("amcl_loss needs N >= 2: the negatives are the other samples' views")
    if not (0 < eta < tau_max) or beta < 0 or k < 1:
        raise ConfigError("amcl: need 0 < eta < tau_max, beta >= 0, k >= 1")
    dtype = torch.promote_types(zx.dtype, torch.float32)
    z = maybe_normalize(torch.cat([zx, zy], 1).to(dtype), normalize)  # [C, 2N, d]: views x then y
    t = torch.cat([tx, ty], 1).to(dtype)
    sim = z @ z.transpose(1, 2)  # [C, 2N, 2N]
    prod = t @ t.transpose(1, 2)
    rows = torch.arange(2 * n, device=z.device)
    partner = (rows + n) % (2 * n)
    excluded = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=z.device)
    excluded[rows, rows] = True
    excluded[rows, partner] = True
    kk = min(int(k), 2 * n - 2)
    top = sim.detach().masked_fill(excluded, float("-inf")).topk(kk, dim=-1).indices  # [C, 2N, kk]
    s_neg = sim.gather(-1, top)
    tau_neg = amcl_temperature(prod.gather(-1, top), eta, tau_max)
    s_pos = sim[:, rows, partner]
    tau_pos = amcl_temperature(prod[:, rows, partner], eta, tau_max)
    omega_pos = 0.5 * d * tau_pos.log() + 1 / tau_pos
    per_anchor = (
        -s_pos / tau_pos
        + (s_neg / tau_neg).mean(-1)
        + beta * omega_pos
        - beta * (tau_neg.log() + 1 / tau_neg).sum(-1)
    )
    # both directions have N anchors each: the mean over 2N anchors is the mean of the two means
    return per_anchor.mean(-1).sum()


class _LazySquareLinear(nn.LazyLinear):
    """``Linear(d, d)`` whose ``d`` is read from the first input (becomes ``nn.Linear``)."""

    def __init__(self) -> None:
        super().__init__(0)

    def initialize_parameters(self, input: torch.Tensor) -> None:  # type: ignore[override]
        if self.has_uninitialized_params():
            self.out_features = input.shape[-1]
        super().initialize_parameters(input)


def _square(dim: int | None) -> nn.Module:
    return _LazySquareLinear() if dim is None else nn.Linear(dim, dim)


@LOSSES.register("amcl")
class AMCLLoss(PairLoss):
    """Module form of :func:`amcl_loss` holding the C heads ``Linear(d, d)`` and the shared
    temperature net φ (see the module docstring).

    Args:
        dim: embedding width d (``None``: inferred lazily from the first batch).
        heads: C (AMCL: 3). eta, tau_max, beta, k: as in :func:`amcl_loss`.
        normalize: cosine similarity on normalised head outputs (default).
    """

    def __init__(
        self,
        dim: PositiveInt | None = None,
        heads: PositiveInt = 3,
        eta: Positive = 1e-5,
        tau_max: Positive = 2.0,
        beta: NonNegative = 0.01,
        k: PositiveInt = 100,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if heads < 1 or (dim is not None and dim < 1):
            raise ConfigError(f"amcl: heads and dim must be >= 1, got heads={heads}, dim={dim}")
        if not (0 < eta < tau_max) or beta < 0 or k < 1:
            raise ConfigError("amcl: need 0 < eta < tau_max, beta >= 0, k >= 1")
        self.heads = nn.ModuleList(_square(dim) for _ in range(heads))
        self.temp_net = nn.Sequential(_square(dim), nn.ReLU(), _square(dim))
        self.eta, self.tau_max, self.beta, self.k = float(eta), float(tau_max), float(beta), int(k)
        self.normalize = normalize

    def project(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Head outputs ``zx, zy: [C, N, d]`` and φ features ``tx, ty`` (of the normalised heads)."""
        w = self.heads[0].weight
        if x.dtype != w.dtype:
            raise InputError(
                f"amcl: embeddings are {x.dtype} but the loss's heads are {w.dtype}; "
                "convert the loss module (.double() / .float())"
            )
        if not isinstance(w, nn.UninitializedParameter) and w.shape[1] != x.shape[1]:
            raise InputError(f"amcl: the heads expect d={w.shape[1]}, got embeddings with d={x.shape[1]}")
        zx = torch.stack([h(x) for h in self.heads])
        zy = torch.stack([h(y) for h in self.heads])
        tx = self.temp_net(maybe_normalize(zx, self.normalize))
        ty = self.temp_net(maybe_normalize(zy, self.normalize))
        return zx, zy, tx, ty

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        check_pair(x, y)
        zx, zy, tx, ty = self.project(as_float(x), as_float(y))
        return amcl_loss(
            zx,
            zy,
            tx,
            ty,
            eta=self.eta,
            tau_max=self.tau_max,
            beta=self.beta,
            k=self.k,
            normalize=self.normalize,
        )
