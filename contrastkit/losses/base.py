"""The contract every contrastkit loss follows.

* A **pure function** (``clip_loss``, ``siglip_loss``…) over embeddings and plain scalars: no
  state, no ranks, no chunks, no model. This is what tests compare against naive formulas and what
  the ``scale`` wrappers (tiling, gathering, gradient caching) call.
* A **thin module** (``CLIPLoss``…) holding the learnable scalars (temperature, bias) with their
  paper initialisation, applying post-step constraints (clamps) and reporting its scalars for logs.

Modules are registered by name in :data:`LOSSES` so configs select them; the registry checks
parameter names against the constructor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive, Registry

__all__ = [
    "AUX_FIELDS",
    "LOSSES",
    "LearnableScaleLoss",
    "LossConfig",
    "LossTerm",
    "MaxScale",
    "MultiLoss",
    "PairLoss",
    "as_float",
    "declared_fields",
    "learnable_log_scale",
    "maybe_normalize",
]

MaxScale = Annotated[float, Ge(1)]
"""``max_scale`` of a learnable logit scale: the clamp bound ``s <= max_scale`` (>= 1)."""

# optional batch fields a loss may use: labels [N], weights [N, N] (pairwise), pair_weights [N]
# (one constant weight per pair, e.g. noisy-pair clean probabilities), image_labels / text_labels
# [N, C] (per-sample label vectors of the images and of the texts: medclip's A Uᵀ; unlike
# weights they can be gathered across processes)
AUX_FIELDS = ("labels", "weights", "pair_weights", "image_labels", "text_labels")


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of a composite loss."""

    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    """A loss by registry name and its constructor parameters (checked against the signature),
    or a weighted sum of several: ``terms: {clip: 1.0, uniformity: {weight: 0.1, params: {t: 2}}}``
    (then ``name``/``params`` stay unset). Each term's value is logged."""

    name: str = "clip"
    params: dict[str, Any] = field(default_factory=dict)
    terms: dict[str, float | LossTerm] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.terms and (self.name != "clip" or self.params):
            raise ConfigError("loss: give either name/params or terms, not both")
        for term, value in self.terms.items():
            weight = value.weight if isinstance(value, LossTerm) else value
            if not math.isfinite(weight) or weight < 0:
                raise ConfigError(f"loss.terms.{term}: the weight must be finite and >= 0, got {weight}")


LOSSES: Registry[PairLoss] = Registry("loss")


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are promoted to float32 so logits and log-sum-exps are exact enough;
    float32/float64 pass through unchanged (float64 is what the naive-formula tests use)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def declared_fields(name: str) -> frozenset[str]:
    """The batch fields registered loss ``name`` declares on its class (``accepts``). A wrapper
    whose fields depend on its instance (``accepts`` is a property: temperature schedules,
    self-distillation) declares none here."""
    accepts = getattr(LOSSES.get(name), "accepts", ())
    return frozenset(accepts) if isinstance(accepts, (frozenset, set, tuple)) else frozenset()


def maybe_normalize(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """L2-normalise rows (``F.normalize``, eps 1e-12) when asked; always promote half precision."""
    x = as_float(x)
    return F.normalize(x, dim=-1) if normalize else x


def learnable_log_scale(
    init_temperature: float = 0.07, max_scale: float = 100.0, learnable: bool = True
) -> tuple[nn.Parameter, float]:
    """CLIP's logit scale as ``θ_s = log(1/τ₀)`` (a parameter, trainable when ``learnable``) and
    the clamp bound ``ln(max_scale)`` applied after each optimizer step; validates both values."""
    if not init_temperature > 0:
        raise ConfigError(f"init_temperature must be > 0, got {init_temperature}")
    if not max_scale >= 1:
        raise ConfigError(f"max_scale must be >= 1, got {max_scale}")
    value = torch.tensor(math.log(1.0 / init_temperature))
    return nn.Parameter(value, requires_grad=learnable), math.log(max_scale)


class PairLoss(nn.Module):
    """Base module for losses over two paired embedding batches ``x[i] ↔ y[i]``.

    ``forward(x, y, **aux) -> scalar Tensor``; ``aux`` holds the optional batch fields the loss
    declares in ``accepts`` (``labels [N]``, ``weights [N, N]``, ``pair_weights [N]``) — passing one
    it does not use is an error naming the loss. The trainer calls :meth:`after_optimizer_step` after
    every optimizer step and logs :meth:`log_values`. All parameters of a loss module are excluded
    from weight decay.
    """

    accepts: ClassVar[frozenset[str]] = frozenset()

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        """The pure function and its keyword arguments (learnable scalars as live tensors) such
        that ``forward(x, y) == fn(x, y, **kwargs)``. Wrappers in ``contrastkit.scale`` (tiling,
        gathering, gradient caching) dispatch on ``fn`` so they never look inside a loss."""
        raise NotImplementedError(f"{type(self).__name__} does not expose a pure function")

    def check_aux(self, aux: dict[str, Any]) -> None:
        extra = sorted(k for k, v in aux.items() if v is not None and k not in self.accepts)
        if extra:
            uses = sorted(self.accepts) or "none"
            raise InputError(f"{type(self).__name__} does not use {extra}; it uses: {uses}")

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        fn, kwargs = self.pure()
        return fn(x, y, **kwargs, **{k: v for k, v in aux.items() if v is not None})

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Apply constraints that live outside autograd (e.g. CLIP's logit-scale clamp)."""

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging every step (temperature, bias…)."""
        return {}


class LearnableScaleLoss(PairLoss):
    """Base of losses with CLIP's learnable logit scale ``θ_s = log(1/τ)`` (:func:`learnable_log_scale`):
    clamped to ``[0, ln max_scale]`` after each optimizer step, logged as ``logit_scale``."""

    def __init__(
        self, init_temperature: Positive = 0.07, learnable: bool = True, max_scale: MaxScale = 100.0
    ) -> None:
        super().__init__()
        self.log_scale, self.max_log_scale = learnable_log_scale(init_temperature, max_scale, learnable)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.log_scale.detach().exp())}


class MultiLoss(PairLoss):
    """Base module for losses over more than two embedding sets: several modalities (GRAM,
    pairwise-anchor CLIP), several views (MV-InfoNCE), or online/momentum pairs (MoCo, BYOL).

    ``forward(emb, **aux)`` takes the model's output mapping ``{key: [N, D]}``. Keys follow one
    convention across data, model and losses: a modality name (``"image"``, ``"text"``,
    ``"attributes"``), ``"<modality>@<v>"`` for view v of a modality (``"image@0"``,
    ``"image@1"``), and a ``":ema"`` suffix for the momentum encoder's output of that key
    (``"image@1:ema"``, no gradient). ``inputs`` names the keys the loss reads (``None``: all
    present, in sorted order); a missing key is an error naming it.
    """

    inputs: ClassVar[tuple[str, ...] | None] = None
    # keys whose embeddings are the same on every rank rather than rows of the batch (the class
    # prompts of ``class_prompts``): cross-rank wrappers pass them on ungathered
    shared_inputs: ClassVar[tuple[str, ...]] = ()

    def select(self, emb: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        keys = self.inputs if self.inputs is not None else tuple(sorted(emb))
        missing = [k for k in keys if k not in emb]
        if missing:
            raise InputError(f"{type(self).__name__} needs embeddings {missing}; the batch has {sorted(emb)}")
        return [emb[k] for k in keys]

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError
