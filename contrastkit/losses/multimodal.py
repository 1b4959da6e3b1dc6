"""Losses over k ≥ 2 modalities at once: GRAM (Gramian volume) and pairwise-anchor CLIP.

* :func:`gram_loss` (registry ``gram``), spec id L-GRAM [VERIFIED]. Paper: Cicchetti et al. 2025
  (ICLR), "Gramian Multimodal Representation Learning and Alignment". Anchor modality a (default
  ``"text"``) and k−1 others, unit vectors. For anchor i and data tuple j,
  ``A_ij = [a_i, m₂_j, …, m_k_j] ∈ R^{d×k}``, ``G_ij = A_ijᵀA_ij`` and::

      Vol_ij = sqrt(clamp(det G_ij, eps)),   loss = ½[CE(−Vol/τ, diag) + CE(−Volᵀ/τ, diag)]

  with label smoothing 0.1 and a learnable τ initialised at 0.07 (here log-parameterised, which the
  spec allows; the reference divides by the raw parameter). ``eps = 1e-12`` inside the square root
  is the spec's deviation from the reference (``sqrt(|det|)``, NaN gradients at det = 0), so a
  degenerate tuple has volume 1e-6, not 0. k = 2 gives ``Vol = sqrt(1 − cos²) = |sin θ|``, which
  cannot tell θ from π − θ: a warning. The data-anchor matching head (DAM) is out of scope.
  Complexity: Gram entries O(N²kd) (pairwise products reused), determinants O(N²k³), memory O(N²k²).
* :func:`pairwise_clip_loss` (registry ``pairwise_clip``), no spec entry: the baseline GRAM and
  ImageBind-style work compare against — the mean over the other modalities m of
  ``clip_loss(anchor, m, s_m)``. The module shares one learnable logit scale across the pairs by
  default (CLIP init 1/0.07, clamp [0, ln 100]); ``per_pair=True`` learns one scale per non-anchor
  modality (then the modality names must be given up front, so the parameters exist before the
  optimizer is built).

Shapes: ``modalities``: a sequence of k ``[N, d]`` tensors (or one ``[k, N, d]`` tensor), anchor
first → 0-d tensor. N = 1 is an error unless ``allow_single`` (the loss is then 0).
Modules read every modality present in the embedding mapping — keys without ``"@"`` (views) or
``":"`` (momentum outputs) — with the anchor first and the others in sorted order, or the explicit
``modalities`` list. Tiled / distributed: dense only (``TiledLoss`` / ``GatherLoss`` dispatch on the
two-tensor clip/siglip forms); gather every modality's embeddings first. ``pairwise_clip`` with two
modalities is exactly L-CLIP, so a two-modality run can use ``clip`` and its wrappers instead.
Missing modalities: both take ``present`` (one bool ``[N]`` mask or None per modality, aligned
with ``modalities``; the modules take the batch field ``present = {modality: bool [N]}``, an absent
key meaning all present). ``pairwise_clip_loss`` computes pair (anchor, m) on the rows where both are
present — exactly the loss of that sub-batch — skips a masked pair left with fewer than 2 rows, and
averages over the pairs that ran; ``gram_loss`` keeps the rows where every modality is present.
When nothing runs the result is a 0 that keeps every input in the autograd graph (zero gradients,
so a step with no usable rows is a no-op, never an error). Pairs without a mask behave as before.
Related: L-CLIP, L-MVINFONCE (many views of one modality).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_embeddings, check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive, Probability
from contrastkit.losses.base import LOSSES, MaxScale, MultiLoss, learnable_log_scale, maybe_normalize
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.present import check_present, graph_zero, present_masks, present_rows

__all__ = [
    "GRAMLoss",
    "PairwiseCLIPLoss",
    "gram_loss",
    "gram_volume",
    "modality_keys",
    "pairwise_clip_loss",
]


def _as_list(modalities: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(modalities, torch.Tensor):
        if modalities.ndim != 3:
            raise InputError(f"modalities must have shape [k, N, d], got {tuple(modalities.shape)}")
        mods = list(modalities.unbind(0))
    else:
        mods = list(modalities)
    if len(mods) < 2:
        raise InputError(f"need at least 2 modalities (anchor + one other), got {len(mods)}")
    check_embeddings("modality 0 (anchor)", mods[0])
    for m, t in enumerate(mods[1:], start=1):
        check_pair(mods[0], t, ("modality 0 (anchor)", f"modality {m}"))
    return mods


def gram_volume(anchor: torch.Tensor, others: Sequence[torch.Tensor], *, eps: float = 1e-12) -> torch.Tensor:
    """``Vol[i, j] = sqrt(clamp(det G_ij, eps))`` for ``A_ij = [anchor_i, others[0]_j, …]``, ``[N, N]``.

    Vectors are used as given (normalise first for the GRAM loss). The Gram matrix is assembled
    from ``anchor·anchor`` (per i), ``anchor_i·m_j`` (one matmul per other modality) and
    ``m_j·m′_j`` (per j), then ``torch.linalg.det`` on ``[N, N, k, k]``.
    """
    n = anchor.shape[0]
    m = torch.stack([t.to(anchor.dtype) for t in others])  # [k−1, N, d]
    aa = (anchor * anchor).sum(-1)[:, None, None].expand(n, n, 1)  # [N, N, 1]
    cross = torch.einsum("id,mjd->ijm", anchor, m)  # [N, N, k−1]
    inner = torch.einsum("mjd,ljd->jml", m, m)  # [N, k−1, k−1]
    top = torch.cat([aa, cross], dim=-1)  # row 0 of G_ij
    rest = torch.cat([cross[..., None], inner[None].expand(n, -1, -1, -1)], dim=-1)  # rows 1..k−1
    gram = torch.cat([top[:, :, None, :], rest], dim=2)  # [N, N, k, k]
    return torch.linalg.det(gram).clamp(min=eps).sqrt()


def gram_loss(
    modalities: Sequence[torch.Tensor] | torch.Tensor,
    temperature: torch.Tensor | float = 0.07,
    *,
    label_smoothing: float = 0.1,
    eps: float = 1e-12,
    normalize: bool = True,
    allow_single: bool = False,
    present: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """GRAM contrastive loss (spec L-GRAM): logits ``−Vol/τ``, symmetric CE with label smoothing.

    Args:
        modalities: k ≥ 2 tensors ``[N, d]`` (or ``[k, N, d]``); the first is the anchor (text).
        temperature: τ (a tensor for a learnable one), the divisor of the volumes (GRAM: 0.07).
        label_smoothing: of both cross-entropies (reference code: 0.1).
        eps: floor of ``det G`` before the square root (spec: 1e-12; the reference has none).
        normalize: L2-normalise every modality first (default; the volume assumes unit vectors).
        allow_single: accept N = 1 (the loss is then exactly 0) instead of raising.
        present: per modality a bool ``[N]`` mask or None (all present). The loss is then that of
            the rows where **every** modality is present (the volume needs the whole tuple);
            fewer than 2 such rows give a 0 that keeps the graph (zero gradients).
    Returns:
        0-d tensor ``½(L_D2A + L_A2D)``; rows of ``Vol`` are anchors, columns data tuples.
    """
    mods = _as_list(modalities)
    rows = present_rows(check_present(present, mods), range(len(mods)))
    if rows is not None:
        if rows.numel() < 2:
            return graph_zero(*mods, temperature)
        mods = [t[rows] for t in mods]
    n = mods[0].shape[0]
    if n == 1 and not allow_single:
        raise InputError(
            "gram_loss got a batch of 1: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    if len(mods) == 2:
        warnings.warn(
            "gram_loss with k=2 modalities: the volume sqrt(1-cos²) = |sin θ| cannot tell θ from "
            "π−θ (antipodal pairs count as aligned); prefer clip for two modalities",
            UserWarning,
            stacklevel=2,
        )
    if isinstance(temperature, torch.Tensor):
        check_scalar_param("temperature", temperature)
    elif not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    mods = [maybe_normalize(t, normalize) for t in mods]
    logits = -gram_volume(mods[0], mods[1:], eps=eps) / temperature
    target = torch.arange(n, device=logits.device)
    d2a = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    a2d = F.cross_entropy(logits.T, target, label_smoothing=label_smoothing)
    return 0.5 * (d2a + a2d)


def pairwise_clip_loss(
    modalities: Sequence[torch.Tensor] | torch.Tensor,
    scale: torch.Tensor | float | Sequence[torch.Tensor | float],
    *,
    normalize: bool = True,
    allow_single: bool = False,
    present: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Pairwise-anchor CLIP (no spec entry): ``mean_{m≥1} clip_loss(modalities[0], modalities[m], s_m)``.

    ``scale`` is one logit scale shared by all pairs, or a sequence of M−1 scales (one per
    non-anchor modality, in order). With M = 2 this is exactly :func:`clip_loss`.

    ``present`` (per modality a bool ``[N]`` mask or None = all present): pair (anchor, m) is the
    CLIP loss of the rows where both are present — exactly ``clip_loss`` on that sub-batch. A
    masked pair with fewer than 2 such rows is skipped (no negatives), the mean runs over the pairs
    that ran, and when every pair is skipped the result is a 0 that keeps the graph (zero
    gradients for every input and scale).
    """
    mods = _as_list(modalities)
    masks = check_present(present, mods)
    if isinstance(scale, (int, float)) or (isinstance(scale, torch.Tensor) and scale.numel() == 1):
        scales = [scale] * (len(mods) - 1)
    else:
        scales = list(scale)  # type: ignore[arg-type]
        if len(scales) != len(mods) - 1:
            raise InputError(f"got {len(scales)} scales for {len(mods) - 1} anchor pairs")
    losses = []
    for m, (other, s) in enumerate(zip(mods[1:], scales), start=1):
        rows = present_rows(masks, (0, m))
        if rows is None:
            losses.append(clip_loss(mods[0], other, s, normalize=normalize, allow_single=allow_single))
        elif rows.numel() >= 2:
            losses.append(clip_loss(mods[0][rows], other[rows], s, normalize=normalize))
    if not losses:
        return graph_zero(*mods, *scales)
    return torch.stack(losses).mean()


