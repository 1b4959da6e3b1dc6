"""L-COCA — contrastive + captioning (CoCa), and captioning only (OpenVision 2).

Spec id: L-COCA (docs/losses.md) [VERIFIED loss + weights; PARTIAL architecture].
Paper: Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models";
captioning only: "OpenVision 2: A Family of Generative Pretrained Visual Encoders for Multimodal
Learning" (no spec entry: the text encoder and the contrastive term are removed).

Formula, with token ids ``t [N, L]`` (right-padded with ``pad_id``) and a causal decoder ``D``::

    L_cap = mean over (i, k) with t[i, k+1] ≠ pad of −log softmax(D(x_i, t[i, :L−1])[k])[t[i, k+1]]
    coca = λ_con · L-CLIP(x, y; s) + λ_cap · L_cap,   λ_con = 1, λ_cap = 2
    captioning = L_cap

The decoder lives in the loss module (the trainer optimises it with the loss's parameters): token
embedding + learned positions → ``layers`` pre-norm ``nn.TransformerDecoderLayer`` blocks (causal
self-attention, cross-attention) → LayerNorm → Linear to the vocabulary. Simplification of CoCa: the
decoder cross-attends to the image *embedding* ``x`` projected to one memory token
(``Linear(d, width)``), not to the image tokens through CoCa's attentional pooler (256 queries), so it
works from the model's ``[N, d]`` output alone. The raw (un-normalised) x feeds the decoder; the
contrastive term normalises as L-CLIP does. Pad positions are not masked as keys: with right padding
and the causal mask no real token ever attends to a later pad, and pad targets are ignored.

Shapes: ``x, y: [N, d]``, ``text_ids: [N, L]`` LongTensor (batch field, L ≥ 2, L − 1 ≤ max_len) →
scalar. Defaults: vocab 1000 and pad id 0 (contrastkit's word tokenizer), width 256, 2 layers, 4
heads, dropout 0 (a deterministic loss), CLIP's logit scale (init 1/0.07, clamp 100). N = 1: the
contrastive term is an error unless ``allow_single=True``; captioning works. A batch whose targets
are all pad is an error (the mean would be 0/0).

Tiled / distributed: dense only (the module holds a decoder, so there is no ``pure()`` form for
``TiledLoss`` / ``GatherLoss``); for several devices gather embeddings and ids first. The caption
CE is per-token and needs no other sample, so devices may compute it locally; averaging the local
values equals the global per-token mean only when every device has the same number of non-pad
targets (weight each by its count otherwise). The contrastive term needs the gathered batch.
Related: L-CLIP, L-SIGLIP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_embeddings, check_finite, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Fraction, NonNegative, NonNegInt, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, MaxScale, PairLoss, as_float, learnable_log_scale
from contrastkit.losses.clip import clip_loss

__all__ = ["CaptionDecoder", "CaptioningLoss", "CoCaLoss", "caption_loss", "clip_plus_caption", "coca_loss"]


def _check_ids(text_ids: Any, n: int | None, vocab_size: int | None = None) -> torch.Tensor:
    if not isinstance(text_ids, torch.Tensor) or text_ids.ndim != 2 or text_ids.dtype != torch.long:
        raise InputError("text_ids must be a LongTensor of shape [N, L]")
    if n is not None and text_ids.shape[0] != n:
        raise InputError(f"text_ids must have N={n} rows, got {text_ids.shape[0]}")
    if text_ids.shape[1] < 2:
        raise InputError(
            f"text_ids needs L >= 2 tokens (inputs t[:-1], targets t[1:]), got L={text_ids.shape[1]}"
        )
    if vocab_size is not None and ((text_ids < 0) | (text_ids >= vocab_size)).any():
        raise InputError(f"text_ids must lie in [0, vocab_size={vocab_size})")
    return text_ids


def caption_loss(token_logits: torch.Tensor, text_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Token cross-entropy of ``token_logits [N, L−1, V]`` (predictions for positions 1..L−1)
    against ``text_ids[:, 1:]``, averaged over the targets that are not ``pad_id``."""
    ids = _check_ids(text_ids, None)
    n, length = ids.shape
    if not isinstance(token_logits, torch.Tensor) or token_logits.shape[:2] != (n, length - 1):
        shape = tuple(token_logits.shape) if isinstance(token_logits, torch.Tensor) else None
        raise InputError(f"token_logits must have shape [N, L-1, V] = [{n}, {length - 1}, V], got {shape}")
    if not token_logits.is_floating_point():
        raise InputError(f"token_logits must be a floating tensor, got dtype {token_logits.dtype}")
    check_finite("token_logits", token_logits)
    targets = ids[:, 1:]
    if ((targets >= token_logits.shape[2]) | (targets < 0)).any():
        raise InputError(f"text_ids must lie in [0, V={token_logits.shape[2]})")
    if not (targets != pad_id).any():
        raise InputError("caption_loss: every target token is pad_id; there is nothing to predict")
    logits = as_float(token_logits)
    # ignore_index with "mean" reduction divides by the number of non-pad targets: the masked mean
    return F.cross_entropy(logits.reshape(-1, logits.shape[2]), targets.reshape(-1), ignore_index=pad_id)


