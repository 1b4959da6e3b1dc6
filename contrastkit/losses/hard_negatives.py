"""Hard-negative and re-weighting losses: LLaVE, HN-NCE (DiHT), HCL, an explicit hard-negative
loss (Wang & Liu) and CLIP-IN.

Spec ids: L-LLAVE, L-HNNCE, L-HCL (docs/losses.md). ``hard_negative_penalty`` and
``clip_in`` have no spec entry: they are written from the paper abstracts and the standard form of
the method (spec form, not checked against the original; choices are stated on each function).

All take paired batches ``x, y: [N, d]`` (``y[i]`` is the positive of ``x[i]``), L2-normalise by
default, and compute logits and log-sum-exps in float32 (float64 kept). Weights, top-k selections
and debiasing all need a row's complete negative set, so these losses are **dense only** — except
``hn_nce`` with ``detach_weights=False`` and ``llave``, whose tiled forms (``scale.tile_size``,
:mod:`contrastkit.scale.tiled_zoo`, :mod:`contrastkit.scale.tiled_more`) are exact; for
multi-device training gather the embeddings
first and call the function on the global batch. N = 1 has no in-batch negatives and raises
InputError (``clip_in`` accepts it when extra negatives are given).

Related: L-CLIP (every cross-modal loss here reduces to it in a limit), L-NTXENT (``hcl`` and
``hard_negative_penalty`` reduce to it), L-MOCHI (synthetic hard negatives, ``mochi.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from annotated_types import Gt, Le

from contrastkit.core.checks import check_finite, check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Fraction, NonNegative, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, LearnableScaleLoss, MaxScale, PairLoss, maybe_normalize

__all__ = [
    "CLIPINLoss",
    "HCLLoss",
    "HNNCELoss",
    "HardNegativePenaltyLoss",
    "LLaVELoss",
    "clip_in_loss",
    "hard_negative_penalty_loss",
    "hcl_loss",
    "hn_nce_loss",
    "llave_loss",
]

_NEG_INF = float("-inf")


def _prepare(
    name: str, x: torch.Tensor, y: torch.Tensor, normalize: bool, min_n: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    check_pair(x, y)
    if x.shape[0] < min_n:
        raise InputError(f"{name} needs a batch of N >= 2 pairs (in-batch negatives), got N={x.shape[0]}")
    x = maybe_normalize(x, normalize)
    return x, maybe_normalize(y, normalize).to(x.dtype)


def _two_view_logits(x: torch.Tensor, y: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
    """SimCLR layout: z = [x; y] (2N rows); anchor a's positive is a ± N. Returns the 2N×2N logits,
    the positive logit of every anchor and the mask of non-negatives (self and positive)."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    n = x.shape[0]
    z = torch.cat([x, y])
    q = (z @ z.T) / temperature
    idx = torch.arange(2 * n, device=z.device)
    partner = (idx + n) % (2 * n)
    mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    mask[idx, partner] = True
    return q, q[idx, partner], mask


