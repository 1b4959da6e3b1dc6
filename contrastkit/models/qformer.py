"""M-QFORMER-ITC — BLIP-2's Q-Former (stage 1): K learned queries read a frozen image tower.

Paper: Li et al. 2023, "BLIP-2" (seed 9); read in salesforce/LAVIS ``blip2_qformer.py``, ``blip2.py``
(``init_Qformer``) and ``Qformer.py``.

What: tower ``qformer`` (image) holds a FROZEN image tower (any timm tower of the registry, e.g. one
trained by an earlier contrastkit run, loaded from ``weights``) and the Q-Former; tower
``qformer_text`` (text) owns the word tokenizer and the word/position embeddings and runs the SAME
Q-Former layers (not a second copy: the weights are registered once, under the image tower).
Post-LayerNorm BERT layers, as the Q-Former::

    image:  V   = LN_vision(tokens of the frozen tower)        [B, n_v, C]  (CNN cells / ViT patches,
                                                                         no gradient, eval mode)
            h   = LN_emb(Q),  Q ∈ R^{K×H} learned, init N(0, 0.02)
            per layer l: h = LN(h + SelfAttn(h))
                         if l % cross_attention_freq == 0: h = LN(h + CrossAttn(h, V))
                         h = LN(h + FFN_query(h))
            → [B, K, H]  → the model's projection per query (vision_proj) → K vectors per image
    text:   h   = LN_emb(E_word[t] + E_pos)                   (the same LN_emb)
            per layer l: h = LN(h + SelfAttn(h; pad keys masked))   (same weights, no cross-attention)
                         h = LN(h + FFN_text(h))                    (the text FFN: BLIP-2 keeps two)
            → h[:, 0] ([CLS]) → the model's projection (text_proj)

The image output is a token set ``[B, K, H]`` (no padding, see
:mod:`contrastkit.models.late_interaction`); pair it with the ``qformer_itc`` loss, whose score is
``s(i, j) = max_k q_k^(i) · t_j`` in both directions (:mod:`contrastkit.losses.late_interaction`).
Evaluation scores the same way (:mod:`contrastkit.evaluation.late_interaction`).

Defaults are BLIP-2's (32 queries, BERT-base: 768 wide, 12 layers and heads, cross-attention every
2nd layer, dropout 0.1). Deviations: random initialisation (BLIP-2 starts from bert-base-uncased;
weights never come from the network here); the projections are the dual encoder's bias-free
linear ones (LAVIS: with bias); the frozen tower's tokens are ``ImageTower.patch_tokens`` (a ViT's
prefix tokens are dropped). ``weights`` are read only when the model is built fresh: a rebuilt run
or an exported model gets the frozen tower's weights from its own state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Fraction, PositiveInt
from contrastkit.models.pretrained import load_weights, map_state_dict
from contrastkit.models.tokenizer import load_tokenizer, train_word_tokenizer
from contrastkit.models.towers import (
    TOWERS,
    ImageTower,
    TextTower,
    Tower,
    TowerContext,
    check_token_ids,
    shared_owner,
)

__all__ = ["QFormerBody", "QFormerImageTower", "QFormerLayer", "QFormerTextTower"]


def _ffn(hidden: int, intermediate: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, intermediate), nn.GELU(), nn.Linear(intermediate, hidden))


class QFormerLayer(nn.Module):
    """One Q-Former layer: shared self-attention, optional cross-attention (query path only),
    separate feed-forward blocks for queries and text; post-LayerNorm residuals (BERT)."""

    def __init__(self, hidden: int, heads: int, intermediate: int, vision_dim: int | None, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.cross: nn.MultiheadAttention | None = None
        self.cross_norm: nn.LayerNorm | None = None
        if vision_dim is not None:
            self.cross = nn.MultiheadAttention(
                hidden, heads, dropout=dropout, batch_first=True, kdim=vision_dim, vdim=vision_dim
            )
            self.cross_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn_query, self.query_norm = _ffn(hidden, intermediate), nn.LayerNorm(hidden, eps=1e-12)
        self.ffn_text, self.text_norm = _ffn(hidden, intermediate), nn.LayerNorm(hidden, eps=1e-12)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, h: torch.Tensor, pad: torch.Tensor | None = None, vision: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Queries when ``vision`` is given (cross-attention to it), else text with ``pad`` keys."""
        a = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        h = self.attn_norm(h + self.drop(a))
        if vision is None:
            return self.text_norm(h + self.drop(self.ffn_text(h)))
        if self.cross is not None and self.cross_norm is not None:
            c = self.cross(h, vision, vision, need_weights=False)[0]
            h = self.cross_norm(h + self.drop(c))
        return self.query_norm(h + self.drop(self.ffn_query(h)))


