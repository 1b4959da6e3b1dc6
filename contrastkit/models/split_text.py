"""Split text tower (COSMO): lower text layers give the contrastive embedding, upper layers
cross-attend to the image tokens and caption it — one model, two losses.

Paper: Wang et al. 2024, "COSMO: COntrastive Streamlined MultimOdal Model with Interleaved
Pre-Training" (the language model is partitioned into unimodal text layers, which give the
contrastive text feature, and multimodal layers that attend to the visual tokens and generate
text). The paper's code was not read: the layer split, pooling, image-token projection and loss
weights below are this module's spec form (UNVERIFIED), all configurable.

What: tower ``split_text`` (word tokenizer built from the captions, as ``hf_text``) and the model
:class:`SplitTextEncoder`, which :func:`~contrastkit.models.dual_encoder.build_model` builds instead
of the plain dual encoder when a tower names it (``model_class``). With token ids ``t [B, L]``
(right-padded) and image features ``F`` (timm ``forward_features``: a CNN's last map flattened to
``[B, H'·W', C]``, a ViT's tokens ``[B, T, C]``)::

    h_0 = E[t] + P[:L]                                   token + learned position embeddings
    h_l = EncBlock_l(h_{l−1}; causal self-attention)     l = 1..lower_layers      (text only)
    z   = LN(h)[last real token]                         → projection → contrastive text embedding
    M   = Linear(LN(F))                                  image tokens at the text width
    g_0 = h[:, :L−1]
    g_j = DecBlock_j(g_{j−1}; causal self-attn, cross-attn to M)   j = 1..upper_layers
    logits = Linear(LN(g))                               [B, L−1, V], predicting t[:, 1:]

Blocks are pre-norm ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` (GELU).
``forward`` of a batch with both image and text returns ``{image, text, "caption_logits"}``; the
``split_caption`` loss adds CLIP on (image, text) to the token cross-entropy of the logits
(:func:`~contrastkit.losses.generative.coca_loss`). Batches with one modality (evaluation) are
encoded as by the plain dual encoder.

Exactness: the text embedding depends on the token ids only — changing the image leaves it
bit-identical, and its gradient w.r.t. the image tower is ``None`` (tested with autograd), so the
contrastive loss reaches the image tower only through the image embedding; the caption loss
reaches it through the cross-attention. The image embedding is timm's own
``forward_head(forward_features(x))`` (= ``backbone(x)``), computed once for both uses. The lower
stack is causal, so one pass serves the embedding (whole caption) and the caption inputs
(``t[:, :L−1]``); with right padding no real token attends a pad, and pad targets are ignored by
the loss. Pooling is VLM2Vec's last-token rule (here the caption's [SEP]). ``scale.chunk_size``
(gradient caching) encodes towers separately and so yields no caption logits: the loss says so.
Related: L-COCA (``coca``: decoder in the loss, conditioned on the pooled image embedding),
``decoder_llm`` (M-LLM-EMBED).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Fraction, PositiveInt
from contrastkit.models.dual_encoder import EMA_SUFFIX, DualEncoder
from contrastkit.models.llm_embed import last_token_pool
from contrastkit.models.momentum import MomentumConfig
from contrastkit.models.tokenizer import load_tokenizer, train_word_tokenizer
from contrastkit.models.towers import TOWERS, ImageTower, TextTower, Tower, TowerContext

__all__ = ["CAPTION_KEY", "SplitTextEncoder", "SplitTextTower", "split_text_tower"]

CAPTION_KEY = "caption_logits"


def _causal(length: int, like: torch.Tensor) -> torch.Tensor:
    return nn.Transformer.generate_square_subsequent_mask(length, device=like.device, dtype=like.dtype)


class SplitTextTower(TextTower):
    """Causal text layers (``forward``: pooled embedding) + image-cross-attending layers
    (:meth:`caption_logits`); the image side is wired by :class:`SplitTextEncoder`."""

    def __init__(
        self,
        tokenizer,
        width: int,
        lower_layers: int,
        upper_layers: int,
        heads: int,
        intermediate_size: int,
        max_length: int,
        dropout: float = 0.0,
        pooling: Literal["last", "mean"] = "last",
        image_modality: str = "image",
    ) -> None:
        Tower.__init__(self)
        self.tokenizer, self.max_length, self.pooling = tokenizer, max_length, pooling
        self.pad_id = int(tokenizer.pad_token_id)
        self.vocab_size, self.width, self.output_dim = len(tokenizer), width, width
        self.image_modality = image_modality
        self.token = nn.Embedding(self.vocab_size, width)
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.01)
        kw = {"dropout": dropout, "activation": "gelu", "batch_first": True, "norm_first": True}
        self.lower = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, intermediate_size, **kw) for _ in range(lower_layers)
        )
        self.lower_norm = nn.LayerNorm(width)
        self.upper = nn.ModuleList(
            nn.TransformerDecoderLayer(width, heads, intermediate_size, **kw) for _ in range(upper_layers)
        )
        self.upper_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.vocab_size)

    def hidden(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The lower (text-only, causal) stack's output ``[B, L, width]`` and the mask ``ids ≠ pad``."""
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise InputError(
                f"text input must be LongTensor [B, L] of token ids, got {ids.dtype} {tuple(ids.shape)}"
            )
        if ids.shape[0] == 0:
            raise InputError("empty text batch")
        if ids.shape[1] > self.max_length:
            raise InputError(f"text of {ids.shape[1]} tokens is longer than max_length={self.max_length}")
        h = self.token(ids) + self.position[: ids.shape[1]]
        causal = _causal(ids.shape[1], h)
        for block in self.lower:
            h = block(h, src_mask=causal, is_causal=True)
        return h, ids != self.pad_id

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.lower_norm(h)
        if self.pooling == "last":
            return last_token_pool(x, mask)
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.pool(*self.hidden(ids))

    def caption_logits(self, h: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L−1, V]`` for ``t[:, 1:]`` from the lower output ``h`` and image tokens
        ``memory [B, N, width]``."""
        g = h[:, :-1]
        causal = _causal(g.shape[1], g)
        for block in self.upper:
            g = block(g, memory, tgt_mask=causal, tgt_is_causal=True)
        return self.head(self.upper_norm(g))


class SplitTextEncoder(DualEncoder):
    """A :class:`DualEncoder` whose ``split_text`` tower also captions: ``forward`` of a batch with
    image and text adds ``"caption_logits" [B, L−1, V]``; ``image_memory`` (LayerNorm → Linear)
    maps the image tower's unpooled features to the text width."""

    def __init__(
        self,
        towers: Mapping[str, Tower],
        embed_dim: int,
        projection: str = "linear",
        locked: Sequence[str] = (),
        momentum: MomentumConfig | None = None,
    ) -> None:
        super().__init__(towers, embed_dim, projection, locked, momentum)
        split = [m for m, t in self.towers.items() if isinstance(t, SplitTextTower)]
        if len(split) != 1:
            raise ConfigError(f"a split-text model needs exactly one 'split_text' tower, got {split}")
        text: SplitTextTower = self.towers[split[0]]  # type: ignore[assignment]
        image = text.image_modality
        if not isinstance(self.towers[image] if image in self.towers else None, ImageTower):
            raise ConfigError(
                f"tower 'split_text' cross-attends to image_modality={image!r}, which must be a timm "
                f"image tower of the model; towers: {list(self.towers)}"
            )
        self.text_modality, self.image_modality = split[0], image
        channels = self.towers[image].output_dim
        self.image_memory = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, text.width))

    def joint(self, images: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image and text embeddings and caption logits, each tower run once."""
        img, txt = self.image_modality, self.text_modality
        if img in self.runners or txt in self.runners:  # DDP runners wrap projection(tower(x)) only
            raise InputError(
                "a split_text model runs its towers jointly and cannot use per-tower DDP/FSDP wrappers: "
                "set train.dist_wrapper: allreduce"
            )
        itower: ImageTower = self.towers[img]  # type: ignore[assignment]
        ttower: SplitTextTower = self.towers[txt]  # type: ignore[assignment]
        feats = itower.backbone.forward_features(itower._preprocess(images))
        pooled = itower.backbone.forward_head(feats)  # timm: forward = forward_head ∘ forward_features
        tokens = feats.flatten(2).transpose(1, 2) if feats.ndim == 4 else feats  # [B, N, C]
        if tokens.ndim != 3:
            raise InputError(f"image features of shape {tuple(feats.shape)} are not a token sequence")
        h, mask = ttower.hidden(ids)
        memory = self.image_memory(tokens.to(h.dtype))
        return {
            img: self.projections[img](pooled),
            txt: self.projections[txt](ttower.pool(h, mask)),
            CAPTION_KEY: ttower.caption_logits(h, memory),
        }

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        img, txt = self.image_modality, self.text_modality
        if img not in batch or txt not in batch:
            return super().forward(batch)
        rest = {k: v for k, v in batch.items() if k not in (img, txt)}
        encodable = any(self.can_encode(k) and not k.endswith(EMA_SUFFIX) for k in rest)
        out = super().forward(rest) if encodable else {}
        out.update(self.joint(batch[img], batch[txt]))
        if self.momentum is not None:
            for k in (img, txt):
                if k in self.momentum.modalities:
                    out[k + EMA_SUFFIX] = self.encode(k + EMA_SUFFIX, batch[k])
        return out


SplitTextTower.model_class = SplitTextEncoder  # type: ignore[attr-defined]  # read by build_model


@TOWERS.register("split_text")
def split_text_tower(
    hidden_size: PositiveInt = 128,
    lower_layers: PositiveInt = 2,
    upper_layers: PositiveInt = 2,
    heads: PositiveInt = 2,
    intermediate_size: PositiveInt = 256,
    max_length: PositiveInt = 32,
    vocab_size: PositiveInt = 1000,
    dropout: Fraction = 0.0,
    pooling: Literal["last", "mean"] = "last",
    image_modality: str = "image",
    context: TowerContext | None = None,
) -> SplitTextTower:
    """A COSMO split text tower: ``lower_layers`` causal text-only blocks give the contrastive
    embedding (last-token pooled), ``upper_layers`` blocks cross-attend to ``image_modality``'s
    unpooled timm features and predict the caption (train with the ``split_caption`` loss); word
    tokenizer from ``context.texts`` (fresh run) or ``context.assets_dir/tokenizer`` (saved run)."""
    if hidden_size % heads:
        raise ConfigError(
            f"tower 'split_text': parameter hidden_size={hidden_size} must be a multiple of heads={heads}"
        )
    context = context or TowerContext()
    if context.assets_dir is not None:
        tokenizer = load_tokenizer(context.assets_dir / "tokenizer")
    elif context.texts is not None:
        tokenizer = train_word_tokenizer(context.texts, vocab_size)
    else:
        raise InputError("split_text tower needs training texts (fresh run) or an assets folder (saved run)")
    return SplitTextTower(
        tokenizer,
        hidden_size,
        lower_layers,
        upper_layers,
        heads,
        intermediate_size,
        max_length,
        dropout,
        pooling,
        image_modality,
    )
