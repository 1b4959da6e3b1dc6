"""Kernel-based contrastive losses: Kernel-InfoNCE (Tan et al.) and L-DECUNIF (decoupled uniformity).

* ``kernel_infonce`` — no spec entry. Tan, Zhang, Yang, Yuan 2024 (ICLR), "Contrastive Learning Is
  Spectral Clustering On Similarity Graph". Form read in the official implementation
  (yifanzhang-pro/Kernel-InfoNCE ``simclr_module.py``, ``gamma_loss``): InfoNCE whose similarity is
  the γ-exponential kernel ``k(a, b) = exp(−‖a − b‖₂^γ / τ)`` (γ = 2 Gaussian, γ = 1 Laplacian),
  SimCLR 2N layout, denominator = all 2N − 1 other rows (positive included, self excluded)::

      ℓ_a = −log( k(z_a, z_a⁺) / Σ_{b≠a} k(z_a, z_b) ),   loss = mean over the 2N anchors

  Kernel mixtures as in that code (``loss_type``): ``mixture="sum"`` = ``λ·L_γ + (1−λ)·L_{γ=2}``
  on the same embeddings (the paper's "simple sum"); ``mixture="concat"`` = ``λ·L_γ`` on the first
  ``⌊d/2⌋`` coordinates + ``(1−λ)·L_{γ=2}`` on the rest (the paper's "concatenation"; rows are
  normalised as a whole, not per half). The mixture is a weighted sum of two Kernel-InfoNCE
  losses, not the InfoNCE of a summed kernel. The reference's ``eps`` clamps are dropped (exact
  log-space). ``layout="cross"`` is our addition for image/text pairs: the same kernel logits in
  CLIP's symmetric N × N cross-entropy. Defaults (reference code): τ = 0.1, γ = 2, λ = 0.5 (searched
  in (0, 1) there). On unit vectors γ = 2 is NT-Xent at temperature τ/2 (``‖a−b‖² = 2 − 2a·b``).
* ``decoupled_uniformity`` — L-DECUNIF [VERIFIED], Dufumier et al. 2023 (ICML), "Integrating Prior
  Knowledge in Contrastive Learning with Kernel": here V = 2 views ``x, y`` (each L2-normalised),
  centroids ``μ_i = (x_i + y_i)/2`` (not re-normalised), optional prior ``α = sg((K + λI)⁻¹ K)``,
  ``μ ← α μ``, ``L = log mean_{i≠j} exp(−t ‖μ_i − μ_j‖²)``; t = 2, λ = 0.01.

Tiled: ``kernel_infonce`` has an exact O(N·d + tile²) form (``scale.tile_size``,
:mod:`contrastkit.scale.tiled_more`); ``decoupled_uniformity`` is dense only. Distributed: gather
embeddings (and the prior) first. N = 1: kernel_infonce raises unless ``allow_single``;
decoupled_uniformity always raises (no pair). Related: L-NTXENT, L-CLIP, L-UNIFORM, L-DCL.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from annotated_types import Gt, Le

from contrastkit.core.checks import check_finite, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive, Probability
from contrastkit.losses.base import LOSSES, PairLoss, as_float, maybe_normalize
from contrastkit.losses.geometry import log_mean_exp_offdiag

__all__ = [
    "DecoupledUniformityLoss",
    "KernelInfoNCELoss",
    "decoupled_uniformity_loss",
    "kernel_infonce_loss",
    "kernel_logits",
    "prior_alpha",
]

_D2_FLOOR = 1e-12  # ‖a−b‖^γ has an infinite slope at 0 for γ < 2: floor d² (gradient 0 below it)


def kernel_logits(a: torch.Tensor, b: torch.Tensor, gamma: float, temperature: float) -> torch.Tensor:
    """``−‖a_i − b_j‖₂^γ / τ`` for all pairs, ``[M, K]``, via ``‖a‖² + ‖b‖² − 2a·b`` (no [M, K, d])."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (a @ b.T)
    return -d2.clamp(min=_D2_FLOOR).pow(gamma / 2) / temperature


