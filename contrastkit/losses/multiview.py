"""Multi-view contrastive objectives: MV-InfoNCE, MV-DHEL, ColloSSL and Triple Contrastive Learning.

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
* :func:`tcl_loss` (registry ``tcl``), spec id L-TCL [VERIFIED]. Paper: Yang et al. 2022 (CVPR),
  "Vision-Language Pre-Training with Triple Contrastive Learning" — the contrastive part (ITA); the
  ITM and MLM heads are not losses over embeddings and are out of scope. Online unit features v, w
  (image, text), momentum features v̂, ŵ (no gradient), queues of momentum features, banks
  ``Î = [v̂; image_queue]``, ``T̂ = [ŵ; text_queue]``, τ learnable (init 0.07, clamped to
  [0.001, 0.5] after each step), distillation weight α (0.4)::

      CMA  L_i2t = −mean Σ_j Y^{i2t} log softmax(v T̂ᵀ/τ),  Y^{i2t} = α softmax(v̂ T̂ᵀ/τ) + (1−α) onehot(diag)
           (L_t2i likewise with w, ŵ, Î); targets under stop-gradient
      IMC  L_i2i = CE(v Îᵀ/τ, diag),  L_t2t = CE(w T̂ᵀ/τ, diag)
      LMI  ℓ_{a,k} = softplus(LSE_{b≠a, valid k′} v_a·l_{b,k′}/τ − v_a·l_{a,k}/τ), mean over the valid
           tokens of a, then over a (image: pooled patch tokens; text: tokens with a padding mask)
      loss = (L_t2t_local + L_i2i_local + L_i2t + L_t2i + L_i2i + L_t2t) / 6     (/ 4 without LMI)

  Local tokens are used as given: the reference normalises each momentum token, average-pools the
  image patches (:func:`tcl_pool_patches` here) and does not re-normalise; that is the model's job.
  N = 1 is valid: the queues carry the negatives (with an empty queue every term is 0). The module
  holds both queues as buffers and enqueues the batch's normalised momentum features after
  computing the loss (training mode only).

Shapes: ``views: [V, N, d]`` → 0-d tensor (float32, or float64 for float64 input); TCL takes
``[N, d]`` features, ``[K, d]`` queues and ``[N, L, d]`` tokens. Tiled / distributed: dense only
(``TiledLoss`` / ``GatherLoss`` dispatch on clip/siglip only); distribute by gathering all views first
(the spec's "gather all views"; for TCL, gather the momentum features before enqueueing).
Related: L-NTXENT (MV-InfoNCE with V = 2 is NT-Xent − log 2), L-DCL (decoupled denominators),
``infonce`` (ColloSSL with two devices), L-CLIP (TCL's CMA with α = 0 and no queue), L-MOCO2 (queues).

Modules read ``"<modality>@0" … "<modality>@{V−1}"`` (default modality ``"image"``) or explicit
``keys``, stack them into ``[V, N, d]`` and call the pure function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_embeddings, check_finite, check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES, MultiLoss, as_float, maybe_normalize

__all__ = [
    "ColloSSLLoss",
    "MVDHELLoss",
    "MVInfoNCELoss",
    "TCLLoss",
    "TCLTerms",
    "collossl_loss",
    "mv_dhel_loss",
    "mv_infonce_loss",
    "stack_views",
    "tcl_local_loss",
    "tcl_loss",
    "tcl_pool_patches",
    "tcl_terms",
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
        n_views: int = 2,
        temperature: float = 0.2,
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
        n_views: int = 2,
        temperature: float = 0.2,
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
        n_views: int = 2,
        temperature: float = 0.1,
        anchor: int = 0,
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


# ---------------------------------------------------------------------------------------------
# L-TCL — triple contrastive learning (CMA + IMC + LMI)


class TCLTerms(NamedTuple):
    """The six TCL terms (the two local ones are None when no tokens were given)."""

    i2t: torch.Tensor
    t2i: torch.Tensor
    i2i: torch.Tensor
    t2t: torch.Tensor
    i2i_local: torch.Tensor | None
    t2t_local: torch.Tensor | None


def tcl_pool_patches(tokens: torch.Tensor) -> torch.Tensor:
    """TCL's image local tokens: ``[N, P, d]`` patch tokens (P = side², no CLS) average-pooled with
    kernel = stride = ``c = ⌊√side⌋`` into ``c·c`` tokens. Only consistent when ``side // c == c``
    (e.g. 16×16 patches → 4×4); anything else is an :class:`InputError`."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
        raise InputError("patch tokens must have shape [N, P, d]")
    n, p, d = tokens.shape
    side = round(p**0.5)
    c = int(side**0.5)
    if side * side != p or c == 0 or side // c != c:
        raise InputError(
            f"cannot pool {p} patch tokens into c×c local tokens: need P = side² with side // ⌊√side⌋ "
            f"= ⌊√side⌋ (e.g. 256 = 16² → 4×4)"
        )
    grid = as_float(tokens).reshape(n, side, side, d).permute(0, 3, 1, 2)
    return F.avg_pool2d(grid, c, stride=c).permute(0, 2, 3, 1).reshape(n, c * c, d)


