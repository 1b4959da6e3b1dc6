"""Triple Contrastive Learning (TCL): cross-modal alignment, intra-modal contrast and local
mutual information, with momentum features and queues.

:func:`tcl_loss` (registry ``tcl``), spec id L-TCL [VERIFIED]. Paper: Yang et al. 2022 (CVPR),
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

Shapes: ``[N, d]`` features, ``[K, d]`` queues and ``[N, L, d]`` tokens → 0-d tensor. Tiled /
distributed: dense only; gather the momentum features of all ranks before enqueueing. Related:
L-MOCO2 (queues), L-CLIP, L-MVINFONCE (:mod:`contrastkit.losses.multiview`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_embeddings, check_finite, check_pair, check_queue
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegInt, Positive, PositiveInt, Probability
from contrastkit.losses.base import LOSSES, MultiLoss, as_float, maybe_normalize
from contrastkit.losses.multiview import _check_temperature

_NEG_INF = float("-inf")

__all__ = [
    "TCLLoss",
    "TCLTerms",
    "tcl_local_loss",
    "tcl_loss",
    "tcl_pool_patches",
    "tcl_terms",
]

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


def _queue_or_empty(name: str, queue: torch.Tensor | None, d: int, like: torch.Tensor) -> torch.Tensor:
    if queue is None:
        return like.new_zeros((0, d))
    check_queue(queue, d, name)
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
    bank_i = torch.cat([v_m, _queue_or_empty("image_queue", image_queue, d, v)])
    bank_t = torch.cat([w_m, _queue_or_empty("text_queue", text_queue, d, v)])
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
        image: ``[N, d]`` online global image features (gradient flows).
        text: ``[N, d]`` online global text features (gradient flows).
        image_ema: ``[N, d]`` momentum image features (detached here; from the augmented view).
        text_ema: ``[N, d]`` momentum text features (detached here).
        image_queue: ``[K, d]`` queued momentum image features (unit rows, used as given,
            detached); None or K = 0 is an empty queue.
        text_queue: the same for texts.
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
        seed: seeds the random initial queue rows.
        random_init: start with K random unit rows counted as filled (ALBEF / TCL) from ``seed``;
            ``random_init=False`` starts empty.

    In training mode each call enqueues the normalised momentum features *after* computing the loss
    and advances ``step``; eval mode leaves the state untouched. Gather ``image:ema`` / ``text:ema``
    across devices before calling it when training data-parallel (TCL enqueues the gathered features).
    """

    inputs = ("image", "text", "image:ema", "text:ema")

    def __init__(
        self,
        dim: PositiveInt,
        queue_size: PositiveInt = 65536,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        min_temperature: Positive = 0.001,
        max_temperature: Positive = 0.5,
        alpha: Probability = 0.4,
        alpha_warmup_steps: NonNegInt = 0,
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
