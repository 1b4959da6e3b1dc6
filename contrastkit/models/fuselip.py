"""FuseLIP: early fusion of discrete image tokens and text tokens in one transformer (M-FUSELIP,
seed paper 86: Schlarmann et al. 2025, "FuseLIP: Multimodal Embeddings via Early Fusion of
Discrete Tokens"; read in the public copy of its code, ``src/fuse_clip/fuse_clip_arch.py``).

What: one vocabulary holds the text tokens, the special ids and the image codes, in disjoint
ranges: ``[0, V)`` the word tokenizer's ids (PAD, UNK, SOT = [CLS], EOT = [SEP], words),
``V`` = MASK, ``V+1`` = EOI (end of image, optional), then ``K`` image codes from a frozen
tokenizer (:mod:`contrastkit.models.image_codes`: a k-means codebook over 4×4 patches fitted once on
the training images, standing in for the paper's TiTok, which cannot be downloaded here). Sequences:

* image:        ``[codes…] [EOI] [SOT, EOT]`` (the empty text);
* text:         ``[SOT, words…, EOT, PAD…]``;
* image + text: ``[codes…] [EOI] [SOT, words…, EOT, PAD…]`` (a composed query, :meth:`encode_fused`),

truncated to ``context_length`` (the last position becomes EOT if truncation removed it). One
transformer (pre-LN blocks, NO causal mask: bidirectional; padded keys masked when ``mask_pad``)
with learned positions cut to the sequence length; output = final LayerNorm, then the hidden state
at the (only) EOT position. Every input kind goes through the same function, so use
``model.projection: none`` (the paper has no projection) and ``embed_dim`` = ``width``.

Masked modelling (training only, ``mlm_weight > 0``): each non-special token (never PAD, UNK, SOT,
EOT, MASK, EOI — the reference leaves SOT maskable; the brief here excludes every special id) is
replaced by MASK with probability ``mlm_probability``; the embedding is computed from the masked
input (as the reference) and a head ``dense → GELU → LayerNorm → logits`` whose output weights are
TIED to the token embedding (own bias) predicts the original ids from the pre-LayerNorm hidden
states; cross-entropy over the masked positions, times ``mlm_weight``, is recorded as the auxiliary
loss ``fuselip/mlm`` (:mod:`contrastkit.models.aux`); a batch with no masked token adds nothing.

Towers: ``fuselip`` (modality ``image``) holds everything; ``fuselip_text`` encodes text through it
(``shared_with``); list the image tower first. The paper's loss is SigLIP's (``loss.name: siglip``).
Defaults are sized for Shapes (32-px images, 64 patches), not the paper's (TiTok 128 tokens,
width 384/512, 12 layers, context 180). Gradient caching is refused while masked modelling is on
(the MLM mean spans the batch); rows are otherwise independent.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive, PositiveInt, Probability
from contrastkit.models.aux import AuxLosses, declare_chunking
from contrastkit.models.blocks import Block
from contrastkit.models.image_codes import KMeansImageTokenizer, fit_codebook
from contrastkit.models.tokenizer import encode, load_tokenizer, train_word_tokenizer
from contrastkit.models.towers import TOWERS, TextTower, Tower, TowerContext, check_token_ids, shared_owner

__all__ = ["FuseLIPTextTower", "FuseLIPTower", "MaskedTokenHead"]

_MLM_WHY = "FuseLIP's masked-modelling loss is a mean over the masked tokens of the whole batch"


class MaskedTokenHead(nn.Module):
    """``dense → GELU → LayerNorm``, then logits with the token embedding's weights (tied) + a bias."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        width, vocab = embedding.embedding_dim, embedding.num_embeddings
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.bias = nn.Parameter(torch.zeros(vocab))
        self._tied = (embedding,)  # a tuple: the embedding is registered once, by the tower

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(hidden))) @ self._tied[0].weight.T + self.bias


