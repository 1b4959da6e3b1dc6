"""Multi-label classification with partial labels and a long tail: a focal-style loss that masks
unknown labels (``multi_focal``).

``multi_focal`` — no spec entry; Jia et al. 2023, "Learning in Imperfect Environment: Multi-Label
Classification with Long-Tailed Distribution and Partial Labels" (seed 87), its multi-focal
modifier loss. UNVERIFIED: spec form from the abstract ("addresses head-tail imbalance and
positive-negative imbalance"), not checked against the original; the paper's label correction and
balanced classifier are not part of it. A linear concept head ``z = W x̂ + b`` (as CatLIP) over the
image embedding, ``p = σ(z)``, targets ``t [N, C]`` in {1, 0, −1 = unknown}::

    ℓ_ic = −w_c (1 − p_ic)^{γ⁺} log p_ic        if t_ic = 1    (positive-negative modifier: γ⁺ ≠ γ⁻)
    ℓ_ic = −w_c p_ic^{γ⁻} log(1 − p_ic)         if t_ic = 0
    ℓ_ic = 0                                    if t_ic = −1   (unknown: masked, no gradient)
    w_c  = (n_max / n_c)^β                                       (head-tail modifier; 1 without counts)

``reduction="batch_mean"`` (default): ``(1/N) Σ_{i,c} ℓ_ic`` (CatLIP's); ``"mean"``: the mean over the
known entries (0 when none is known). Defaults (our choices): γ⁺ = γ⁻ = 2 (Lin et al.'s focal
loss), β = 0 (``class_counts`` per class, e.g. positive counts of the training set, enable it).
γ⁺ = γ⁻ = 0 with no unknowns and β = 0 is exactly ``catlip``'s BCE. Logs in log space
(``logsigmoid``), so large logits stay finite.

Targets reach the loss as the batch field ``targets [N, C]`` (``data.concepts`` delivers multi-hot
{0, 1} caption concepts; ``data.concepts_unknown`` marks a fixed share of each image's entries
−1). The text embedding is unused. Exactness: dense, values and gradients equal a naive float64
loop (tests). Tiled / distributed: dense only; gather embeddings and targets first
(``GatherAllLoss``). Related: L-CATLIP, ``tagalign`` (:mod:`contrastkit.losses.labels`), L-MLCD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings, check_finite, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, PositiveInt
from contrastkit.losses.base import LOSSES, PairLoss, as_float
from contrastkit.losses.labels import _ConceptHead, _linear_logits, _make_head

__all__ = ["MultiFocalLoss", "check_partial_targets", "class_weights", "multi_focal_loss"]


def check_partial_targets(targets: Any, n: int, c: int | None) -> torch.Tensor:
    """``targets [N, C]`` with entries in {1, 0, −1}, as a float tensor; else an InputError."""
    if not isinstance(targets, torch.Tensor) or targets.ndim != 2 or targets.shape[0] != n:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise InputError(f"targets must have shape [N, C] with N={n}, got {shape}")
    if c is not None and targets.shape[1] != c:
        raise InputError(f"targets must have C={c} columns (the classes), got {targets.shape[1]}")
    t = as_float(targets) if targets.is_floating_point() else targets.float()
    check_finite("targets", t)
    if not bool(((t == 1) | (t == 0) | (t == -1)).all()):
        raise InputError("targets must be 1 (positive), 0 (negative) or -1 (unknown)")
    return t


def class_weights(class_counts: Sequence[float] | torch.Tensor, beta: float) -> torch.Tensor:
    """``w_c = (n_max / n_c)^β`` of per-class counts (all > 0)."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    if n.ndim != 1 or not bool((n > 0).all()) or not bool(torch.isfinite(n).all()):
        raise ConfigError("class_counts must be a 1-D list of finite counts > 0")
    return (n.max() / n) ** beta