class QFormerBody(nn.Module):
    """The learned queries, the embedding LayerNorm shared by both paths, and the layers."""

    def __init__(
        self,
        num_queries: int,
        hidden: int,
        layers: int,
        heads: int,
        intermediate: int,
        vision_dim: int,
        cross_attention_freq: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, hidden))
        self.emb_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            QFormerLayer(
                hidden, heads, intermediate, vision_dim if i % cross_attention_freq == 0 else None, dropout
            )
            for i in range(layers)
        )
        _bert_init(self)

    def encode_queries(self, vision: torch.Tensor) -> torch.Tensor:
        """``[B, n_v, C]`` image tokens → ``[B, K, H]`` query outputs."""
        h = self.drop(self.emb_norm(self.query_tokens.expand(vision.shape[0], -1, -1)))
        for layer in self.layers:
            h = layer(h, None, vision)
        return h

    def encode_text(self, embeddings: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """``[B, L, H]`` word + position embeddings, ``pad [B, L]`` → ``[B, L, H]`` hidden states."""
        h = self.drop(self.emb_norm(embeddings))
        for layer in self.layers:
            h = layer(h, pad, None)
        return h


def _bert_init(module: nn.Module) -> None:
    """BERT's initialisation: every matrix (and the queries) N(0, 0.02), biases 0, LayerNorm 1/0."""
    for name, p in module.named_parameters():
        if isinstance(p, nn.Parameter) and p.ndim >= 2:
            nn.init.normal_(p, 0.0, 0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class QFormerImageTower(Tower):
    """Frozen image tower → ``LN_vision`` → Q-Former queries: ``[B, K, H]`` (a token set)."""

    token_set = True

    def __init__(self, vision: ImageTower, body: QFormerBody) -> None:
        super().__init__()
        self.vision = vision.requires_grad_(False).eval()
        self.ln_vision = nn.LayerNorm(vision.output_dim)
        self.body = body
        self.output_dim = int(body.query_tokens.shape[-1])
        self.num_queries = int(body.query_tokens.shape[1])

    def train(self, mode: bool = True) -> QFormerImageTower:
        super().train(mode)
        self.vision.eval()  # frozen: batch-norm statistics and dropout stay as trained
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the frozen tower never gets gradients (nor keeps a graph)
            grid = self.vision.patch_tokens(images)
        return self.body.encode_queries(self.ln_vision(grid.flatten(1, 2)))


class QFormerTextTower(TextTower):
    """Word tokenizer + word/position embeddings, run through the ``shared_with`` tower's Q-Former
    (not a submodule here: its weights are registered once); output the [CLS] state ``[B, H]``."""

    def __init__(self, owner: QFormerImageTower, tokenizer: Any, max_length: int, shared_with: str) -> None:
        Tower.__init__(self)
        self._owner = (owner,)  # a tuple: not registered as a submodule (no second copy of its weights)
        self.runs_weights_of = shared_with
        self.tokenizer, self.max_length, self.pooling = tokenizer, max_length, "cls"
        self.pad_id = int(tokenizer.pad_token_id)
        hidden = owner.output_dim
        self.word_embeddings = nn.Embedding(len(tokenizer), hidden)
        self.position_embeddings = nn.Embedding(max_length, hidden)
        _bert_init(self)
        self.output_dim = hidden

    @property
    def owner(self) -> QFormerImageTower:
        return self._owner[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_token_ids(ids, self.max_length)
        pos = torch.arange(ids.shape[1], device=ids.device)
        emb = self.word_embeddings(ids) + self.position_embeddings(pos)[None]
        return self.owner.body.encode_text(emb, ids == self.pad_id)[:, 0]


def _vision_tower(vision: Mapping[str, Any] | None, context: TowerContext | None) -> ImageTower:
    if not isinstance(vision, Mapping) or not isinstance(vision.get("name"), str):
        raise ConfigError(
            "tower 'qformer' needs params.vision: the frozen image tower as {name: timm, params: {...}}"
        )
    extra = sorted(set(vision) - {"name", "params"})
    if extra:
        raise ConfigError(f"tower 'qformer': params.vision takes name and params, not {extra}")
    inner = TowerContext(texts=None, assets_dir=None)
    tower = TOWERS.build(vision["name"], context=inner, **dict(vision.get("params") or {}))
    if not isinstance(tower, ImageTower):
        raise ConfigError(
            f"tower 'qformer': params.vision must be an image tower, got {type(tower).__name__}"
        )
    return tower


def _load_frozen(tower: ImageTower, weights: str, prefix: str) -> None:
    """The frozen tower's weights from a state dict file: the keys under ``prefix`` (a contrastkit
    checkpoint's ``model.towers.image.``; ``towers.image.`` in an exported ``model.safetensors``),
    strictly."""
    state = load_weights(weights)
    mine = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not mine:
        raise InputError(
            f"{weights}: no key starts with weights_prefix {prefix!r} (e.g. {next(iter(state), '')!r})"
        )
    try:
        map_state_dict(tower, mine, "names")
    except InputError as err:
        raise InputError(
            f"{weights} (keys under {prefix!r}) onto the qformer's vision tower: {err}"
        ) from None


@TOWERS.register("qformer")
def qformer_tower(
    vision: dict | None = None,
    weights: str | None = None,
    weights_prefix: str = "model.towers.image.",
    num_queries: PositiveInt = 32,
    hidden_size: PositiveInt = 768,
    layers: PositiveInt = 12,
    heads: PositiveInt = 12,
    intermediate_size: PositiveInt = 3072,
    cross_attention_freq: PositiveInt = 2,
    dropout: Fraction = 0.1,
    context: TowerContext | None = None,
) -> QFormerImageTower:
    """BLIP-2's Q-Former over a frozen image tower (M-QFORMER-ITC; pair with a ``qformer_text``
    text tower and the ``qformer_itc`` loss): ``num_queries`` learned queries cross-attend (every
    ``cross_attention_freq``-th layer) to the tokens of ``vision`` (a tower config ``{name, params}``,
    frozen), whose weights come from ``weights`` (keys under ``weights_prefix``: a contrastkit
    checkpoint's ``model.safetensors`` holds ``model.towers.image.*``, an exported one
    ``towers.image.*``). Returns K vectors per image."""
    if hidden_size % heads:
        raise ConfigError(f"tower 'qformer': hidden_size={hidden_size} must be a multiple of heads={heads}")
    tower = _vision_tower(vision, context)
    if weights is not None and (context is None or context.assets_dir is None):
        _load_frozen(tower, weights, weights_prefix)  # rebuilt runs take them from their checkpoint
    body = QFormerBody(
        num_queries,
        hidden_size,
        layers,
        heads,
        intermediate_size,
        tower.output_dim,
        cross_attention_freq,
        dropout,
    )
    return QFormerImageTower(tower, body)


@TOWERS.register("qformer_text")
def qformer_text_tower(
    shared_with: str = "image",
    max_length: PositiveInt = 32,
    vocab_size: PositiveInt = 1000,
    context: TowerContext | None = None,
) -> QFormerTextTower:
    """The Q-Former's text path (M-QFORMER-ITC): word tokenizer trained on the captions, word and
    position embeddings, run through the Q-Former of the ``shared_with`` tower (a ``qformer`` tower
    listed before it); the [CLS] output."""
    owner = shared_owner(context, shared_with, QFormerImageTower, "qformer_text")
    assert context is not None  # shared_owner found a tower in it
    if context.assets_dir is not None:
        tokenizer = load_tokenizer(context.assets_dir / "tokenizer")
    elif context.texts is not None:
        tokenizer = train_word_tokenizer(context.texts, vocab_size)
    else:
        raise InputError(
            "qformer_text tower needs training texts (fresh run) or an assets folder (saved run)"
        )
    return QFormerTextTower(owner, tokenizer, max_length, shared_with)


qformer_text_tower.shares_weights = True  # type: ignore[attr-defined]  # runs the qformer tower's weights
