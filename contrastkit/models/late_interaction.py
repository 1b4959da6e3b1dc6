"""Token-set towers for late interaction (ColBERT / CLaMR, M-MAXSIM): many vectors per example.

Papers: Khattab & Zaharia 2020, "ColBERT"; CLaMR (seed 56: multimodal late interaction, every
modality's tokens in one bag per document).

A token-set tower returns ``[B, T, C]`` instead of one pooled ``[B, C]``: the DualEncoder's
``linear`` projection (no bias) then maps every token to ``embed_dim`` (ColBERT's ``hidden → dim``
linear), and the losses and evaluation L2-normalise every token. The mask travels inside the
tensor: **padding rows are exactly zero** (a bias-free projection and the normalisation keep them
zero; ``projection: mlp`` has biases and is refused for these towers), and
:func:`contrastkit.losses.maxsim.token_set` reads it back as ``(tokens, mask)``; :meth:`tokens`
returns both explicitly.

* ``timm_tokens`` — a timm image tower whose unpooled feature map (a CNN's cells, a ViT's patch
  tokens) is the token set: ``H'·W'`` tokens per image, no padding. On 32-pixel Shapes a ResNet
  needs ``kwargs: {output_stride: 8}`` for a 4×4 grid (16 tokens; stride 32 leaves one cell).
  A cell whose features are all exactly zero (possible after a ReLU) reads as padding: it has
  cosine 0 with everything, so scores only change in the ``zero_vector`` mode.
* ``hf_text_tokens`` — the small BERT of ``hf_text`` (word tokenizer trained on the captions),
  every non-pad position ([CLS], words, [SEP]) a token; pads are zero rows.

Scoring: ``MaxSim(text, image) = Σ_{text tokens} max_{image tokens} cos`` (texts are the queries),
:mod:`contrastkit.losses.late_interaction` (loss ``maxsim``) and
:mod:`contrastkit.evaluation.late_interaction` (retrieval, zero-shot by prompt-score averaging).
"""

from __future__ import annotations

from typing import Literal

import torch

from contrastkit.core.errors import InputError
from contrastkit.core.registry import Fraction, PositiveInt
from contrastkit.models.towers import (
    TOWERS,
    ImageTower,
    TextTower,
    Tower,
    TowerContext,
    hf_text_tower,
    timm_tower,
)

__all__ = ["TokenImageTower", "TokenTextTower", "is_token_tower"]


def is_token_tower(tower: object) -> bool:
    """Whether ``tower`` returns token sets ``[B, T, C]`` (padding rows zero) from ``forward``."""
    return bool(getattr(tower, "token_set", False))


class TokenImageTower(Tower):
    """An :class:`ImageTower`'s unpooled token grid, flattened: ``[B, H'·W', C]`` (no padding)."""

    token_set = True

    def __init__(self, image: ImageTower) -> None:
        super().__init__()
        self.image = image
        self.output_dim = image.output_dim

    def tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, T, C], mask [B, T])``; every cell is a real token."""
        grid = self.image.patch_tokens(images)
        tokens = grid.flatten(1, 2)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images)[0]


class TokenTextTower(TextTower):
    """A :class:`TextTower`'s last hidden states, one token per non-pad position; pads are zero rows."""

    token_set = True

    def tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, L, C], mask [B, L])``, mask = not padding; masked rows are zero."""
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise InputError(
                f"text input must be LongTensor [B, L] of token ids, got {ids.dtype} {tuple(ids.shape)}"
            )
        if ids.shape[0] == 0:
            raise InputError("empty text batch")
        mask = ids != self.pad_id
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return hidden * mask[..., None].to(hidden.dtype), mask

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(ids)[0]


@TOWERS.register("timm_tokens")
def timm_tokens_tower(
    arch: str = "resnet18",
    kwargs: dict | None = None,
    context: TowerContext | None = None,
) -> TokenImageTower:
    """A randomly initialised timm image tower returning its feature-map cells (or ViT patch
    tokens) as a token set ``[B, H'·W', C]``; ``kwargs`` as for ``timm`` (a ResNet on 32-pixel
    Shapes: ``output_stride: 8`` for 16 tokens)."""
    return TokenImageTower(timm_tower(arch=arch, kwargs=kwargs, context=context))


@TOWERS.register("hf_text_tokens")
def hf_text_tokens_tower(
    hidden_size: PositiveInt = 128,
    layers: PositiveInt = 2,
    heads: PositiveInt = 2,
    intermediate_size: PositiveInt = 256,
    max_length: PositiveInt = 32,
    vocab_size: PositiveInt = 1000,
    dropout: Fraction = 0.0,
    context: TowerContext | None = None,
) -> TokenTextTower:
    """The small BERT of ``hf_text`` returning every non-pad token's hidden state as a token set
    ``[B, L, hidden_size]`` (pads are zero rows); tokenizer trained on the captions as ``hf_text``."""
    base = hf_text_tower(
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        intermediate_size=intermediate_size,
        max_length=max_length,
        vocab_size=vocab_size,
        dropout=dropout,
        pooling="cls",
        context=context,
    )
    pooling: Literal["cls", "mean"] = "cls"  # unused: a token tower does not pool
    return TokenTextTower(base.encoder, base.tokenizer, base.max_length, pooling)
