"""Multi-view contrastive objectives: MV-InfoNCE, MV-DHEL and ColloSSL.

Triple Contrastive Learning (TCL) is in :mod:`contrastkit.losses.tcl`.

* :func:`mv_infonce_loss` (registry ``mv_infonce``), spec id L-MVINFONCE [VERIFIED];
  :func:`mv_dhel_loss` (registry ``mv_dhel``), spec id L-MVDHEL [VERIFIED]. Paper: Koromilas et al.
  2025, "A Principled Framework for Multi-View Contrastive Learning". V views × N samples, unit
  ``z_i^v``, ``e(a, b) = exp(a·b/τ)``::

      MV-InfoNCE  L = −mean_{v,i} log( Σ_{v≠w} e(z_i^v, z_i^w) / Σ_{(w,j)≠(v,i)} e(z_i^v, z_j^w) )
      MV-DHEL     L = −mean_i log( Σ_{v<w} e(z_i^v, z_i^w) / Π_v Σ_{j≠i} e(z_i^v, z_j^v) )

  (the MV-InfoNCE numerator runs over ordered pairs; MV-DHEL's uniformity stays inside each view.)
  Defaults τ = 0.2 for both (the reference MVDHEL class default; its configs use 0.5 on CIFAR /
  ImageNet-100 and 0.1 on ImageNet-1K). V ≥ 2. N = 1: MV-InfoNCE has no negatives (error unless
  ``allow_single``); MV-DHEL's per-view denominator is empty (always an error).
* :func:`collossl_loss` (registry ``collossl``), no spec entry. Paper: Jain et al. 2022,
  "ColloSSL: Collaborative Self-Supervised Learning for Human Activity Recognition". Spec form, not
  checked against the original (written from the abstract and the standard multi-positive InfoNCE):
  M devices record the same N time windows (``views[m, i]``: device m at time i). For the anchor
  device a, positives are the time-aligned windows of the positive devices P and negatives the
  windows of the negative devices G at the *other* times::

      ℓ_i = −(1/|P|) Σ_{p∈P} log( e(a_i, p_i) / [Σ_{p′∈P} e(a_i, p′_i) + Σ_{g∈G} Σ_{j≠i} e(a_i, g_j)] )

  The paper's Device Selection (which devices are positive / negative) is the caller's choice
  (default: every other device in both sets); its Contrastive Sampling of negatives is the batch
  (a random batch is a uniform sample of other times). τ = 0.1 (not checked against the paper).
Shapes: ``views: [V, N, d]`` → 0-d tensor (float32, or float64 for float64 input)
Tiled / distributed: dense only
(``TiledLoss`` / ``GatherLoss`` dispatch on clip/siglip only); distribute by gathering all views first
(the spec's "gather all views"; for TCL, gather the momentum features before enqueueing).
Related: L-NTXENT (MV-InfoNCE with V = 2 is NT-Xent − log 2), L-DCL (decoupled denominators),
``infonce`` (ColloSSL with two devices), L-CLIP (TCL's CMA with α = 0 and no queue), L-MOCO2 (queues).

Modules read ``"<modality>@0" … "<modality>@{V−1}"`` (default modality ``"image"``) or explicit
``keys``, stack them into ``[V, N, d]`` and call the pure function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from annotated_types import Ge

from contrastkit.core.checks import check_embeddings, check_finite, check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegInt, Positive
from contrastkit.losses.base import LOSSES, MultiLoss, as_float, maybe_normalize

__all__ = [
    "ColloSSLLoss",
    "MVDHELLoss",
    "MVInfoNCELoss",
    "collossl_loss",
    "mv_dhel_loss",
    "mv_infonce_loss",
    "stack_views",
]

_NEG_INF = float("-inf")


def _check_temperature(value: torch.Tensor | float) -> None:
    if isinstance(value, torch.Tensor):
        check_scalar_param("temperature", value)
    elif not value > 0:
        raise ConfigError(f"temperature must be > 0, got {value}")


def _check_views(views: torch.Tensor, name: str = "views") -> torch.Tensor:
    if not isinstance(views, torch.Tensor) or views.ndim != 3:
        shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
        raise InputError(f"{name} must have shape [V, N, d], got {shape}")
    if views.shape[0] < 2:
        raise InputError(f"{name} needs at least 2 views, got V={views.shape[0]}")
    if views.shape[1] == 0:
        raise InputError(f"{name} is an empty batch (N=0)")
    if views.shape[2] == 0:
        raise InputError(f"{name} has embedding dimension 0")
    if not views.is_floating_point():
        raise InputError(f"{name} must be a floating tensor, got dtype {views.dtype}")
    check_finite(name, views)
    return as_float(views)


def stack_views(keys: Sequence[str], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Check that every ``[N, d]`` tensor matches the first (names in errors) and stack to ``[V, N, d]``."""
    check_embeddings(keys[0], tensors[0])
    for k, t in zip(keys[1:], tensors[1:]):
        check_pair(tensors[0], t, (keys[0], k))
    ts = [as_float(t) for t in tensors]
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.stack([t.to(dtype) for t in ts])