def multi_focal_loss(
    x: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    gamma_pos: float = 2.0,
    gamma_neg: float = 2.0,
    class_weight: torch.Tensor | None = None,
    normalize: bool = True,
    reduction: str = "batch_mean",
) -> torch.Tensor:
    """The multi-focal loss of the linear logits ``W x + b`` (module docstring).

    Args:
        x: ``[N, d]`` embeddings. targets: ``[N, C]`` in {1, 0, −1}. weight: ``[C, d]``. bias: ``[C]``.
        gamma_pos: γ⁺. gamma_neg: γ⁻. class_weight: ``[C]`` w_c (:func:`class_weights`; None: 1).
        normalize: classify the L2-normalised embedding (default). reduction: ``"batch_mean"`` | ``"mean"``.
    """
    if not gamma_pos >= 0 or not gamma_neg >= 0:
        raise ConfigError(f"gamma_pos and gamma_neg must be >= 0, got {gamma_pos}, {gamma_neg}")
    if reduction not in ("batch_mean", "mean"):
        raise ConfigError(f"reduction must be 'batch_mean' or 'mean', got {reduction!r}")
    check_embeddings("x", x)
    c = weight.shape[0] if isinstance(weight, torch.Tensor) else None
    t = check_partial_targets(targets, x.shape[0], c)
    z = _linear_logits(x, weight, bias, normalize)
    t = t.to(device=z.device, dtype=z.dtype)
    log_p, log_q = F.logsigmoid(z), F.logsigmoid(-z)  # log p, log(1 − p)
    pos = -torch.exp(gamma_pos * log_q) * log_p if gamma_pos else -log_p  # (1 − p)^γ⁺ = e^{γ⁺ log(1−p)}
    neg = -torch.exp(gamma_neg * log_p) * log_q if gamma_neg else -log_q
    per = torch.where(t == 1, pos, torch.where(t == 0, neg, torch.zeros_like(z)))
    if class_weight is not None:
        if class_weight.shape != (z.shape[1],):
            raise InputError(
                f"class_weight must have shape [C]=[{z.shape[1]}], got {tuple(class_weight.shape)}"
            )
        per = per * class_weight.to(device=z.device, dtype=z.dtype)
    if reduction == "batch_mean":
        return per.sum() / z.shape[0]
    return per.sum() / (t != -1).sum().clamp_min(1)


@LOSSES.register("multi_focal")
class MultiFocalLoss(PairLoss):
    """Module form of :func:`multi_focal_loss` holding the concept head ``Linear(d, C)``.

    Args:
        num_classes: C (``None``: read from the first ``targets``). dim: d (``None``: lazy).
        gamma_pos: γ⁺ (2). gamma_neg: γ⁻ (2).
        class_counts: per-class counts n_c for the head-tail weights (None: w_c = 1). beta: β (0).
        normalize: classify the L2-normalised embedding. reduction: ``"batch_mean"`` | ``"mean"``.
    ``forward(x, y=None, targets=...)``: y is unused (it must pair with x when given).
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"targets"})

    def __init__(
        self,
        num_classes: PositiveInt | None = None,
        dim: PositiveInt | None = None,
        gamma_pos: NonNegative = 2.0,
        gamma_neg: NonNegative = 2.0,
        class_counts: list[float] | None = None,
        beta: NonNegative = 0.0,
        normalize: bool = True,
        reduction: Literal["batch_mean", "mean"] = "batch_mean",
    ) -> None:
        super().__init__()
        if class_counts is not None and num_classes is not None and len(class_counts) != num_classes:
            raise ConfigError(f"class_counts has {len(class_counts)} entries, num_classes is {num_classes}")
        self.head = _make_head(num_classes if num_classes is not None else None, dim)
        self.kwargs: dict[str, Any] = {
            "gamma_pos": float(gamma_pos),
            "gamma_neg": float(gamma_neg),
            "normalize": normalize,
            "reduction": reduction,
        }
        weights = None if class_counts is None else class_weights(class_counts, beta).float()
        self.register_buffer("class_weight", weights)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        targets = aux.get("targets")
        if targets is None:
            raise InputError("multi_focal needs the batch field targets [N, C] (1, 0 or -1 = unknown)")
        check_embeddings("x", x)
        if y is not None:
            check_pair(x, y)
        if isinstance(self.head, _ConceptHead):
            self.head.materialize(as_float(x), check_partial_targets(targets, x.shape[0], None))
        h = self.head
        return multi_focal_loss(x, targets, h.weight, h.bias, class_weight=self.class_weight, **self.kwargs)
