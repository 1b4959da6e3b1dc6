"""Soft- and multi-target cross-modal InfoNCE: L-CWCL, MedCLIP, multi-positive, XMC decoupled softmax.

All four replace CLIP's one-hot targets over the logit matrix ``L_ij = s · x_i·y_j`` (``s = 1/τ``,
``x_i, y_j`` L2-normalised) by a per-batch target structure given as a batch field:

* ``cwcl`` — L-CWCL [UNVERIFIED: spec form, not checked against the original (no public code)]:
  continuous targets ``w_ij = (q_i·q_j + 1)/2`` from the frozen modality ``q = y``.
* ``medclip`` — no spec entry; Wang et al. 2022 (EMNLP), "MedCLIP: Contrastive Learning from
  Unpaired Medical Images and Text": semantic matching loss as in the official code (RyanWangZf/
  MedCLIP ``ImageTextContrastiveLoss._soft_clip_loss``), soft targets from label similarity
  (``labels``, ``weights [N, N]``, or per-sample ``image_labels``/``text_labels`` — the form that
  works across processes: ``GatherAllLoss`` gathers them and ``S = A Uᵀ`` spans the global batch).
* ``multi_positive`` — no spec entry; multi-positive InfoNCE for several captions per image
  (Zheng et al. 2024, "DreamLIP": sub-captions as positives), positives = equal ``labels``.
* ``xmc_decoupled`` — no spec entry; DEXML's decoupled softmax (Gupta et al. 2024, "Dual-Encoders
  for Extreme Multi-Label Classification"), read in the official ``losses.py`` (nilesh2797/DEXML).

Learnable scale: CLIP-style ``θ_s = log s`` in the modules (init ``log(1/0.07)``, clamped to
``[0, ln 100]`` after each step) except ``xmc_decoupled`` (DEXML: fixed τ = 0.05).
Tiled: ``multi_positive`` and ``xmc_decoupled`` have exact O(N·d + tile²) forms (``scale.tile_size``,
:mod:`contrastkit.scale.tiled_zoo`, :mod:`contrastkit.scale.tiled_more`); the others are dense
only. Distributed: the targets couple the whole batch, so gather embeddings *and* the batch field
first and call once.
N = 1 (the loss is identically 0) is an error unless ``allow_single=True``.
Related: L-CLIP (one-hot targets: each loss reduces to it, see the tests), L-SUPCON, L-M3COL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_finite, check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, LearnableScaleLoss, MaxScale, maybe_normalize

__all__ = [
    "CWCLLoss",
    "MedCLIPLoss",
    "MultiPositiveLoss",
    "XMCDecoupledLoss",
    "cwcl_loss",
    "cwcl_weights",
    "medclip_loss",
    "medclip_targets",
    "multi_positive_loss",
    "xmc_decoupled_loss",
]


def _prepare(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    normalize: bool,
    allow_single: bool,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checks, normalisation and the logit matrix ``s · x yᵀ`` shared by every loss of the file."""
    check_pair(x, y)
    if x.shape[0] == 1 and not allow_single:
        raise InputError(
            f"{name} got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    if isinstance(scale, torch.Tensor):
        check_scalar_param("scale", scale)
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    return x, y, scale * (x @ y.T)


def _square(name: str, w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A detached ``[N, N]`` batch field on ``like``'s device and dtype (``like`` = the logits)."""
    n = like.shape[0]
    if not isinstance(w, torch.Tensor) or w.shape != (n, n):
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise InputError(f"{name} must have shape [N, N] = [{n}, {n}], got {shape}")
    check_finite(name, w)
    return w.detach().to(device=like.device, dtype=like.dtype)


def _labels_eq(labels: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        raise InputError(f"labels must have shape [N] = [{n}]")
    if labels.is_floating_point() or labels.is_complex():
        raise InputError(f"labels must be an integer tensor of class ids, got dtype {labels.dtype}")
    labels = labels.to(device)
    return labels[:, None] == labels[None, :]


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over rows of −Σ_j target_ij log softmax(logits)_ij."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


# ---------------------------------------------------------------------------------------------- CWCL
def cwcl_weights(q: torch.Tensor) -> torch.Tensor:
    """CWCL's intra-modal weights ``w_ij = (q̂_i·q̂_j + 1)/2 ∈ [0, 1]`` (``q̂`` unit rows), no gradient."""
    with torch.no_grad():
        qn = F.normalize(q, dim=-1)
        return (qn @ qn.T + 1) / 2


def cwcl_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    weights: torch.Tensor | None = None,
    weight_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    symmetric: bool = True,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """Continuously weighted contrastive loss (L-CWCL, spec form).

    ``L_{p→q} = −(1/N) Σ_i Σ_j (w_ij / Σ_k w_ik) · log softmax_j(s · p_i·q_j)``; with ``symmetric``
    the q→p direction (anchor ``q_i`` over the ``p_j``, same target row ``w_i``) is averaged in.

    Args:
        x: ``[N, d]`` embeddings of the *trained* modality ``p``.
        y: ``[N, d]`` embeddings of the *frozen* (pretrained) modality ``q``.
        scale: logit scale ``s = 1/τ``.
        weights: explicit ``[N, N]`` non-negative weights (default: :func:`cwcl_weights` of ``y``).
        weight_fn: ``q [N, d] → [N, N]`` replacing :func:`cwcl_weights` (run without gradient).
        symmetric: average both directions (default) or return ``L_{p→q}`` only.
    Weights never carry gradient; they are computed from unit ``q`` rows even when ``normalize=False``.
    """
    if weights is not None and weight_fn is not None:
        raise ConfigError("cwcl_loss: pass either weights or weight_fn, not both")
    _, q, logits = _prepare(x, y, scale, normalize, allow_single, "cwcl_loss")
    name = "weights" if weights is not None else "weight_fn output"
    if weights is None:
        with torch.no_grad():
            weights = weight_fn(q) if weight_fn is not None else cwcl_weights(q)
    w = _square(name, weights, logits)
    if bool((w < 0).any()):
        raise InputError(f"{name} must be non-negative")
    rows = w.sum(1, keepdim=True)
    if bool((rows <= 0).any()):
        raise InputError(f"every row of {name} needs a positive sum")
    target = w / rows
    loss = _soft_ce(logits, target)
    return 0.5 * (loss + _soft_ce(logits.T, target)) if symmetric else loss


@LOSSES.register("cwcl")
class CWCLLoss(LearnableScaleLoss):
    """Module form of :func:`cwcl_loss`: ``x`` = trained modality, ``y`` = frozen modality.

    Args: ``init_temperature`` (0.07, CLIP-style), ``learnable``, ``max_scale`` (100), ``symmetric``,
    ``weight_fn``, ``allow_single`` — see :func:`cwcl_loss`. Batch field: ``weights`` [N, N].
    """

    accepts = frozenset({"weights"})

    def __init__(
        self,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        symmetric: bool = True,
        weight_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        allow_single: bool = False,
    ) -> None:
        super().__init__(init_temperature, learnable, max_scale)
        self.symmetric, self.weight_fn, self.allow_single = symmetric, weight_fn, allow_single

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return cwcl_loss, {
            "scale": self.log_scale.exp(),
            "symmetric": self.symmetric,
            "weight_fn": self.weight_fn,
            "allow_single": self.allow_single,
        }


# ------------------------------------------------------------------------------------------- MedCLIP
def medclip_targets(
    sim: torch.Tensor, target: str = "softmax", target_temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row targets for image→text and text→image from a label-similarity matrix ``S [N, N]``.

    ``"softmax"`` (MedCLIP code): ``softmax(S/τ_t)`` over each row of ``S`` and of ``Sᵀ``;
    ``"normalize"``: ``S`` divided by its row sums (and ``Sᵀ`` by its row sums = column sums of ``S``).
    """
    if target == "softmax":
        if not target_temperature > 0:
            raise ConfigError(f"target_temperature must be > 0, got {target_temperature}")
        return F.softmax(sim / target_temperature, dim=1), F.softmax(sim.T / target_temperature, dim=1)
    if target == "normalize":
        if bool((sim < 0).any()):
            raise InputError("target='normalize' needs a non-negative label similarity")
        rows, cols = sim.sum(1, keepdim=True), sim.sum(0, keepdim=True)
        if bool((rows <= 0).any()) or bool((cols <= 0).any()):
            raise InputError(
                "target='normalize' needs every row and column of the label similarity to be > 0"
            )
        return sim / rows, (sim / cols).T
    raise ConfigError(f"target must be 'softmax' or 'normalize', got {target!r}")


def _label_overlap(a: torch.Tensor, u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``A Uᵀ`` of per-sample label vectors ``image_labels [N, C]``, ``text_labels [N, C]``, detached."""
    n = like.shape[0]
    for name, t in (("image_labels", a), ("text_labels", u)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] != n:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{name} must have shape [N, C] with N = {n}, got {shape}")
        check_finite(name, t)
    if a.shape[1] != u.shape[1]:
        raise InputError(f"image_labels and text_labels need the same C, got {a.shape[1]} and {u.shape[1]}")
    a, u = (t.detach().to(device=like.device, dtype=like.dtype) for t in (a, u))
    return a @ u.T


def medclip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    labels: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    image_labels: torch.Tensor | None = None,
    text_labels: torch.Tensor | None = None,
    target: str = "softmax",
    target_temperature: float = 1.0,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """MedCLIP semantic matching loss: ``½[CE_soft(L, T_img) + CE_soft(Lᵀ, T_txt)]``.

    The label similarity ``S`` is ``S_ij = [labels_i = labels_j]`` from class ids ``labels [N]``
    (= the cosine of one-hot label vectors); or ``S = A Uᵀ`` from per-sample label vectors
    ``image_labels [N, C]`` (``A``, of the images) and ``text_labels [N, C]`` (``U``, of the
    texts) — MedCLIP's unpaired setting, where images and reports carry their labels separately;
    per-sample, so a cross-process wrapper can gather them and ``S`` covers the global batch; or
    given directly as ``weights [N, N]``. At most one of the three (the two label-vector fields
    together); none = every pair its own class (``S = I``). Targets: :func:`medclip_targets`.
    """
    given = [k for k, v in (("labels", labels), ("weights", weights)) if v is not None]
    if image_labels is not None or text_labels is not None:
        given.append("image_labels/text_labels")
        if image_labels is None or text_labels is None:
            raise InputError("medclip_loss takes image_labels and text_labels together")
    if len(given) > 1:
        raise InputError(
            f"medclip_loss takes one of labels, weights or image_labels/text_labels, not both {given[0]} "
            f"and {given[1]}"
        )
    _, _, logits = _prepare(x, y, scale, normalize, allow_single, "medclip_loss")
    n = logits.shape[0]
    if labels is not None:
        sim = _labels_eq(labels, n, logits.device).to(logits.dtype)
    elif weights is not None:
        sim = _square("weights", weights, logits)
    elif image_labels is not None and text_labels is not None:
        sim = _label_overlap(image_labels, text_labels, logits)
    else:
        sim = torch.eye(n, dtype=logits.dtype, device=logits.device)
    t_img, t_txt = medclip_targets(sim, target, target_temperature)
    return 0.5 * (_soft_ce(logits, t_img) + _soft_ce(logits.T, t_txt))


@LOSSES.register("medclip")
class MedCLIPLoss(LearnableScaleLoss):
    """Module form of :func:`medclip_loss` (MedCLIP: ``θ_s`` init ``log(1/0.07)``, clamp ``[0, ln 100]``).

    Batch fields: ``labels`` [N], ``weights`` [N, N], or ``image_labels`` and ``text_labels``
    [N, C] (``S = A Uᵀ``, what the ``unpaired_labels`` sampler adds); at most one; none: ``S = I``.
    """

    accepts = frozenset({"labels", "weights", "image_labels", "text_labels"})

    def __init__(
        self,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        target: Literal["softmax", "normalize"] = "softmax",
        target_temperature: Positive = 1.0,
        allow_single: bool = False,
    ) -> None:
        super().__init__(init_temperature, learnable, max_scale)
        if target not in ("softmax", "normalize"):
            raise ConfigError(f"target must be 'softmax' or 'normalize', got {target!r}")
        self.target, self.target_temperature, self.allow_single = target, target_temperature, allow_single

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return medclip_loss, {
            "scale": self.log_scale.exp(),
            "target": self.target,
            "target_temperature": self.target_temperature,
            "allow_single": self.allow_single,
        }


# ------------------------------------------------------------------------------------ multi-positive
def _multi_pos_rows(logits: torch.Tensor, pos: torch.Tensor, form: str) -> torch.Tensor:
    lse = torch.logsumexp(logits, dim=1)
    if form == "in":
        return lse - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    log_p = (logits - lse[:, None]).masked_fill(~pos, 0.0)
    return -log_p.sum(1) / pos.sum(1)


def multi_positive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    labels: torch.Tensor | None = None,
    form: str = "in",
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE; ``x_i`` and ``y_j`` are positives iff ``labels_i = labels_j``.

    ``form="in"`` (default): ``ℓ_i = −log(Σ_{j∈P(i)} e^{L_ij} / Σ_j e^{L_ij})`` — the sum over
    positives inside the log (SupCon's L_in up to the constant ``log |P(i)|``, same gradient);
    ``form="out"``: ``ℓ_i = −(1/|P(i)|) Σ_{j∈P(i)} log(e^{L_ij} / Σ_k e^{L_ik})`` (SupCon's L_out).
    Loss = ½(mean_i ℓ_i over rows of L + mean_j ℓ_j over rows of Lᵀ). Every row has a positive
    (itself); without ``labels`` each row is only its own positive (exactly :func:`clip_loss`).
    """
    if form not in ("in", "out"):
        raise ConfigError(f"form must be 'in' or 'out', got {form!r}")
    _, _, logits = _prepare(x, y, scale, normalize, allow_single, "multi_positive_loss")
    n = logits.shape[0]
    if labels is None:
        pos = torch.eye(n, dtype=torch.bool, device=logits.device)
    else:
        pos = _labels_eq(labels, n, logits.device)
    return 0.5 * (_multi_pos_rows(logits, pos, form).mean() + _multi_pos_rows(logits.T, pos.T, form).mean())


@LOSSES.register("multi_positive")
class MultiPositiveLoss(LearnableScaleLoss):
    """Module form of :func:`multi_positive_loss` (CLIP-style scale). Batch field: ``labels`` [N]."""

    accepts = frozenset({"labels"})

    def __init__(
        self,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        form: Literal["in", "out"] = "in",
        allow_single: bool = False,
    ) -> None:
        super().__init__(init_temperature, learnable, max_scale)
        if form not in ("in", "out"):
            raise ConfigError(f"form must be 'in' or 'out', got {form!r}")
        self.form, self.allow_single = form, allow_single

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return multi_positive_loss, {
            "scale": self.log_scale.exp(),
            "form": self.form,
            "allow_single": self.allow_single,
        }


# ------------------------------------------------------------------------------- XMC decoupled softmax
def xmc_decoupled_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    weights: torch.Tensor | None = None,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """DEXML decoupled softmax: each positive's denominator excludes the query's other positives.

    ``ℓ_i = −(1/|P_i|) Σ_{j∈P_i} log( e^{L_ij} / (e^{L_ij} + Σ_{k∉P_i} e^{L_ik}) )``, loss = mean_i ℓ_i,
    one direction (queries ``x`` → labels ``y``) as in DEXML. ``weights [N, N]`` is the 0/1
    relevance matrix (query i relevant to label j); default the identity (then exactly
    ``CE(L, arange N)``). Every query needs at least one positive.
    """
    _, _, logits = _prepare(x, y, scale, normalize, allow_single, "xmc_decoupled_loss")
    n = logits.shape[0]
    if weights is None:
        pos = torch.eye(n, dtype=torch.bool, device=logits.device)
    else:
        w = _square("weights", weights, logits)
        if not bool(((w == 0) | (w == 1)).all()):
            raise InputError("weights must be a 0/1 (multi-hot) relevance matrix for xmc_decoupled_loss")
        pos = w.bool()
    n_pos = pos.sum(1)
    if bool((n_pos == 0).any()):
        raise InputError("every query (row of weights) needs at least one positive label")
    neg_lse = torch.logsumexp(logits.masked_fill(pos, float("-inf")), dim=1, keepdim=True)
    log_p = logits - torch.logaddexp(neg_lse, logits)  # every entry as if it were the lone positive
    return -(log_p.masked_fill(~pos, 0.0).sum(1) / n_pos).mean()


@LOSSES.register("xmc_decoupled")
class XMCDecoupledLoss(LearnableScaleLoss):
    """Module form of :func:`xmc_decoupled_loss`; DEXML default: fixed τ = 0.05 (``learnable=False``).

    Batch field: ``weights`` [N, N] 0/1 relevance (default: identity).
    """

    accepts = frozenset({"weights"})

    def __init__(
        self,
        init_temperature: Positive = 0.05,
        learnable: bool = False,
        max_scale: MaxScale = 100.0,
        allow_single: bool = False,
    ) -> None:
        super().__init__(init_temperature, learnable, max_scale)
        self.allow_single = allow_single

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return xmc_decoupled_loss, {"scale": self.log_scale.exp(), "allow_single": self.allow_single}