def coca_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    token_logits: torch.Tensor,
    text_ids: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    pad_id: int = 0,
    lambda_con: float = 1.0,
    lambda_cap: float = 2.0,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """``λ_con · clip_loss(x, y, scale) + λ_cap · caption_loss(token_logits, text_ids, pad_id)``.
    A zero weight skips its term entirely (λ_cap = 0 is exactly :func:`clip_loss`)."""
    check_pair(x, y)
    if lambda_con < 0 or lambda_cap < 0 or lambda_con == lambda_cap == 0:
        raise ConfigError(f"coca: need lambdas >= 0, not both 0; got {lambda_con}, {lambda_cap}")
    _check_ids(text_ids, x.shape[0])
    terms = []
    if lambda_con:
        terms.append(lambda_con * clip_loss(x, y, scale, normalize=normalize, allow_single=allow_single))
    if lambda_cap:
        terms.append(lambda_cap * caption_loss(token_logits, text_ids, pad_id))
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def clip_plus_caption(
    loss: Any, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None, ids: torch.Tensor | None
) -> torch.Tensor:
    """``λ_con · clip_loss(x, y; e^θ) + λ_cap · caption_loss(logits, ids)`` for a module holding
    ``lambda_con``, ``lambda_cap``, ``log_scale``, ``pad_id``, ``normalize`` and ``allow_single``
    (CoCa here, COSMO's ``split_caption``); a zero weight skips its term. Sets ``loss._last`` to
    the unweighted terms for logging."""
    terms: dict[str, torch.Tensor] = {}
    if loss.lambda_con:
        s = loss.log_scale.exp()
        terms["contrastive"] = clip_loss(x, y, s, normalize=loss.normalize, allow_single=loss.allow_single)
    if loss.lambda_cap:
        terms["caption"] = caption_loss(logits, ids, loss.pad_id)
    loss._last = {f"loss/{k}": float(v.detach()) for k, v in terms.items()}
    weight = {"contrastive": loss.lambda_con, "caption": loss.lambda_cap}
    parts = [weight[k] * v for k, v in terms.items()]
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