def modality_keys(
    emb: dict[str, torch.Tensor], anchor: str, modalities: Sequence[str] | None, who: str
) -> list[str]:
    """The keys a multi-modal loss reads: ``modalities`` (anchor moved first) or every key without
    ``"@"`` / ``":"`` present in ``emb`` (anchor first, others sorted). Missing keys are an error."""
    present = sorted(k for k in emb if "@" not in k and ":" not in k)
    keys = list(modalities) if modalities is not None else present
    if anchor not in keys:
        raise InputError(f"{who} needs the anchor modality {anchor!r}; the batch has {sorted(emb)}")
    keys = [anchor, *sorted(k for k in keys if k != anchor)]
    missing = [k for k in keys if k not in emb]
    if missing:
        raise InputError(f"{who} needs embeddings {missing}; the batch has {sorted(emb)}")
    if len(keys) < 2:
        raise InputError(f"{who} needs at least 2 modalities; the batch has {sorted(emb)}")
    return keys


def _check_modalities(anchor: str, modalities: Sequence[str] | None) -> tuple[str, ...] | None:
    if modalities is None:
        return None
    mods = tuple(modalities)
    if anchor not in mods or len(set(mods)) != len(mods) or len(mods) < 2:
        raise ConfigError(
            f"modalities must be ≥ 2 distinct names including the anchor {anchor!r}, got {mods}"
        )
    if any("@" in m or ":" in m for m in mods):
        raise ConfigError(f"modalities are plain names (no '@' view or ':' momentum suffix), got {mods}")
    return mods