def _one_kernel_loss(
    x: torch.Tensor, y: torch.Tensor, gamma: float, temperature: float, layout: str
) -> torch.Tensor:
    n = x.shape[0]
    if layout == "cross":
        logits = kernel_logits(x, y, gamma, temperature)
        target = torch.arange(n, device=x.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    z = torch.cat([x, y])
    logits = kernel_logits(z, z, gamma, temperature)
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.arange(2 * n, device=z.device).roll(n)  # a ↔ a ± N
    return F.cross_entropy(logits, partner)


def _check_kernel_config(
    temperature: float, gamma: float, layout: str, mixture: str | None, mix_weight: float
) -> None:
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if not 0 < gamma <= 2:
        raise ConfigError(f"gamma must lie in (0, 2] (exp(−‖·‖^γ/τ) is a kernel there), got {gamma}")
    if layout not in ("views", "cross"):
        raise ConfigError(f"layout must be 'views' or 'cross', got {layout!r}")
    if mixture not in (None, "sum", "concat"):
        raise ConfigError(f"mixture must be None, 'sum' or 'concat', got {mixture!r}")
    if not 0 <= mix_weight <= 1:
        raise ConfigError(f"mix_weight must lie in [0, 1], got {mix_weight}")


def kernel_infonce_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    temperature: float = 0.1,
    gamma: float = 2.0,
    layout: str = "views",
    mixture: str | None = None,
    mix_weight: float = 0.5,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """Kernel-InfoNCE (see the module docstring).

    Args:
        x: ``[N, d]`` view 1 (``layout="views"``) or images (``layout="cross"``).
        y: ``[N, d]`` view 2 or texts.
        temperature: τ of ``exp(−‖a−b‖^γ/τ)``.
        gamma: kernel exponent γ ∈ (0, 2] (2 Gaussian, 1 Laplacian).
        layout: ``"views"`` (SimCLR 2N, reference) or ``"cross"`` (CLIP-style N × N, symmetric).
        mixture: ``None``, ``"sum"`` or ``"concat"``; ``mix_weight`` λ weighs the γ-term.
        normalize: L2-normalise the rows first (default, as the reference projection does).
        allow_single: accept N = 1 (the loss is then 0).
    """
    _check_kernel_config(temperature, gamma, layout, mixture, mix_weight)
    check_pair(x, y)
    if x.shape[0] == 1 and not allow_single:
        raise InputError(
            "kernel_infonce_loss got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    if mixture is None:
        return _one_kernel_loss(x, y, gamma, temperature, layout)
    if mixture == "sum":
        first = _one_kernel_loss(x, y, gamma, temperature, layout)
        return mix_weight * first + (1 - mix_weight) * _one_kernel_loss(x, y, 2.0, temperature, layout)
    h = x.shape[1] // 2
    if h == 0:
        raise InputError("mixture='concat' splits the embedding in two halves: it needs d >= 2")
    first = _one_kernel_loss(x[:, :h], y[:, :h], gamma, temperature, layout)
    return mix_weight * first + (1 - mix_weight) * _one_kernel_loss(
        x[:, h:], y[:, h:], 2.0, temperature, layout
    )


@LOSSES.register("kernel_infonce")
class KernelInfoNCELoss(PairLoss):
    """Module form of :func:`kernel_infonce_loss` (no learnable parameters; arguments as there)."""

    def __init__(
        self,
        temperature: Positive = 0.1,
        gamma: Annotated[float, Gt(0), Le(2)] = 2.0,
        layout: Literal["views", "cross"] = "views",
        mixture: Literal["sum", "concat"] | None = None,
        mix_weight: Probability = 0.5,
        allow_single: bool = False,
    ) -> None:
        super().__init__()
        _check_kernel_config(temperature, gamma, layout, mixture, mix_weight)
        self.kwargs: dict[str, Any] = {
            "temperature": temperature,
            "gamma": gamma,
            "layout": layout,
            "mixture": mixture,
            "mix_weight": mix_weight,
            "allow_single": allow_single,
        }

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return kernel_infonce_loss, dict(self.kwargs)


# ------------------------------------------------------------------------------ decoupled uniformity
def _prior_kernel(prior: torch.Tensor, n: int, kernel: str, sigma: float | None) -> torch.Tensor:
    if not isinstance(prior, torch.Tensor) or prior.ndim not in (1, 2) or prior.shape[0] != n:
        raise InputError(f"prior must have shape [N] or [N, p] with N = {n}")
    g = (
        as_float(prior.detach())
        if prior.is_floating_point()
        else prior.detach().to(torch.get_default_dtype())
    )
    g = g[:, None] if g.ndim == 1 else g
    check_finite("prior", g)
    if kernel == "cosine":
        gn = F.normalize(g, dim=-1)
        return gn @ gn.T
    if sigma is None or not sigma > 0:
        raise ConfigError(f"kernel='rbf' needs sigma > 0, got {sigma}")
    d2 = ((g * g).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2 * g @ g.T).clamp(min=0)
    return torch.exp(-d2 / (2 * sigma**2))


def prior_alpha(k: torch.Tensor, lam: float) -> torch.Tensor:
    """``α = (K + λI)⁻¹ K`` by a linear solve (no explicit inverse), without gradient."""
    with torch.no_grad():
        eye = torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
        return torch.linalg.solve(k + lam * eye, k)


def decoupled_uniformity_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    t: float = 2.0,
    weights: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    kernel: str = "rbf",
    sigma: float | None = None,
    lam: float | None = 0.01,
    normalize: bool = True,
) -> torch.Tensor:
    """Decoupled uniformity over the centroids of the two views (L-DECUNIF, V = 2).

    Args:
        x: ``[N, d]`` view 1 of N samples.
        y: ``[N, d]`` view 2 of the same samples.
        t: uniformity scale (2).
        weights: the prior kernel matrix ``K [N, N]`` (batch field), or
        prior: prior features ``[N]`` / ``[N, p]`` (weak attributes, generative-model embeddings)
            turned into ``K`` with ``kernel`` ``"rbf"`` (``exp(−‖g_i−g_j‖²/(2σ²))``, ``sigma``
            required) or ``"cosine"``. At most one of the two; neither = no prior.
        lam: ridge λ of ``(K + λI)⁻¹K`` (0.01); ``None`` → ``1/√N`` (reference).
    Alignment is implicit (``‖μ_i‖`` grows when views agree); it is not returned.
    """
    check_pair(x, y)
    n = x.shape[0]
    if n < 2:
        raise InputError("decoupled_uniformity_loss needs N >= 2 samples (uniformity is over pairs)")
    if not t > 0:
        raise ConfigError(f"t must be > 0, got {t}")
    if kernel not in ("rbf", "cosine"):
        raise ConfigError(f"kernel must be 'rbf' or 'cosine', got {kernel!r}")
    if weights is not None and prior is not None:
        raise InputError("pass the prior either as weights (kernel matrix K) or as prior features, not both")
    x = maybe_normalize(x, normalize)
    mu = (x + maybe_normalize(y, normalize).to(x.dtype)) / 2
    if weights is not None or prior is not None:
        if weights is not None:
            if not isinstance(weights, torch.Tensor) or weights.shape != (n, n):
                raise InputError(f"weights (prior kernel K) must have shape [N, N] = [{n}, {n}]")
            check_finite("weights", weights)
            k = weights.detach().to(device=mu.device, dtype=mu.dtype)
        else:
            k = _prior_kernel(prior, n, kernel, sigma).to(device=mu.device, dtype=mu.dtype)
        lam_ = 1.0 / math.sqrt(n) if lam is None else lam
        if not lam_ > 0:
            raise ConfigError(f"lam must be > 0, got {lam_}")
        mu = prior_alpha(k, lam_) @ mu
    # mean over i≠j equals mean over i<j (symmetric matrix); LSE keeps large t from underflowing
    return log_mean_exp_offdiag(mu, mu, t)


@LOSSES.register("decoupled_uniformity")
class DecoupledUniformityLoss(PairLoss):
    """Module form of :func:`decoupled_uniformity_loss`. Batch fields: ``weights`` (K) or the prior
    features, read from the field named ``prior_field`` (default ``prior``): a config selects the
    kernel prior by naming a per-sample batch field, e.g. ``prior_field: attributes`` (Shapes'
    attribute vectors) with ``kernel: rbf, sigma: 1.0``."""

    accepts = frozenset({"weights", "prior"})

    def __init__(
        self,
        t: Positive = 2.0,
        kernel: Literal["rbf", "cosine"] = "rbf",
        sigma: Positive | None = None,
        lam: Positive | None = 0.01,
        prior_field: str = "prior",
    ) -> None:
        super().__init__()
        if not t > 0:
            raise ConfigError(f"t must be > 0, got {t}")
        if kernel not in ("rbf", "cosine"):
            raise ConfigError(f"kernel must be 'rbf' or 'cosine', got {kernel!r}")
        if not prior_field or prior_field == "weights":
            raise ConfigError(
                f"prior_field must name a per-sample batch field other than weights, got {prior_field!r}"
            )
        self.kwargs: dict[str, Any] = {"t": t, "kernel": kernel, "sigma": sigma, "lam": lam}
        self.prior_field = prior_field
        self.accepts = frozenset({"weights", prior_field})  # type: ignore[misc]  # per instance

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        fields = {k: v for k, v in aux.items() if v is not None}
        if self.prior_field in fields:
            fields["prior"] = fields.pop(self.prior_field)
        return decoupled_uniformity_loss(x, y, **self.kwargs, **fields)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return decoupled_uniformity_loss, dict(self.kwargs)