def llave_loss(
    x: torch.Tensor, y: torch.Tensor, scale: float = 50.0, alpha: float = 0.5, *, normalize: bool = True
) -> torch.Tensor:
    """L-LLAVE: hardness-weighted symmetric contrastive loss (Lan et al. 2025, LLaVE).

    ``L′_ij = s·c_ij + α·sg(c_ij)·[i≠j]`` with ``c = x yᵀ``, i.e. negative j's denominator term is
    weighted by ``exp(α·sg(c_ij))`` (positive weight 1); ``loss = ½[CE(L′, i) + CE(L′ᵀ, i)]`` (the
    target→query direction applies the same rule to the transpose). Defaults from the LLaVE code:
    fixed ``s = 50`` (τ = 0.02, not learned), ``α = 0.5``. α = 0 gives L-CLIP at s = 50.
    Shapes ``x, y: [N, d]`` → scalar; N = 1 raises InputError.
    """
    x, y = _prepare("llave_loss", x, y, normalize)
    c = x @ y.T
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    # the weight is a constant (stop-gradient): gradients are those of a weighted softmax
    logits = scale * c + (alpha * c.detach()).masked_fill(eye, 0.0)
    target = torch.arange(x.shape[0], device=x.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _hn_nce_direction(logits: torch.Tensor, alpha: float, beta: float, detach: bool) -> torch.Tensor:
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    # β·L masked *after* the product: β = 0 would turn a −inf into NaN
    w = (beta * logits).masked_fill(eye, _NEG_INF)
    if detach:
        w = w.detach()
    # log Σ_{j≠i} w_ij e^{L_ij} with w_ij = (N−1) e^{βL_ij} / Σ_{k≠i} e^{βL_ik}
    lse_neg = torch.logsumexp(w + logits, dim=1) + math.log(n - 1) - torch.logsumexp(w, dim=1)
    pos = logits.diagonal()
    log_den = lse_neg if alpha == 0 else torch.logaddexp(math.log(alpha) + pos, lse_neg)
    return (log_den - pos).mean()


def hn_nce_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    alpha: float = 1.0,
    beta: float = 0.5,
    beta_t2i: float | None = None,
    detach_weights: bool = False,
    normalize: bool = True,
) -> torch.Tensor:
    """L-HNNCE: DiHT hard-negative NCE (Radenovic et al. 2023), importance-weighted negatives.

    Image→text row i: ``ℓ_i = −log[e^{s·c_ii} / (α e^{s·c_ii} + Σ_{j≠i} w_ij e^{s·c_ij})]`` with
    ``w_ij = (N−1) e^{β s c_ij} / Σ_{k≠i} e^{β s c_ik}`` (weights average to 1 over j≠i);
    text→image the same on the transpose with ``β₂ = beta_t2i`` (default β). Loss = ½(mean i→t +
    mean t→i). ``scale`` is ``s = 1/τ`` (learnable in :class:`HNNCELoss`). Defaults: α = 1,
    β = 0.5 (spec example; the paper's default is unverified), weights not detached (HCL lineage).
    α = 1, β = 0 is L-CLIP; α = 0 is the decoupled variant. N = 1 raises InputError.
    """
    x, y = _prepare("hn_nce_loss", x, y, normalize)
    if not alpha >= 0:
        raise ConfigError(f"alpha must be >= 0, got {alpha}")
    if isinstance(scale, torch.Tensor):
        check_scalar_param("scale", scale)
    logits = scale * (x @ y.T)
    b2 = beta if beta_t2i is None else beta_t2i
    return 0.5 * (
        _hn_nce_direction(logits, alpha, beta, detach_weights)
        + _hn_nce_direction(logits.T, alpha, b2, detach_weights)
    )


def hcl_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    beta: float = 1.0,
    *,
    detach_weights: bool = False,
    normalize: bool = True,
) -> torch.Tensor:
    """L-HCL: debiased (Chuang 2020) / hard-negative (Robinson 2021) contrastive loss.

    SimCLR layout, 2N anchors, M = 2N−2 negatives each, ``q = z·z/τ``: ``pos = e^{q⁺}``,
    ``R = Σ_k e^{βq_k} e^{q_k} / mean_k e^{βq_k}``, ``Ng = max((R − τ⁺·M·pos)/(1−τ⁺), M e^{−1/τ})``,
    ``ℓ = −log(pos/(pos+Ng))``, mean over 2N anchors — all in log space. Defaults (reference code):
    τ = 0.5, τ⁺ = 0.1, β = 1; β = 0 is Chuang's debiased loss, τ⁺ = β = 0 is L-NTXENT; the
    importance weights carry gradient unless ``detach_weights``. N = 1 raises InputError.
    """
    x, y = _prepare("hcl_loss", x, y, normalize)
    if not 0 <= tau_plus < 1:
        raise ConfigError(f"tau_plus must be in [0, 1), got {tau_plus}")
    q, pos, mask = _two_view_logits(x, y, temperature)
    m = q.shape[0] - 2
    w = (beta * q).masked_fill(mask, _NEG_INF)
    if detach_weights:
        w = w.detach()
    log_r = torch.logsumexp(w + q.masked_fill(mask, _NEG_INF), dim=1) - torch.logsumexp(w, dim=1)
    log_r = log_r + math.log(m)
    if tau_plus > 0:
        # log(R − c) = log R + log(1 − c/R) with c = τ⁺·M·pos; −inf when c ≥ R (then the clamp rules)
        d = math.log(tau_plus * m) + pos - log_r
        ok = d < 0
        d_safe = torch.where(ok, d, torch.full_like(d, -1.0))  # keeps the unused branch finite
        log_ng = torch.where(ok, log_r + torch.log1p(-torch.exp(d_safe)), _NEG_INF) - math.log1p(-tau_plus)
    else:
        log_ng = log_r
    log_ng = torch.clamp(log_ng, min=math.log(m) - 1.0 / temperature)
    return F.softplus(log_ng - pos).mean()