@LOSSES.register("gram")
class GRAMLoss(MultiLoss):
    """Module form of :func:`gram_loss` holding ``log τ`` (init log 0.07, learnable by default).

    Args:
        anchor: the anchor modality key (GRAM: ``"text"``).
        modalities: the modality keys to read (anchor included); None = every modality present.
        init_temperature: τ init (0.07); ``learnable=False`` keeps it fixed.
        label_smoothing: 0.1 (reference code). eps: 1e-12 (spec). allow_single: see :func:`gram_loss`.

    Accepts the batch field ``present = {modality: bool [N]}`` (rows with every modality present).
    """

    accepts = frozenset({"present"})

    def __init__(
        self,
        anchor: str = "text",
        modalities: Sequence[str] | None = None,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        label_smoothing: Probability = 0.1,
        eps: float = 1e-12,
        allow_single: bool = False,
    ) -> None:
        super().__init__()
        if not init_temperature > 0:
            raise ConfigError(f"init_temperature must be > 0, got {init_temperature}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.anchor, self.modalities = anchor, _check_modalities(anchor, modalities)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature)), requires_grad=learnable)
        self.label_smoothing, self.eps, self.allow_single = label_smoothing, eps, allow_single

    def select(self, emb: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [emb[k] for k in modality_keys(emb, self.anchor, self.modalities, type(self).__name__)]

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        keys = modality_keys(emb, self.anchor, self.modalities, type(self).__name__)
        return gram_loss(
            [emb[k] for k in keys],
            self.log_temperature.exp(),
            label_smoothing=self.label_smoothing,
            eps=self.eps,
            allow_single=self.allow_single,
            present=present_masks(aux.get("present"), keys, emb, type(self).__name__),
        )

    def log_values(self) -> dict[str, float]:
        return {"temperature": float(self.log_temperature.detach().exp())}


@LOSSES.register("pairwise_clip")
class PairwiseCLIPLoss(MultiLoss):
    """Module form of :func:`pairwise_clip_loss` with CLIP's learnable logit scale(s).

    Args:
        anchor: the anchor modality key (default ``"text"``).
        modalities: the modality keys to read (anchor included); None = every modality present.
            Required when ``per_pair=True``.
        per_pair: one ``θ_s`` per non-anchor modality (``log_scales[name]``) instead of one shared.
        init_temperature: as :class:`~contrastkit.losses.clip.CLIPLoss` (1/0.07 init).
        learnable: as ``CLIPLoss``.
        max_scale: as ``CLIPLoss`` (clamp ``θ_s`` to [0, ln 100] after each optimizer step).
        allow_single: as ``CLIPLoss``.

    Accepts the batch field ``present = {modality: bool [N]}`` (see :func:`pairwise_clip_loss`).
    """

    accepts = frozenset({"present"})

    def __init__(
        self,
        anchor: str = "text",
        modalities: Sequence[str] | None = None,
        per_pair: bool = False,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        allow_single: bool = False,
    ) -> None:
        super().__init__()
        self.anchor, self.modalities = anchor, _check_modalities(anchor, modalities)
        self.log_scale: nn.Parameter | None = None
        self.log_scales: nn.ParameterDict | None = None
        if per_pair:
            if self.modalities is None:
                raise ConfigError("per_pair=True needs the modality names (modalities=[...]) up front")
            others = [m for m in self.modalities if m != anchor]
            scales = {m: learnable_log_scale(init_temperature, max_scale, learnable) for m in others}
            self.log_scales = nn.ParameterDict({m: p for m, (p, _) in scales.items()})
        else:
            self.log_scale = learnable_log_scale(init_temperature, max_scale, learnable)[0]
        self.max_log_scale, self.allow_single = math.log(max_scale), allow_single

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        keys = modality_keys(emb, self.anchor, self.modalities, type(self).__name__)
        if self.log_scales is not None:
            scales: Any = [self.log_scales[k].exp() for k in keys[1:]]
        else:
            scales = self.log_scale.exp()  # type: ignore[union-attr]
        present = present_masks(aux.get("present"), keys, emb, type(self).__name__)
        return pairwise_clip_loss(
            [emb[k] for k in keys], scales, allow_single=self.allow_single, present=present
        )

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        for p in self.parameters():
            p.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        if self.log_scales is not None:
            return {f"logit_scale_{k}": float(p.detach().exp()) for k, p in self.log_scales.items()}
        return {"logit_scale": float(self.log_scale.detach().exp())}  # type: ignore[union-attr]