class CaptionDecoder(nn.Module):
    """A small causal text decoder conditioned on one memory token made from the image embedding.

    ``forward(image [N, d], tokens [N, T]) -> logits [N, T, V]``; position k sees tokens ≤ k only.
    """

    def __init__(
        self,
        vocab_size: int,
        width: int = 256,
        layers: int = 2,
        heads: int = 4,
        max_len: int = 77,
        dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if min(vocab_size, width, layers, heads, max_len) < 1 or width % heads:
            raise ConfigError("decoder: vocab_size, width, layers, heads, max_len >= 1 and heads | width")
        self.vocab_size, self.max_len = int(vocab_size), int(max_len)
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.randn(max_len, width) * 0.01)
        self.memory = nn.LazyLinear(width) if dim is None else nn.Linear(dim, width)
        block = nn.TransformerDecoderLayer(
            width, heads, 4 * width, dropout=dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerDecoder(block, layers, norm=nn.LayerNorm(width))
        self.out = nn.Linear(width, vocab_size)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.max_len:
            raise InputError(f"the decoder reads at most max_len={self.max_len} tokens, got {t}")
        dtype = self.position.dtype
        h = self.token(tokens) + self.position[:t]
        memory = self.memory(as_float(image).to(dtype)).unsqueeze(1)  # [N, 1, width]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=h.device, dtype=dtype)
        return self.out(self.blocks(h, memory, tgt_mask=causal, tgt_is_causal=True))


@LOSSES.register("captioning")
class CaptioningLoss(PairLoss):
    """Captioning only (OpenVision 2): :func:`caption_loss` of the module's :class:`CaptionDecoder`.

    Args:
        vocab_size: of the tokenizer producing ``text_ids``.
        pad_id: of the tokenizer producing ``text_ids``.
        width: decoder width.
        layers: decoder layers.
        heads: decoder attention heads.
        max_len: longest decoded sequence (bounds L − 1).
        dropout: decoder dropout.
        dim: embedding width d (``None``: lazy; pass it for distributed training).
    ``forward(x, y=None, text_ids=...)``; y (a text embedding) is unused.
    """

    accepts = frozenset({"text_ids"})

    def __init__(
        self,
        vocab_size: PositiveInt = 1000,
        pad_id: NonNegInt = 0,
        width: PositiveInt = 256,
        layers: PositiveInt = 2,
        heads: PositiveInt = 4,
        max_len: PositiveInt = 77,
        dim: PositiveInt | None = None,
        dropout: Fraction = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= pad_id < vocab_size:
            raise ConfigError(f"pad_id must be in [0, vocab_size={vocab_size}), got {pad_id}")
        self.pad_id = int(pad_id)
        self.decoder = CaptionDecoder(vocab_size, width, layers, heads, max_len, dim, dropout)
        self._last: dict[str, float] = {}

    def token_logits(self, x: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """Decoder logits ``[N, L−1, V]`` predicting ``text_ids[:, 1:]`` from ``text_ids[:, :-1]``."""
        return self.decoder(x, text_ids[:, :-1])

    def _inputs(self, x: torch.Tensor, aux: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_aux(aux)
        if aux.get("text_ids") is None:
            raise InputError(f"{type(self).__name__} needs the batch field text_ids [N, L] (token ids)")
        check_embeddings("x", x)
        ids = _check_ids(aux["text_ids"], x.shape[0], self.decoder.vocab_size)
        return ids, self.token_logits(x, ids)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, **aux: Any) -> torch.Tensor:
        ids, logits = self._inputs(x, aux)
        if y is not None:
            check_pair(x, y)
        out = caption_loss(logits, ids, self.pad_id)
        self._last = {"loss/caption": float(out.detach())}
        return out

    def log_values(self) -> dict[str, float]:
        return dict(self._last)


@LOSSES.register("coca")
class CoCaLoss(CaptioningLoss):
    """CoCa: :func:`coca_loss` with the decoder and CLIP's learnable ``θ_s = log s`` held here.

    Args (besides :class:`CaptioningLoss`'s): lambda_con (1), lambda_cap (2), init_temperature
    (0.07), learnable, max_scale (100: clamp after each optimizer step), allow_single, normalize
    (of the contrastive term).
    Logs ``loss/contrastive``, ``loss/caption`` (unweighted) and ``logit_scale``.
    """

    def __init__(
        self,
        vocab_size: PositiveInt = 1000,
        pad_id: NonNegInt = 0,
        width: PositiveInt = 256,
        layers: PositiveInt = 2,
        heads: PositiveInt = 4,
        max_len: PositiveInt = 77,
        dim: PositiveInt | None = None,
        dropout: Fraction = 0.0,
        lambda_con: NonNegative = 1.0,
        lambda_cap: NonNegative = 2.0,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        allow_single: bool = False,
        normalize: bool = True,
    ) -> None:
        super().__init__(vocab_size, pad_id, width, layers, heads, max_len, dim, dropout)
        if lambda_con < 0 or lambda_cap < 0 or lambda_con == lambda_cap == 0:
            raise ConfigError(f"coca: need lambdas >= 0, not both 0; got {lambda_con}, {lambda_cap}")
        self.lambda_con, self.lambda_cap = float(lambda_con), float(lambda_cap)
        self.log_scale, self.max_log_scale = learnable_log_scale(init_temperature, max_scale, learnable)
        self.allow_single, self.normalize = allow_single, normalize

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, **aux: Any) -> torch.Tensor:
        if y is None:
            raise InputError("coca needs the text embeddings y for its contrastive term")
        check_pair(x, y)
        ids = logits = None
        if self.lambda_cap:
            ids, logits = self._inputs(x, aux)
        else:  # λ_cap = 0: exactly CLIP, the decoder is not run and text_ids may be absent
            self.check_aux(aux)
        return clip_plus_caption(self, x, y, logits, ids)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.log_scale.detach().exp()), **self._last}
