"""R-UNIF-TOL — temperature schedules and the hardness-aware losses of Wang & Liu 2021.

Paper: Wang & Liu, CVPR 2021, "Understanding the Behaviour of Contrastive Loss" (seed 42): the
contrastive loss is hardness-aware, τ sets how strongly hard negatives are penalised, and a small
τ buys uniformity at the price of tolerance to semantically similar samples (the metrics are the
``uniformity_tolerance`` evaluation task, :mod:`contrastkit.evaluation.tolerance`).

* ``temperature_schedule`` (:class:`TemperatureScheduleLoss`): any registered loss with a logit
  scale ``θ_s = log(1/τ)`` (``clip``, ``infonce``, ``siglip``, ``hn_nce``…) with τ set each step
  from a schedule instead of learned (:func:`temperature_at`, ``t`` = optimizer steps taken)::

      cosine:   τ_t = τ₁ + (τ₀ − τ₁)·½(1 + cos(π t/T))      linear: τ_t = τ₀ + (τ₁ − τ₀)·t/T

  with t clamped to [0, T]. Fixed τ is the plain loss with ``learnable: false``; learned τ is its
  default. The step is a buffer advanced in :meth:`after_optimizer_step` (saved in checkpoints, so
  resume is exact; skipped steps do not advance it); ``total_steps`` should equal ``train.steps``.
* ``hard_contrastive`` (:func:`hard_contrastive_loss`, spec form, UNVERIFIED): InfoNCE keeping only
  the negatives at or above each anchor's quantile threshold ``s_i^(α)`` (the top ⌈(1−α)·M⌉ of the
  M = N − 1 negatives by similarity, ties at the threshold included; selection without gradient)::

      L_hard = mean_i −log[ e^{s_ii/τ} / (e^{s_ii/τ} + Σ_{j: s_ij ≥ s_i^(α)} e^{s_ij/τ}) ]

  α = 0 is InfoNCE (``symmetric`` = CLIP's average of both directions). Distinct from
  ``hard_negative_penalty`` (SimCLR 2N layout, exactly k negatives, no ties) and from L-HCL /
  L-HNNCE (reweighting, not truncation).
* ``simple_contrastive`` (:func:`simple_contrastive_loss`): ``mean_i [−s_ii + λ Σ_{j≠i} s_ij]``,
  the paper's loss without hardness awareness.
* :func:`relative_penalty`: ``r_ij = exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ)`` (a diagnostic).

Shapes ``x, y: [N, d]`` → scalar; L2-normalised by default (``s`` = cosines); N = 1 raises
InputError. Dense only (``hard_contrastive`` needs each row's full negative set); the schedule
keeps its inner loss's tiled and distributed forms (``pure()`` is the inner loss's).
Related: L-CLIP, L-UNIFORM, ``hard_negative_penalty`` (hard_negatives.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch

from contrastkit.core.checks import check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive, PositiveInt, Probability
from contrastkit.losses.base import LOSSES, PairLoss, maybe_normalize

__all__ = [
    "HardContrastiveLoss",
    "SimpleContrastiveLoss",
    "TemperatureScheduleLoss",
    "hard_contrastive_loss",
    "relative_penalty",
    "simple_contrastive_loss",
    "temperature_at",
]

SCHEDULES = ("constant", "linear", "cosine")
# parameters of the inner loss that the schedule owns (setting them would be silently overridden)
_OWNED = ("init_temperature", "init_scale", "learnable", "temperature")


def temperature_at(step: int, total_steps: int, start: float, end: float, schedule: str = "cosine") -> float:
    """τ after ``step`` optimizer steps of ``total_steps``: ``start`` at 0, ``end`` at the last."""
    if not (start > 0 and end > 0):
        raise ConfigError(f"temperatures must be > 0, got start={start}, end={end}")
    t = min(1.0, max(0.0, step / max(1, total_steps)))
    if schedule == "constant":
        return float(start)
    if schedule == "linear":
        return float(start + (end - start) * t)
    if schedule == "cosine":
        return float(end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t)))
    raise ConfigError(f"unknown temperature schedule {schedule!r}; available: {list(SCHEDULES)}")


def _cosines(x: torch.Tensor, y: torch.Tensor, normalize: bool, name: str) -> torch.Tensor:
    check_pair(x, y)
    if x.shape[0] < 2:
        raise InputError(f"{name} needs a batch of N >= 2 pairs (in-batch negatives), got N={x.shape[0]}")
    x = maybe_normalize(x, normalize)
    return x @ maybe_normalize(y, normalize).to(x.dtype).T


def _hard_direction(s: torch.Tensor, temperature: float, k: int) -> torch.Tensor:
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    with torch.no_grad():  # the selection is piecewise constant: no gradient through it
        neg = s.detach().masked_fill(eye, -math.inf)
        threshold = neg.topk(k, dim=1).values[:, -1:]
        keep = neg >= threshold  # ties at the threshold are kept; the diagonal (−inf) never
    logits = s / temperature
    pos = logits.diagonal()
    lse = torch.logsumexp(torch.cat([pos[:, None], logits.masked_fill(~keep, -math.inf)], 1), 1)
    return (lse - pos).mean()


def hard_contrastive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 0.07,
    *,
    alpha: float = 0.9,
    symmetric: bool = True,
    normalize: bool = True,
) -> torch.Tensor:
    """``L_hard`` of Wang & Liu 2021 (module docstring): x→y (and y→x, averaged, if ``symmetric``)."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    s = _cosines(x, y, normalize, "hard_contrastive_loss")
    m = s.shape[0] - 1
    k = min(m, max(1, math.ceil((1.0 - alpha) * m - 1e-9)))  # 1e-9: (1 − 0.7)·10 must give 3, not 4
    forward = _hard_direction(s, temperature, k)
    return 0.5 * (forward + _hard_direction(s.T, temperature, k)) if symmetric else forward


