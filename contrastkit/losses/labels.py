"""Caption-concept objectives: CatLIP and TagAlign (multi-hot concept labels, binary cross-entropy).

Cluster labels (MLCD) are in :mod:`contrastkit.losses.mlcd`; squentropy and the harmonic loss in
:mod:`contrastkit.losses.classification`. Targets come from the batch field ``targets [N, C]``
(``DataConfig.concepts`` puts the sampled captions' concepts there, :mod:`contrastkit.core.concepts`).

* ``catlip`` [L-CATLIP] — Mehta et al. 2024, "CatLIP: CLIP-level Visual Recognition Accuracy with
  2.7x Faster Pre-training on Web-scale Image-Text Data". A linear head ``W [C, d], b`` over the
  image embedding classifies it against a concept vocabulary of size C; targets are multi-hot
  caption concepts: ``L = mean_i Σ_c BCE(W x_i + b, t_ic)`` (reduction ``"batch_mean"``, the spec's
  believed CatLIP reduction; ``"mean"`` averages over classes too). The text embedding is unused.
* ``tagalign`` (no spec entry) — Liu et al. 2023, "TagAlign: Improving Vision-Language Alignment with
  Multi-Tag Classification": ``L = λ_con · L-CLIP(x, y) + λ_tag · BCE(W x + b, tags)``; spec form
  from the abstract, not checked against the original (a linear tag head over the image embedding,
  λ_con = λ_tag = 1, BCE reduction ``"mean"`` so the tag term stays on the CE scale).
Tiled / distributed: dense only (``TiledLoss`` and ``GatherLoss`` dispatch on clip/siglip only);
gather embeddings (and targets) across devices first. Related: L-CLIP, L-SIGLIP, L-SUPCON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_embeddings, check_finite, check_pair
from contrastkit.core.concepts import concept_targets
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, MaxScale, PairLoss, as_float, learnable_log_scale, maybe_normalize
from contrastkit.losses.clip import clip_loss

__all__ = [
    "CatLIPLoss",
    "TagAlignLoss",
    "catlip_loss",
    "concept_targets",
    "multilabel_bce",
    "tagalign_loss",
]


def _check_targets(targets: Any, n: int, c: int | None) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor) or targets.ndim != 2 or targets.shape[0] != n:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise InputError(f"targets must have shape [N, C] with N={n}, got {shape}")
    if c is not None and targets.shape[1] != c:
        raise InputError(f"targets must have C={c} columns (the concept vocabulary), got {targets.shape[1]}")
    t = targets.float() if targets.dtype == torch.bool or not targets.is_floating_point() else targets
    check_finite("targets", t)
    if ((t < 0) | (t > 1)).any():
        raise InputError("targets must lie in [0, 1] (multi-hot or soft labels)")
    return t


def multilabel_bce(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "batch_mean"
) -> torch.Tensor:
    """BCE-with-logits of ``[N, C]`` logits: ``"batch_mean"`` sums over classes and averages over
    rows; ``"mean"`` averages over all N·C entries."""
    per = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if reduction == "batch_mean":
        return per.sum(1).mean()
    if reduction == "mean":
        return per.mean()
    raise ConfigError(f"reduction must be 'batch_mean' or 'mean', got {reduction!r}")


def _linear_logits(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, normalize: bool
) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != x.shape[1]:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise InputError(f"weight must have shape [C, d] with d={x.shape[1]}, got {shape}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise InputError(f"bias must have shape [C] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    dtype = torch.promote_types(as_float(x).dtype, weight.dtype)
    x = maybe_normalize(x, normalize).to(dtype)
    logits = x @ weight.to(dtype).T
    return logits if bias is None else logits + bias.to(dtype)


def catlip_loss(
    x: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    normalize: bool = True,
    reduction: str = "batch_mean",
) -> torch.Tensor:
    """CatLIP: BCE of the linear concept logits ``W x_i + b`` (``x`` normalised by default) against
    multi-hot ``targets [N, C]``. ``weight [C, d]``, ``bias [C]``. N = 1 is valid."""
    check_embeddings("x", x)
    t = _check_targets(targets, x.shape[0], weight.shape[0] if isinstance(weight, torch.Tensor) else None)
    return multilabel_bce(_linear_logits(x, weight, bias, normalize), t, reduction)


def tagalign_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | float,
    *,
    lambda_con: float = 1.0,
    lambda_tag: float = 1.0,
    normalize: bool = True,
    reduction: str = "mean",
    allow_single: bool = False,
) -> torch.Tensor:
    """TagAlign: ``λ_con · clip_loss(x, y, scale) + λ_tag · BCE(W x + b, targets)`` (tags of the image)."""
    check_pair(x, y)
    tag = catlip_loss(x, targets, weight, bias, normalize=normalize, reduction=reduction)
    con = clip_loss(x, y, scale, normalize=normalize, allow_single=allow_single)
    return lambda_con * con + lambda_tag * tag


class _ConceptHead(nn.LazyLinear):
    """``Linear(d, C)`` with d read from the first input and C from the first targets if unknown."""

    def __init__(self, num_concepts: int | None) -> None:
        super().__init__(num_concepts or 0)
        self.sized = num_concepts is not None

    @torch.no_grad()
    def materialize(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        if not self.sized:
            self.out_features, self.sized = targets.shape[1], True
        self(x[:1].to(self.weight.dtype))  # the lazy hook sizes the weights and turns this into nn.Linear


def _make_head(num_concepts: int | None, dim: int | None) -> nn.Module:
    if (num_concepts is not None and num_concepts < 1) or (dim is not None and dim < 1):
        raise ConfigError(f"num_concepts and dim must be >= 1, got {num_concepts}, {dim}")
    if num_concepts is not None and dim is not None:
        return nn.Linear(dim, num_concepts)
    return _ConceptHead(num_concepts)


class _ConceptLoss(PairLoss):
    """Shared part of CatLIP / TagAlign: the concept vocabulary and the linear head."""

    accepts = frozenset({"targets"})

    def __init__(
        self,
        num_concepts: int | None,
        vocabulary: Sequence[str] | None,
        dim: int | None,
        stop_words: Sequence[str] | None,
    ) -> None:
        super().__init__()
        if vocabulary is not None:
            if num_concepts is not None and num_concepts != len(vocabulary):
                raise ConfigError(f"num_concepts={num_concepts} but the vocabulary has {len(vocabulary)}")
            num_concepts = len(vocabulary)
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.stop_words = list(stop_words) if stop_words is not None else None
        self.head = _make_head(num_concepts, dim)

    def targets_for(self, captions: Sequence[str], lexicon: Mapping[str, str] | None = None) -> torch.Tensor:
        """Multi-hot targets of ``captions`` over this module's vocabulary (:func:`concept_targets`)."""
        if self.vocabulary is None:
            raise ConfigError(f"{type(self).__name__} was built without a vocabulary")
        return concept_targets(captions, self.vocabulary, stop_words=self.stop_words, lexicon=lexicon)

    def _targets(self, x: torch.Tensor, aux: dict[str, Any]) -> torch.Tensor:
        self.check_aux(aux)
        targets = aux.get("targets")
        if targets is None:
            raise InputError(
                f"{type(self).__name__} needs the batch field targets [N, C] (multi-hot concepts)"
            )
        check_embeddings("x", x)
        _check_targets(targets, x.shape[0], None)
        if isinstance(self.head, _ConceptHead):
            self.head.materialize(as_float(x), targets)
        return targets