class FuseLIPTower(Tower, AuxLosses):
    """The early-fusion encoder (image modality): image codes, vocabulary, transformer, MLM head."""

    def __init__(self, tokenizer: Any, codes: KMeansImageTokenizer, settings: Mapping[str, Any]) -> None:
        super().__init__()
        s = dict(settings)
        self.tokenizer, self.codes = tokenizer, codes
        self.max_length, self.mask_pad = int(s["max_text_length"]), bool(s["mask_pad"])
        self.image_size = int(s["image_size"])
        self.mlm_probability, self.mlm_weight = float(s["mlm_probability"]), float(s["mlm_weight"])
        self.text_vocab = len(tokenizer)
        self.pad_id, self.sot_id = int(tokenizer.pad_token_id), int(tokenizer.cls_token_id)
        self.eot_id, self.unk_id = int(tokenizer.sep_token_id), int(tokenizer.unk_token_id)
        self.mask_id = self.text_vocab
        self.eoi_id = self.text_vocab + 1 if s["use_eoi"] else None
        self.image_offset = self.text_vocab + 1 + int(s["use_eoi"])  # past MASK (and EOI)
        self.special_ids = tuple(
            i
            for i in (self.pad_id, self.unk_id, self.sot_id, self.eot_id, self.mask_id, self.eoi_id)
            if i is not None
        )
        width, self.context_length = int(s["width"]), int(s["context_length"])
        self.embed = nn.Embedding(self.image_offset + codes.size, width)
        self.pos = nn.Parameter(torch.randn(self.context_length, width) * 0.01)
        self.blocks = nn.ModuleList(
            Block(width, int(s["heads"]), float(s["mlp_ratio"])) for _ in range(s["depth"])
        )
        self.norm = nn.LayerNorm(width)
        self.head = MaskedTokenHead(self.embed) if self.mlm_weight > 0 else None
        self.chunking_refusal = _MLM_WHY if self.head is not None else ""
        self.output_dim = width

    # ----------------------------------------------------------------- sequences
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return encode(self.tokenizer, texts, self.max_length)

    def image_ids(self, images: torch.Tensor) -> torch.Tensor:
        """The image's codes shifted into the image range, then EOI (if used)."""
        if images.ndim == 4 and tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise InputError(
                f"tower 'fuselip' was built for {self.image_size}×{self.image_size} images, got "
                f"{tuple(images.shape[-2:])}: set its params.image_size"
            )
        ids = self.codes(images) + self.image_offset
        if self.eoi_id is not None:
            ids = torch.cat([ids, ids.new_full((len(ids), 1), self.eoi_id)], 1)
        return ids

    def sequence(self, images: torch.Tensor | None = None, text: torch.Tensor | None = None) -> torch.Tensor:
        """Input ids of an image, a text or both (see the module docs), truncated to the context."""
        if text is not None:
            self._check_text(text)
        if images is None:
            if text is None:
                raise InputError("FuseLIP needs an image, a text or both")
            seq = text
        else:
            img = self.image_ids(images)
            if text is None:
                text = img.new_tensor([self.sot_id, self.eot_id]).expand(len(img), 2)
            elif len(text) != len(img):
                raise InputError(
                    f"{len(img)} images for {len(text)} texts: a composed query needs one of each"
                )
            seq = torch.cat([img, text.to(img.device)], 1)
        if seq.shape[1] > self.context_length:
            seq = seq[:, : self.context_length].clone()
            seq[(seq == self.eot_id).sum(1) == 0, -1] = self.eot_id
        return seq

    def _check_text(self, ids: torch.Tensor) -> None:
        check_token_ids(ids)
        if bool(((ids < 0) | (ids >= self.text_vocab)).any()):
            raise InputError(f"text ids must lie in the text range [0, {self.text_vocab})")

    # ----------------------------------------------------------------- encoder
    def _mask_tokens(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked input and the positions masked (never a special id)."""
        maskable = ~torch.isin(seq, seq.new_tensor(self.special_ids))
        chosen = maskable & (torch.rand(seq.shape, device=seq.device) < self.mlm_probability)
        return torch.where(chosen, seq.new_full((), self.mask_id), seq), chosen

    def encode_ids(self, seq: torch.Tensor) -> torch.Tensor:
        """The embedding of input ids ``[B, L]``: the final-LN hidden state at EOT."""
        eot = seq == self.eot_id
        if not bool((eot.sum(1) == 1).all()):
            raise InputError("every FuseLIP sequence needs exactly one EOT token")
        if seq.shape[1] > self.context_length:
            raise InputError(
                f"sequence of {seq.shape[1]} tokens exceeds context_length={self.context_length}"
            )
        mlm = self.head is not None and self.training and torch.is_grad_enabled()
        original = seq
        if mlm:
            seq, chosen = self._mask_tokens(seq)
        pad = (seq == self.pad_id) if self.mask_pad else None
        x = self.embed(seq) + self.pos[: seq.shape[1]]
        for block in self.blocks:
            x, _ = block(x, pad)
        if mlm and bool(chosen.any()):  # the reference ignores a batch with nothing masked
            logits = self.head(x[chosen])  # type: ignore[misc]
            self.add_aux_loss(
                "fuselip/mlm", self.mlm_weight * F.cross_entropy(logits.float(), original[chosen])
            )
        x = self.norm(x)
        return x[torch.arange(len(x), device=x.device), eot.float().argmax(1)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_ids(self.sequence(images=images))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encode_ids(self.sequence(text=ids))

    def encode_fused(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """One embedding of each (image, text) pair: a composed query."""
        return self.encode_ids(self.sequence(images, ids))

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        self.codes.save(folder)


class FuseLIPTextTower(TextTower):
    """Text through the ``shared_with`` FuseLIP tower (not a submodule: its weights live there)."""

    def __init__(self, owner: FuseLIPTower, shared_with: str) -> None:
        Tower.__init__(self)
        self._owner = (owner,)
        self.runs_weights_of = shared_with
        self.tokenizer, self.max_length, self.pooling = owner.tokenizer, owner.max_length, "eot"
        self.pad_id, self.output_dim = owner.pad_id, owner.output_dim

    @property
    def owner(self) -> FuseLIPTower:
        return self._owner[0]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.owner.tokenize(texts)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.owner.encode_text(ids)

    def save_assets(self, folder: Path) -> None:
        """Nothing: the tokenizer is saved with the FuseLIP tower."""


def _why(params: Mapping[str, Any]) -> str | None:
    return _MLM_WHY if float(params.get("mlm_weight", 0.25)) > 0 else None


def _text_tokenizer(context: TowerContext, vocab_size: int) -> Any:
    if context.assets_dir is not None:
        return load_tokenizer(context.assets_dir / "tokenizer")
    if context.texts is not None:
        return train_word_tokenizer(context.texts, vocab_size)
    raise InputError("fuselip tower needs training texts (fresh run) or an assets folder (saved run)")


def _codebook(context: TowerContext, patch_size: int, size: int, fit: tuple[int, int, int]) -> torch.Tensor:
    if context.assets_dir is not None:
        return KMeansImageTokenizer.load(context.assets_dir)
    if context.images is None:
        raise ConfigError(
            "tower 'fuselip' fits its image tokenizer on training images held in memory (a built-in "
            "data set such as shapes); this data source has none"
        )
    n_images, iters, seed = fit
    sample = context.images[
        torch.randperm(len(context.images), generator=torch.Generator().manual_seed(seed))[:n_images]
    ]
    return fit_codebook(sample, patch_size, size, iters, seed)


@TOWERS.register("fuselip")
@declare_chunking(_why)
def fuselip_tower(
    width: PositiveInt = 128,
    depth: PositiveInt = 4,
    heads: PositiveInt = 4,
    mlp_ratio: Positive = 4.0,
    patch_size: PositiveInt = 4,
    image_size: PositiveInt = 32,
    codebook_size: PositiveInt = 256,
    fit_images: PositiveInt = 1000,
    kmeans_iters: PositiveInt = 10,
    tokenizer_seed: int = 0,
    max_text_length: PositiveInt = 32,
    vocab_size: PositiveInt = 1000,
    context_length: PositiveInt | None = None,
    use_eoi: bool = True,
    mask_pad: bool = True,
    mlm_probability: Probability = 0.1,
    mlm_weight: NonNegative = 0.25,
    context: TowerContext | None = None,
) -> FuseLIPTower:
    """FuseLIP's early-fusion encoder (M-FUSELIP; pair with a ``fuselip_text`` text tower and
    ``projection: none``): frozen k-means image codes + word tokens in one bidirectional
    transformer, pooled at EOT, optional masked modelling with tied weights."""
    if width % heads:
        raise ConfigError(f"tower 'fuselip': width={width} must be a multiple of heads={heads}")
    if image_size % patch_size:
        raise ConfigError(
            f"tower 'fuselip': image_size={image_size} must be a multiple of patch_size={patch_size}"
        )
    n_image = (image_size // patch_size) ** 2 + int(use_eoi)
    context_length = context_length or n_image + max_text_length
    if context_length < n_image + 2:
        raise ConfigError(
            f"tower 'fuselip': context_length={context_length} cannot hold {n_image} image ids + SOT, EOT"
        )
    context = context or TowerContext()
    tokenizer = _text_tokenizer(context, vocab_size)
    codebook = _codebook(context, patch_size, codebook_size, (fit_images, kmeans_iters, tokenizer_seed))
    settings = {
        "width": width,
        "depth": depth,
        "heads": heads,
        "mlp_ratio": mlp_ratio,
        "image_size": image_size,
        "max_text_length": max_text_length,
        "context_length": context_length,
        "use_eoi": use_eoi,
        "mask_pad": mask_pad,
        "mlm_probability": mlm_probability,
        "mlm_weight": mlm_weight,
    }
    return FuseLIPTower(tokenizer, KMeansImageTokenizer(codebook, patch_size), settings)


@TOWERS.register("fuselip_text")
def fuselip_text_tower(shared_with: str = "image", context: TowerContext | None = None) -> FuseLIPTextTower:
    """Text for a FuseLIP model: ``[SOT, words…, EOT]`` through the ``shared_with`` ``fuselip`` tower."""
    return FuseLIPTextTower(shared_owner(context, shared_with, FuseLIPTower, "fuselip_text"), shared_with)


fuselip_text_tower.shares_weights = True  # type: ignore[attr-defined]  # runs the fuselip tower's weights