def simple_contrastive_loss(
    x: torch.Tensor, y: torch.Tensor, lam: float = 1.0, *, normalize: bool = True
) -> torch.Tensor:
    """``mean_i [−s_ii + λ Σ_{j≠i} s_ij]`` (no hardness awareness)."""
    s = _cosines(x, y, normalize, "simple_contrastive_loss")
    diag = s.diagonal()
    return (-diag + lam * (s.sum(1) - diag)).mean()


def relative_penalty(
    x: torch.Tensor, y: torch.Tensor, temperature: float, *, normalize: bool = True
) -> torch.Tensor:
    """``[N, N]`` with ``r_ij = exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ)`` off the diagonal, 0 on it."""
    s = _cosines(x, y, normalize, "relative_penalty") / temperature
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return s.masked_fill(eye, -math.inf).softmax(1)


@LOSSES.register("hard_contrastive")
class HardContrastiveLoss(PairLoss):
    """Module form of :func:`hard_contrastive_loss` (fixed τ; α = 0.9 keeps the top 10% of
    negatives, the spec's default; τ = 0.07 is our choice, CLIP's initial value)."""

    def __init__(
        self, temperature: Positive = 0.07, alpha: Probability = 0.9, symmetric: bool = True
    ) -> None:
        super().__init__()
        if not temperature > 0 or not 0 <= alpha <= 1:
            raise ConfigError(
                f"hard_contrastive needs temperature > 0 and alpha in [0, 1], got {temperature}, {alpha}"
            )
        self.temperature, self.alpha, self.symmetric = float(temperature), float(alpha), symmetric

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return hard_contrastive_loss, {
            "temperature": self.temperature,
            "alpha": self.alpha,
            "symmetric": self.symmetric,
        }


@LOSSES.register("simple_contrastive")
class SimpleContrastiveLoss(PairLoss):
    """Module form of :func:`simple_contrastive_loss` (λ = 1, the spec's default)."""

    def __init__(self, lam: NonNegative = 1.0) -> None:
        super().__init__()
        if not lam >= 0:
            raise ConfigError(f"simple_contrastive needs lam >= 0, got {lam}")
        self.lam = float(lam)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return simple_contrastive_loss, {"lam": self.lam}


@LOSSES.register("temperature_schedule")
class TemperatureScheduleLoss(PairLoss):
    """A registered loss with a logit scale, its τ set by a schedule each optimizer step.

    Args:
        loss: registry name of the inner loss (``clip`` default; any loss holding ``log_scale``).
        params: its constructor parameters (not its temperature: the schedule owns it).
        start: τ₀ at step 0 (0.1, our choice). end: τ₁ at ``total_steps`` (0.03, our choice).
        schedule: ``cosine`` (default), ``linear`` or ``constant`` (τ₀ throughout).
        total_steps: T, the run's ``train.steps`` (800, contrastkit's default).
    """

    def __init__(
        self,
        loss: str = "clip",
        params: dict[str, Any] | None = None,
        start: Positive = 0.1,
        end: Positive = 0.03,
        schedule: Literal["constant", "linear", "cosine"] = "cosine",
        total_steps: PositiveInt = 800,
    ) -> None:
        super().__init__()
        params = dict(params or {})
        owned = sorted(set(params) & set(_OWNED))
        if owned:
            raise ConfigError(f"temperature_schedule sets the temperature itself; drop params {owned}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
        temperature_at(0, 1, start, end)  # validates both temperatures
        self.inner = LOSSES.build(loss, **params)
        log_scale = getattr(self.inner, "log_scale", None)
        if not isinstance(log_scale, torch.nn.Parameter) or log_scale.numel() != 1:
            raise ConfigError(
                f"temperature_schedule needs a loss with a logit scale (log_scale); {loss!r} has none"
            )
        log_scale.requires_grad_(False)  # scheduled, not learned: no optimizer sees it
        self.start, self.end, self.schedule, self.total_steps = (
            float(start),
            float(end),
            schedule,
            int(total_steps),
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._apply_schedule()

    @property
    def accepts(self) -> frozenset[str]:  # type: ignore[override]
        return self.inner.accepts

    def temperature(self) -> float:
        return temperature_at(int(self.step), self.total_steps, self.start, self.end, self.schedule)

    @torch.no_grad()
    def _apply_schedule(self) -> None:
        self.inner.log_scale.fill_(math.log(1.0 / self.temperature()))

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return self.inner.pure()

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        return self.inner(x, y, **aux)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.inner.after_optimizer_step()  # the inner loss's constraints (its bias clamp…)
        self.step += 1
        self._apply_schedule()  # after the clamp: the schedule decides τ

    def log_values(self) -> dict[str, float]:
        return {**self.inner.log_values(), "temperature": self.temperature()}