def mv_infonce_loss(
    views: torch.Tensor,
    temperature: torch.Tensor | float = 0.2,
    *,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """MV-InfoNCE (spec L-MVINFONCE) over ``views: [V, N, d]``, V ≥ 2.

    Every row (v, i) is an anchor; its numerator is the (view-independent) sum over the ordered
    pairs of distinct views of sample i, its denominator every other row. Memory: one ``[VN, VN]``
    logit matrix plus ``[N, V, V]`` positives. ``allow_single`` accepts N = 1 (no negatives:
    the loss then only compares the views of the single sample, with no uniformity term).
    """
    views = _check_views(views)
    v, n, d = views.shape
    if n == 1 and not allow_single:
        raise InputError(
            "mv_infonce_loss got N=1: there are no negatives; pass allow_single=True if intended"
        )
    _check_temperature(temperature)
    z = maybe_normalize(views, normalize)
    flat = z.reshape(v * n, d)
    q = (flat @ flat.T) / temperature
    den = q.fill_diagonal_(_NEG_INF).logsumexp(1).view(v, n)  # in place: one VN×VN matrix alive
    pos = torch.einsum("vnd,wnd->nvw", z, z) / temperature
    eye = torch.eye(v, dtype=torch.bool, device=z.device)
    num = pos.masked_fill(eye, _NEG_INF).reshape(n, v * v).logsumexp(1)
    return (den - num).mean()


def mv_dhel_loss(
    views: torch.Tensor, temperature: torch.Tensor | float = 0.2, *, normalize: bool = True
) -> torch.Tensor:
    """MV-DHEL (spec L-MVDHEL) over ``views: [V, N, d]``, V ≥ 2, N ≥ 2 (error for N = 1).

    ``ℓ_i = Σ_v LSE_{j≠i} z_i^v·z_j^v/τ − LSE_{v<w} z_i^v·z_i^w/τ`` (the product of per-view sums
    taken in log space); memory ``[V, N, N]``.
    """
    views = _check_views(views)
    v, n, _ = views.shape
    if n == 1:
        raise InputError("mv_dhel_loss needs N >= 2: with N=1 the within-view denominator is empty")
    _check_temperature(temperature)
    z = maybe_normalize(views, normalize)
    within = torch.bmm(z, z.transpose(1, 2)) / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    uniformity = within.masked_fill(eye, _NEG_INF).logsumexp(2).sum(0)  # [N]
    iu = torch.triu_indices(v, v, 1, device=z.device)
    pos = (z[iu[0]] * z[iu[1]]).sum(-1) / temperature  # [V(V−1)/2, N]
    return (uniformity - pos.logsumexp(0)).mean()


def _device_sets(m: int, anchor: int, positives: Sequence[int] | None, negatives: Sequence[int] | None):
    if not 0 <= anchor < m:
        raise ConfigError(f"anchor device {anchor} is out of range for {m} devices")
    others = [k for k in range(m) if k != anchor]
    out = []
    for name, devs in (("positives", positives), ("negatives", negatives)):
        devs = others if devs is None else [int(k) for k in devs]
        if not devs:
            raise ConfigError(f"{name} must name at least one device")
        if len(set(devs)) != len(devs) or any(not 0 <= k < m or k == anchor for k in devs):
            raise ConfigError(
                f"{name} must be distinct devices in [0, {m}) other than the anchor {anchor}, got {devs}"
            )
        out.append(devs)
    return out


def collossl_loss(
    views: torch.Tensor,
    temperature: torch.Tensor | float = 0.1,
    *,
    anchor: int = 0,
    positives: Sequence[int] | None = None,
    negatives: Sequence[int] | None = None,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """ColloSSL multi-view contrastive loss (no spec entry; spec form, not checked against the original).

    Args:
        views: ``[M, N, d]``: device m's embedding of time window i (rows time-aligned across devices).
        temperature: τ (0.1; the paper's value not checked).
        anchor: the anchor device index.
        positives: positive devices (time-aligned windows are positives); default all but the anchor.
        negatives: negative devices (their windows at other times are negatives); default all but
            the anchor. A device may be in both sets.
        normalize: L2-normalise first (default).
        allow_single: accept N = 1 (no negatives) instead of raising.
    Returns:
        ``mean_i mean_{p∈P} [LSE(positives ∪ negatives of i) − a_i·p_i/τ]``; memory ``[N, |G|·N]``.
    """
    views = _check_views(views)
    m, n, _ = views.shape
    pos_dev, neg_dev = _device_sets(m, anchor, positives, negatives)
    if n == 1 and not allow_single:
        raise InputError("collossl_loss got N=1: there are no other times to draw negatives from")
    _check_temperature(temperature)
    z = maybe_normalize(views, normalize)
    a = z[anchor]
    pos = torch.einsum("nd,pnd->np", a, z[pos_dev]) / temperature  # [N, |P|]
    neg = torch.einsum("nd,gjd->ngj", a, z[neg_dev]) / temperature  # [N, |G|, N]
    same_time = torch.eye(n, dtype=torch.bool, device=z.device)[:, None, :]
    neg = neg.masked_fill(same_time, _NEG_INF).reshape(n, -1)
    den = torch.cat([pos, neg], dim=1).logsumexp(1)
    return (den[:, None] - pos).mean()


class _ViewLoss(MultiLoss):
    """Shared plumbing: keys ``<modality>@v`` (or explicit ``keys``) → ``[V, N, d]``."""

    def __init__(self, n_views: int, modality: str, keys: Sequence[str] | None, temperature: float) -> None:
        super().__init__()
        if keys is None:
            if int(n_views) != n_views or n_views < 2:
                raise ConfigError(f"n_views must be an integer >= 2, got {n_views}")
            keys = [f"{modality}@{v}" for v in range(n_views)]
        elif len(keys) < 2 or len(set(keys)) != len(keys):
            raise ConfigError(f"keys must name at least 2 distinct embeddings, got {list(keys)}")
        _check_temperature(temperature)
        self.inputs = tuple(keys)  # type: ignore[misc]  # instance-level: set by the config
        self.temperature = float(temperature)

    def views(self, emb: dict[str, torch.Tensor], aux: dict[str, Any]) -> torch.Tensor:
        self.check_aux(aux)
        return stack_views(self.inputs, self.select(emb))  # type: ignore[arg-type]


@LOSSES.register("mv_infonce")
class MVInfoNCELoss(_ViewLoss):
    """Module form of :func:`mv_infonce_loss` (fixed τ = 0.2). Reads ``image@0 … image@{n_views−1}``
    (``modality`` and ``n_views`` configurable) or the explicit ``keys``."""

    def __init__(
        self,
        n_views: Annotated[int, Ge(2)] = 2,
        temperature: Positive = 0.2,
        modality: str = "image",
        keys: Sequence[str] | None = None,
        allow_single: bool = False,
    ) -> None:
        super().__init__(n_views, modality, keys, temperature)
        self.allow_single = allow_single

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        views = self.views(emb, aux)
        return mv_infonce_loss(views, self.temperature, allow_single=self.allow_single)


@LOSSES.register("mv_dhel")
class MVDHELLoss(_ViewLoss):
    """Module form of :func:`mv_dhel_loss` (fixed τ = 0.2); keys as :class:`MVInfoNCELoss`."""

    def __init__(
        self,
        n_views: Annotated[int, Ge(2)] = 2,
        temperature: Positive = 0.2,
        modality: str = "image",
        keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__(n_views, modality, keys, temperature)

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        return mv_dhel_loss(self.views(emb, aux), self.temperature)


@LOSSES.register("collossl")
class ColloSSLLoss(_ViewLoss):
    """Module form of :func:`collossl_loss` (fixed τ = 0.1). Device m's embedding is read from
    ``<modality>@m`` (``modality`` default ``"image"``; ``n_views`` = number of devices) or from the
    explicit ``keys``; ``anchor`` / ``positives`` / ``negatives`` are device indices into that list."""

    def __init__(
        self,
        n_views: Annotated[int, Ge(2)] = 2,
        temperature: Positive = 0.1,
        anchor: NonNegInt = 0,
        positives: Sequence[int] | None = None,
        negatives: Sequence[int] | None = None,
        modality: str = "image",
        keys: Sequence[str] | None = None,
        allow_single: bool = False,
    ) -> None:
        super().__init__(n_views, modality, keys, temperature)
        self.pos_dev, self.neg_dev = _device_sets(len(self.inputs), anchor, positives, negatives)  # type: ignore[arg-type]
        self.anchor, self.allow_single = anchor, allow_single

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        return collossl_loss(
            self.views(emb, aux),
            self.temperature,
            anchor=self.anchor,
            positives=self.pos_dev,
            negatives=self.neg_dev,
            allow_single=self.allow_single,
        )