def hard_negative_penalty_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 0.5,
    *,
    top_k: int | None = None,
    hard_fraction: float = 0.25,
    normalize: bool = True,
) -> torch.Tensor:
    """Explicit hard-negative contrastive loss (Wang & Liu 2021, "Understanding the Behaviour of
    Contrastive Loss"). No spec entry: spec form, not checked against the original.

    The paper shows InfoNCE is hardness-aware (τ sets the penalty on hard negatives) and proposes
    sampling hard negatives explicitly. Implemented form (SimCLR layout, 2N anchors): keep only the
    k most similar negatives of each anchor in the denominator,
    ``ℓ_a = −q_{a,a⁺} + LSE(q_{a,a⁺}, top-k_{b∉{a,a⁺}} q_{a,b})``, ``q = z·z/τ``, mean over 2N.
    ``k = top_k`` if given, else ``⌈hard_fraction·M⌉`` (M = 2N−2), clamped to [1, M]; k = M is
    L-NTXENT. Chosen defaults (not from the paper): τ = 0.5, hard_fraction = 0.25. Gradient flows
    through the selected logits only (selection is piecewise constant). N = 1 raises InputError.
    """
    x, y = _prepare("hard_negative_penalty_loss", x, y, normalize)
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if not 0 < hard_fraction <= 1:
        raise ConfigError(f"hard_fraction must be in (0, 1], got {hard_fraction}")
    q, pos, mask = _two_view_logits(x, y, temperature)
    m = q.shape[0] - 2
    k = min(m, top_k if top_k is not None else max(1, math.ceil(hard_fraction * m)))
    hard = q.masked_fill(mask, _NEG_INF).topk(k, dim=1).values
    return F.softplus(torch.logsumexp(hard, dim=1) - pos).mean()


def clip_in_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    negatives: torch.Tensor | None = None,
    normalize: bool = True,
    neg_scope: str = "batch",
) -> torch.Tensor:
    """CLIP-IN / HQ-CLIP hard-negative-caption contrastive loss (Wang et al. 2025, "CLIP-IN"; Wei et
    al. 2025, "HQ-CLIP"; the NegCLIP-style form, not checked against the originals, which publish
    no training code).

    ``negatives: [N, K, d]`` holds K hard-negative caption embeddings per image (e.g. its caption
    with two attributes swapped, or the caption of its instruction-edited counterpart). Image→text
    row i: CE over the N in-batch texts plus the negative captions in scope,
    ``ℓ_i = LSE(s·x_i·y_·, s·x_i·n_{j,k}) − s·x_i·y_i`` with ``j`` over the whole batch
    (``neg_scope="batch"``, the default: every negative caption is a candidate for every image, an
    N × N(1+K) logit matrix) or ``j = i`` only (``"own"``); text→image: CLIP's column CE over the N
    images (a negative caption has no paired image, so it only enters the image→text side). The
    symmetric hard-negative part of CLIP-IN comes from putting the edited pairs (I′, T′) in the
    batch as ordinary rows: then T′ is a hard negative of I and I′ one of T in the
    in-batch terms. Loss = ½(mean i→t + mean t→i); K = 0 or ``negatives=None`` is L-CLIP.
    N = 1 is accepted when K ≥ 1 (the text→image term is then 0), else InputError.
    """
    check_pair(x, y)
    n, d = x.shape
    k = 0
    if negatives is not None:
        if negatives.ndim != 3 or negatives.shape[0] != n or negatives.shape[2] != d:
            raise InputError(
                f"negatives must have shape [N, K, d] = [{n}, K, {d}], got {tuple(negatives.shape)}"
            )
        if not negatives.is_floating_point():
            raise InputError(f"negatives must be a floating tensor, got dtype {negatives.dtype}")
        check_finite("negatives", negatives)
        k = negatives.shape[1]
    if neg_scope not in ("batch", "own"):
        raise ConfigError(f"neg_scope must be 'batch' or 'own', got {neg_scope!r}")
    if n == 1 and k == 0:
        raise InputError("clip_in_loss needs N >= 2 pairs or K >= 1 extra negatives per image, got N=1, K=0")
    if isinstance(scale, torch.Tensor):
        check_scalar_param("scale", scale)
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    logits = scale * (x @ y.T)
    pos = logits.diagonal()
    lse_rows = torch.logsumexp(logits, dim=1)
    if k > 0:
        negs = maybe_normalize(negatives, normalize).to(x.dtype)
        if neg_scope == "own":
            extra = scale * torch.einsum("nd,nkd->nk", x, negs)
        else:  # "batch": every image against all N·K negative captions
            extra = scale * (x @ negs.reshape(n * k, d).T)
        lse_rows = torch.logaddexp(lse_rows, torch.logsumexp(extra, dim=1))
    i2t = (lse_rows - pos).mean()
    t2i = (torch.logsumexp(logits, dim=0) - pos).mean()
    return 0.5 * (i2t + t2i)