@LOSSES.register("catlip")
class CatLIPLoss(_ConceptLoss):
    """Module form of :func:`catlip_loss` holding the concept head ``Linear(d, C)``.

    Args:
        num_concepts: C (``None``: ``len(vocabulary)``, else read from the first ``targets``).
        vocabulary: concept names (optional; enables :meth:`targets_for`).
        dim: embedding width d (``None``: lazy, read from the first batch; pass it for distributed).
        normalize: classify the L2-normalised embedding (default). reduction: see :func:`multilabel_bce`.
        stop_words: words ignored by :meth:`targets_for`.
    ``forward(x, y=None, targets=...)``: y (the text embedding) is unused; if given it must pair with x.
    """

    def __init__(
        self,
        num_concepts: PositiveInt | None = None,
        vocabulary: Sequence[str] | None = None,
        dim: PositiveInt | None = None,
        normalize: bool = True,
        reduction: str = "batch_mean",
        stop_words: Sequence[str] | None = None,
    ) -> None:
        super().__init__(num_concepts, vocabulary, dim, stop_words)
        multilabel_bce(torch.zeros(1, 1), torch.zeros(1, 1), reduction)  # validates reduction early
        self.normalize, self.reduction = normalize, reduction

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, **aux: Any) -> torch.Tensor:
        targets = self._targets(x, aux)
        if y is not None:
            check_pair(x, y)
        h = self.head
        return catlip_loss(x, targets, h.weight, h.bias, normalize=self.normalize, reduction=self.reduction)


@LOSSES.register("tagalign")
class TagAlignLoss(_ConceptLoss):
    """Module form of :func:`tagalign_loss`: the tag head, CLIP's learnable ``θ_s = log s`` (init
    log(1/0.07), clamped to ``[0, ln max_scale]`` after each step) and both terms logged as
    ``loss/contrastive`` and ``loss/tag``. Other args as :class:`CatLIPLoss`."""

    def __init__(
        self,
        num_concepts: PositiveInt | None = None,
        vocabulary: Sequence[str] | None = None,
        dim: PositiveInt | None = None,
        lambda_con: NonNegative = 1.0,
        lambda_tag: NonNegative = 1.0,
        init_temperature: Positive = 0.07,
        max_scale: MaxScale = 100.0,
        normalize: bool = True,
        reduction: str = "mean",
        stop_words: Sequence[str] | None = None,
        allow_single: bool = False,
    ) -> None:
        super().__init__(num_concepts, vocabulary, dim, stop_words)
        if lambda_con < 0 or lambda_tag < 0:
            raise ConfigError(f"tagalign: need lambdas >= 0, got {lambda_con}, {lambda_tag}")
        multilabel_bce(torch.zeros(1, 1), torch.zeros(1, 1), reduction)
        self.log_scale, self.max_log_scale = learnable_log_scale(init_temperature, max_scale)
        self.lambda_con, self.lambda_tag = float(lambda_con), float(lambda_tag)
        self.normalize, self.reduction, self.allow_single = normalize, reduction, allow_single
        self._last: dict[str, float] = {}

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        targets = self._targets(x, aux)
        check_pair(x, y)
        h = self.head
        tag = catlip_loss(x, targets, h.weight, h.bias, normalize=self.normalize, reduction=self.reduction)
        s = self.log_scale.exp()
        con = clip_loss(x, y, s, normalize=self.normalize, allow_single=self.allow_single)
        self._last = {"loss/contrastive": float(con.detach()), "loss/tag": float(tag.detach())}
        return self.lambda_con * con + self.lambda_tag * tag

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.log_scale.detach().exp()), **self._last}