def _check_tokens(name: str, tokens: torch.Tensor, n: int, d: int) -> None:
    if (
        not isinstance(tokens, torch.Tensor)
        or tokens.ndim != 3
        or tokens.shape[0] != n
        or tokens.shape[2] != d
    ):
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise InputError(f"{name} must have shape [N={n}, L, d={d}], got {shape}")
    if tokens.shape[1] == 0 or not tokens.is_floating_point():
        raise InputError(f"{name} must be a floating tensor with at least one token")
    check_finite(name, tokens)


def _valid_mask(mask: torch.Tensor | None, n: int, length: int, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(n, length, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (n, length):
        raise InputError(f"the token mask must have shape [N={n}, L={length}]")
    if mask.dtype != torch.bool:
        if not ((mask == 0) | (mask == 1)).all():
            raise InputError("the token mask must be boolean or 0/1 (1 = real token, 0 = padding)")
        mask = mask != 0
    if not mask.any(1).all():
        raise InputError("the token mask has a row with no valid token")
    return mask.to(device)


def tcl_local_loss(
    global_feat: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: torch.Tensor | float = 0.07,
) -> torch.Tensor:
    """TCL's LMI term (global → local): anchor ``global_feat[a]`` (online, ``[N, d]``), positives its
    own valid tokens ``tokens[a, k]`` (``[N, L, d]``, detached), negatives every valid token of every
    other sample. ``ℓ_{a,k} = softplus(LSE_neg(a) − u_{a,k})`` with LSE_neg computed once per anchor;
    padding (``mask == 0``) contributes exactly 0; mean over a's valid tokens, then over a.
    Features are used as given (no normalisation here); memory ``[N, N, L]``."""
    n, d = global_feat.shape
    _check_tokens("tokens", tokens, n, d)
    valid = _valid_mask(mask, n, tokens.shape[1], global_feat.device)
    u = torch.einsum("ad,bkd->abk", global_feat, tokens.detach().to(global_feat.dtype)) / temperature
    u_pos = u.diagonal(dim1=0, dim2=1).T  # [N, L]: u[a, a, k]
    if n == 1:  # no negatives: every ℓ is softplus(−inf) = 0 (and LSE over nothing has no gradient)
        return (0.0 * u_pos).sum()
    own = torch.eye(n, dtype=torch.bool, device=u.device)[:, :, None]
    lse_neg = u.masked_fill(own | ~valid[None], _NEG_INF).reshape(n, -1).logsumexp(1)
    ell = F.softplus(lse_neg[:, None] - u_pos).masked_fill(~valid, 0.0)
    return (ell.sum(1) / valid.sum(1)).mean()


def _soft_ce(q: torch.Tensor, bank: torch.Tensor, q_m: torch.Tensor, alpha: float, tau: Any) -> torch.Tensor:
    """``−mean Σ_j Y_ij log softmax(q bankᵀ/τ)_ij`` with
    ``Y = α softmax(q_m bankᵀ/sg(τ)) + (1−α) onehot(diag)``."""
    logits = q @ bank.T / tau
    target = torch.arange(q.shape[0], device=q.device)
    hard = F.cross_entropy(logits, target)
    if alpha == 0:
        return hard
    with torch.no_grad():
        soft = F.softmax(q_m @ bank.T / (tau.detach() if isinstance(tau, torch.Tensor) else tau), dim=1)
    # Σ_j Y_ij(−log p_ij) splits linearly into the distilled and the one-hot parts
    return alpha * -(soft * F.log_softmax(logits, dim=1)).sum(1).mean() + (1 - alpha) * hard


def _check_queue(name: str, queue: torch.Tensor | None, d: int, like: torch.Tensor) -> torch.Tensor:
    if queue is None:
        return like.new_zeros((0, d))
    if not isinstance(queue, torch.Tensor) or queue.ndim != 2 or queue.shape[1] != d:
        raise InputError(f"{name} must have shape [K, d={d}]")
    if not queue.is_floating_point():
        raise InputError(f"{name} must be a floating tensor, got dtype {queue.dtype}")
    check_finite(name, queue)
    return queue.detach().to(like.dtype)


def tcl_terms(
    image: torch.Tensor,
    text: torch.Tensor,
    image_ema: torch.Tensor,
    text_ema: torch.Tensor,
    image_queue: torch.Tensor | None = None,
    text_queue: torch.Tensor | None = None,
    *,
    temperature: torch.Tensor | float = 0.07,
    alpha: float = 0.4,
    image_tokens: torch.Tensor | None = None,
    text_tokens: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    normalize: bool = True,
) -> TCLTerms:
    """The six TCL terms (spec L-TCL); see :func:`tcl_loss` for the arguments."""
    for name, t in (("text", text), ("image_ema", image_ema), ("text_ema", text_ema)):
        check_pair(image, t, ("image", name))
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    _check_temperature(temperature)
    if (image_tokens is None) != (text_tokens is None):
        raise InputError("LMI needs both image_tokens and text_tokens (or neither)")
    if text_mask is not None and text_tokens is None:
        raise InputError("text_mask was given without text_tokens")
    v = maybe_normalize(image, normalize)
    w = maybe_normalize(text, normalize).to(v.dtype)
    v_m = maybe_normalize(image_ema.detach(), normalize).to(v.dtype)
    w_m = maybe_normalize(text_ema.detach(), normalize).to(v.dtype)
    d = v.shape[1]
    bank_i = torch.cat([v_m, _check_queue("image_queue", image_queue, d, v)])
    bank_t = torch.cat([w_m, _check_queue("text_queue", text_queue, d, v)])
    local_i = local_t = None
    if image_tokens is not None and text_tokens is not None:
        local_i = tcl_local_loss(v, image_tokens, None, temperature)
        local_t = tcl_local_loss(w, text_tokens, text_mask, temperature)
    return TCLTerms(
        i2t=_soft_ce(v, bank_t, v_m, alpha, temperature),
        t2i=_soft_ce(w, bank_i, w_m, alpha, temperature),
        i2i=_soft_ce(v, bank_i, v_m, 0.0, temperature),
        t2t=_soft_ce(w, bank_t, w_m, 0.0, temperature),
        i2i_local=local_i,
        t2t_local=local_t,
    )


def tcl_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    image_ema: torch.Tensor,
    text_ema: torch.Tensor,
    image_queue: torch.Tensor | None = None,
    text_queue: torch.Tensor | None = None,
    *,
    temperature: torch.Tensor | float = 0.07,
    alpha: float = 0.4,
    image_tokens: torch.Tensor | None = None,
    text_tokens: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """TCL's contrastive loss (ITA): the mean of CMA (i2t, t2i), IMC (i2i, t2t) and, when tokens are
    given, LMI (image and text local) — 6 terms, or 4 without tokens.

    Args:
        image, text: ``[N, d]`` online global features (gradient flows).
        image_ema, text_ema: ``[N, d]`` momentum features (detached here; image from the augmented view).
        image_queue, text_queue: ``[K, d]`` queued momentum features (unit rows, used as given,
            detached); None or K = 0 is an empty queue.
        temperature: τ (a tensor for the learnable one; it gets no gradient through the targets).
        alpha: momentum-distillation weight α ∈ [0, 1] (ALBEF / TCL: 0.4 after a first-epoch ramp).
        image_tokens: ``[N, L_i, d]`` image local tokens (pooled momentum patch features).
        text_tokens: ``[N, L_t, d]`` text local tokens (momentum, CLS excluded); text_mask ``[N, L_t]``
            (bool or 0/1, 1 = real token; every row needs one).
        normalize: L2-normalise the four global feature sets (queues and tokens are used as given).
    """
    kw = {"temperature": temperature, "alpha": alpha, "normalize": normalize}
    tokens = {"image_tokens": image_tokens, "text_tokens": text_tokens, "text_mask": text_mask}
    terms = tcl_terms(image, text, image_ema, text_ema, image_queue, text_queue, **kw, **tokens)
    return torch.stack([t for t in terms if t is not None]).mean()


@LOSSES.register("tcl")
class TCLLoss(MultiLoss):
    """TCL's contrastive loss with its two queues held as buffers; reads ``image``, ``text``,
    ``image:ema``, ``text:ema`` and, with ``local=True``, the batch fields ``image_tokens``,
    ``text_tokens`` (and optional ``text_mask``).

    Args:
        dim: embedding dimension d (queues are ``[queue_size, dim]``; TCL: 256).
        queue_size: K (TCL: 65536).
        init_temperature: τ init (0.07); learnable unless ``learnable=False``; clamped to
            ``[min_temperature, max_temperature]`` = [0.001, 0.5] after each optimizer step.
        alpha: distillation weight (0.4), ramped linearly from 0 over ``alpha_warmup_steps`` training
            steps (ALBEF ramps over the first epoch: pass that epoch's step count; default 0 = no ramp).
        local: include the two LMI terms (the spec's total /6); False: CMA + IMC only (/4).
        seed, random_init: start with K random unit rows counted as filled (ALBEF / TCL) from this
            seed; ``random_init=False`` starts empty.

    In training mode each call enqueues the normalised momentum features *after* computing the loss
    and advances ``step``; eval mode leaves the state untouched. Gather ``image:ema`` / ``text:ema``
    across devices before calling it when training data-parallel (TCL enqueues the gathered features).
    """

    inputs = ("image", "text", "image:ema", "text:ema")

    def __init__(
        self,
        dim: int,
        queue_size: int = 65536,
        init_temperature: float = 0.07,
        learnable: bool = True,
        min_temperature: float = 0.001,
        max_temperature: float = 0.5,
        alpha: float = 0.4,
        alpha_warmup_steps: int = 0,
        local: bool = True,
        seed: int = 0,
        random_init: bool = True,
    ) -> None:
        super().__init__()
        for name, val, low in (
            ("dim", dim, 1),
            ("queue_size", queue_size, 1),
            ("alpha_warmup_steps", alpha_warmup_steps, 0),
        ):
            if int(val) != val or val < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {val}")
        if not 0 < min_temperature <= init_temperature <= max_temperature:
            raise ConfigError("need 0 < min_temperature <= init_temperature <= max_temperature")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature = nn.Parameter(torch.tensor(float(init_temperature)), requires_grad=learnable)
        self.min_temperature, self.max_temperature = min_temperature, max_temperature
        self.alpha, self.alpha_warmup_steps, self.local = alpha, alpha_warmup_steps, local
        self.accepts = frozenset({"image_tokens", "text_tokens", "text_mask"} if local else ())  # type: ignore[misc]
        g = torch.Generator().manual_seed(seed)
        for name in ("image_queue", "text_queue"):
            q = (
                F.normalize(torch.randn(queue_size, dim, generator=g), dim=1)
                if random_init
                else torch.zeros(queue_size, dim)
            )
            self.register_buffer(name, q)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.tensor(queue_size if random_init else 0, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._last: TCLTerms | None = None

    def current_alpha(self) -> float:
        if self.alpha_warmup_steps == 0:
            return self.alpha
        return self.alpha * min(1.0, int(self.step) / self.alpha_warmup_steps)

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        image, text, image_m, text_m = self.select(emb)
        if self.local and (aux.get("image_tokens") is None or aux.get("text_tokens") is None):
            raise InputError("TCLLoss(local=True) needs the batch fields image_tokens and text_tokens")
        check_embeddings("image", image)
        if image.shape[1] != self.image_queue.shape[1]:
            raise InputError(
                f"embedding dimension {image.shape[1]} does not match the queues' "
                f"dim={self.image_queue.shape[1]}"
            )
        k = int(self.filled)  # copies: the enqueue below writes the buffers in place
        queues = (self.image_queue[:k].clone(), self.text_queue[:k].clone())
        tokens = {name: aux.get(name) for name in ("image_tokens", "text_tokens", "text_mask")}
        terms = tcl_terms(
            image,
            text,
            image_m,
            text_m,
            *queues,
            temperature=self.temperature,
            alpha=self.current_alpha(),
            **tokens,
        )
        self._last = TCLTerms(*(None if t is None else t.detach() for t in terms))
        loss = torch.stack([t for t in terms if t is not None]).mean()
        if self.training:
            self._enqueue(image_m, text_m)
            self.step += 1
        return loss

    @torch.no_grad()
    def _enqueue(self, image_m: torch.Tensor, text_m: torch.Tensor) -> None:
        size = self.image_queue.shape[0]
        ptr = int(self.ptr)
        b = min(image_m.shape[0], size)
        idx = (ptr + torch.arange(b, device=self.image_queue.device)) % size
        for queue, feats in ((self.image_queue, image_m), (self.text_queue, text_m)):
            queue[idx] = F.normalize(as_float(feats.detach()), dim=1).to(queue.dtype)[-b:]
        self.ptr.fill_((ptr + b) % size)
        self.filled.fill_(min(int(self.filled) + b, size))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.temperature.clamp_(self.min_temperature, self.max_temperature)

    def log_values(self) -> dict[str, float]:
        out = {"temperature": float(self.temperature.detach()), "tcl_alpha": self.current_alpha()}
        out["queue_filled"] = float(self.filled)
        if self._last is not None:
            out.update({f"tcl_{k}": float(v) for k, v in self._last._asdict().items() if v is not None})
        return out