# --------------------------------------------------------------------------------------------
# modules


@LOSSES.register("llave")
class LLaVELoss(PairLoss):
    """Module form of :func:`llave_loss` (no learnable parameters: s = 50, α = 0.5)."""

    def __init__(self, scale: Positive = 50.0, alpha: float = 0.5) -> None:
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"scale must be > 0, got {scale}")
        self.scale, self.alpha = float(scale), float(alpha)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return llave_loss, {"scale": self.scale, "alpha": self.alpha}


@LOSSES.register("hn_nce")
class HNNCELoss(LearnableScaleLoss):
    """Module form of :func:`hn_nce_loss`: learnable τ as in L-CLIP (init 0.07, s ≤ 100)."""

    def __init__(
        self,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        alpha: NonNegative = 1.0,
        beta: float = 0.5,
        beta_t2i: float | None = None,
        detach_weights: bool = False,
    ) -> None:
        super().__init__(init_temperature, learnable, max_scale)
        if not alpha >= 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        self.alpha, self.beta, self.beta_t2i, self.detach_weights = alpha, beta, beta_t2i, detach_weights

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return hn_nce_loss, {
            "scale": self.log_scale.exp(),
            "alpha": self.alpha,
            "beta": self.beta,
            "beta_t2i": self.beta_t2i,
            "detach_weights": self.detach_weights,
        }


@LOSSES.register("hcl")
class HCLLoss(PairLoss):
    """Module form of :func:`hcl_loss` (fixed τ = 0.5, τ⁺ = 0.1, β = 1)."""

    def __init__(
        self,
        temperature: Positive = 0.5,
        tau_plus: Fraction = 0.1,
        beta: float = 1.0,
        detach_weights: bool = False,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if not 0 <= tau_plus < 1:
            raise ConfigError(f"tau_plus must be in [0, 1), got {tau_plus}")
        self.temperature, self.tau_plus, self.beta = temperature, tau_plus, beta
        self.detach_weights = detach_weights

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return hcl_loss, {
            "temperature": self.temperature,
            "tau_plus": self.tau_plus,
            "beta": self.beta,
            "detach_weights": self.detach_weights,
        }


@LOSSES.register("hard_negative_penalty")
class HardNegativePenaltyLoss(PairLoss):
    """Module form of :func:`hard_negative_penalty_loss` (fixed τ; top-k or fraction of negatives)."""

    def __init__(
        self,
        temperature: Positive = 0.5,
        top_k: PositiveInt | None = None,
        hard_fraction: Annotated[float, Gt(0), Le(1)] = 0.25,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        if not 0 < hard_fraction <= 1:
            raise ConfigError(f"hard_fraction must be in (0, 1], got {hard_fraction}")
        self.temperature, self.top_k, self.hard_fraction = temperature, top_k, hard_fraction

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return hard_negative_penalty_loss, {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "hard_fraction": self.hard_fraction,
        }


@LOSSES.register("clip_in")
class CLIPINLoss(LearnableScaleLoss):
    """Module form of :func:`clip_in_loss`: learnable τ as in L-CLIP (init 0.07, s ≤ 100); the
    batch field ``negatives [N, K, d]`` is optional. In training, ``data.text_negatives`` makes the
    trainer encode each sample's negative caption (batch key ``text_neg``) and pass it here."""

    accepts = frozenset({"negatives"})

    def __init__(
        self,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        neg_scope: Literal["batch", "own"] = "batch",
    ) -> None:
        super().__init__(init_temperature, learnable, max_scale)
        self.neg_scope = neg_scope

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return clip_in_loss, {"scale": self.log_scale.exp(), "neg_scope": self.neg_scope}
