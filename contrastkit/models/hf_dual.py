"""Towers from a pretrained Hugging Face ``CLIPModel`` / ``SiglipModel`` folder (offline).

``hf_dual_image`` and ``hf_dual_text`` split a local CLIP or SigLIP checkpoint into contrastkit's
image and text towers, each ending in the model's own projection, so with ``projection: none``
(and ``embed_dim`` = the model's projection size) the embeddings equal ``get_image_features`` /
``get_text_features`` of transformers:

```yaml
model:
  towers:
    image: {name: hf_dual_image, params: {path: models/my-clip}}
    text: {name: hf_dual_text, params: {path: models/my-clip}}
  embed_dim: 512          # the checkpoint's projection_dim
  projection: none
```

* Images: uint8 batches go through the folder's image processor settings with torch ops
  (:class:`~contrastkit.models.preprocess.ImagePreprocess`), i.e. exactly the processor's pixels.
* Texts: CLIP pads to the longest caption and masks the padding, as ``CLIPProcessor`` does (the
  mask is rebuilt in the tower: every position up to the first EOS token, so it also holds when the
  pad token is the EOS token, as in OpenAI's tokenizer); SigLIP pads to ``max_length`` and uses no
  mask, as its reference implementation.
* Assets: the tower saves the checkpoint's ``config.json``, tokenizer and image-processor files with
  the run, and rebuilds from them (weights come from the run's checkpoint), so a run no longer needs
  the source folder.

``hf_dual_logit_scale(path)`` gives the checkpoint's logit scale and bias for the loss's start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.core.registry import PositiveInt
from contrastkit.models.preprocess import ImagePreprocess
from contrastkit.models.pretrained import resolve_path
from contrastkit.models.tokenizer import train_word_tokenizer
from contrastkit.models.towers import TOWERS, TextTower, Tower, TowerContext

__all__ = ["HFDualImageTower", "HFDualTextTower", "hf_dual_embed_dim", "hf_dual_kind", "hf_dual_logit_scale"]


def _folder(path: str, context: TowerContext | None) -> tuple[Path, bool]:
    """The folder to build from: the run's saved assets when rebuilding, else ``path``."""
    assets = None if context is None else context.assets_dir
    if assets is not None and (Path(assets) / "config.json").is_file():
        return Path(assets), True
    folder = resolve_path(path)
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"no Hugging Face CLIP/SigLIP folder at {folder} (no config.json)")
    return folder, False


def hf_dual_kind(folder: str | Path) -> str:
    """``clip`` or ``siglip``, from the folder's ``config.json``."""
    kind = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    if kind not in ("clip", "siglip"):
        raise ConfigError(f"{folder}: model_type {kind!r} is not a CLIP or SigLIP checkpoint")
    return str(kind)


def _load(folder: Path, from_assets: bool) -> tuple[str, Any]:
    """The checkpoint's model. Rebuilding from a run's assets, the pretrained weights are read from
    the recorded source folder when it is still there (WiSE-FT's θ₀ is the pretrained model; a
    checkpoint's weights replace them anyway), else the architecture is built from ``config.json``."""
    from transformers import AutoConfig, CLIPModel, SiglipModel

    kind = hf_dual_kind(folder)
    cls = CLIPModel if kind == "clip" else SiglipModel
    if from_assets:
        record = folder / "source.json"
        source = Path(json.loads(record.read_text())["path"]) if record.is_file() else None
        if source is None or not (source / "config.json").is_file():
            return kind, cls(AutoConfig.from_pretrained(str(folder), local_files_only=True))
        folder = source
    return kind, cls.from_pretrained(str(folder), local_files_only=True)


def hf_dual_embed_dim(path: str | Path) -> int:
    """The embedding size of a CLIP (``projection_dim``) or SigLIP (text hidden size) folder, read
    from its ``config.json`` without loading weights."""
    folder = resolve_path(path)
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"model.from: no Hugging Face CLIP/SigLIP folder at {folder} (no config.json)")
    kind = hf_dual_kind(folder)
    cfg = json.loads((folder / "config.json").read_text())
    if kind == "clip":
        return int(cfg.get("projection_dim", 512))
    return int((cfg.get("text_config") or {}).get("hidden_size", 768))


def hf_dual_logit_scale(path: str | Path) -> tuple[float, float | None]:
    """The checkpoint's ``exp(logit_scale)`` and (SigLIP) ``logit_bias``."""
    kind, model = _load(resolve_path(path), False)
    bias = float(model.logit_bias.detach()) if kind == "siglip" else None
    return float(model.logit_scale.detach().exp()), bias


def _save(folder: Path, config: Any, source: Path | None, extra: Any) -> None:
    """The model's ``config.json``, ``extra`` (its tokenizer or image processor) and ``source.json``
    (the pretrained weights' folder, WiSE-FT's θ₀; none for a model trained from scratch)."""
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    extra.save_pretrained(str(folder))
    if source is not None:
        (folder / "source.json").write_text(json.dumps({"path": str(source.resolve())}))


class HFDualImageTower(Tower):
    """The vision half of a CLIP/SigLIP checkpoint (with CLIP's projection), on uint8 images."""

    def __init__(self, kind: str, model: Any, processor: Any, source: Path | None) -> None:
        super().__init__()
        self.kind, self.processor, self.source = kind, processor, source
        self.hf_config = model.config
        self.prep = ImagePreprocess.from_processor(processor.to_dict())
        self.vision = model.vision_model
        self.proj = model.visual_projection if kind == "clip" else nn.Identity()
        cfg = model.config
        self.output_dim = int(cfg.projection_dim if kind == "clip" else cfg.vision_config.hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.prep(images).to(next(self.vision.parameters()).device)
        return self.proj(self.vision(pixel_values=pixels).pooler_output)

    def save_assets(self, folder: Path) -> None:
        _save(folder, self.hf_config, self.source, self.processor)


class HFDualTextTower(TextTower):
    """The text half of a CLIP/SigLIP checkpoint (with CLIP's projection) and its tokenizer."""

    def __init__(self, kind: str, model: Any, tokenizer: Any, max_length: int, source: Path | None) -> None:
        Tower.__init__(self)
        self.kind, self.tokenizer, self.max_length, self.source = kind, tokenizer, max_length, source
        self.hf_config = model.config
        self.encoder = model.text_model
        self.proj = model.text_projection if kind == "clip" else nn.Identity()
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.eos_id = model.config.text_config.eos_token_id
        self.pooling = "eos" if kind == "clip" else "last"
        cfg = model.config
        self.output_dim = int(cfg.projection_dim if kind == "clip" else cfg.text_config.hidden_size)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        padding = "max_length" if self.kind == "siglip" else True
        out = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return out["input_ids"]

    def _mask(self, ids: torch.Tensor) -> torch.Tensor:
        """CLIPProcessor's attention mask: 1 up to and including the first EOS (else: non-pad)."""
        is_eos = ids == self.eos_id
        has = is_eos.any(1, keepdim=True)
        first = torch.where(has, is_eos.long().argmax(1, keepdim=True), ids.new_full((len(ids), 1), -1))
        upto = torch.arange(ids.shape[1], device=ids.device)[None] <= first
        return torch.where(has, upto, ids != self.pad_id).long()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.kind == "siglip":
            return self.proj(self.encoder(input_ids=ids).pooler_output)
        return self.proj(self.encoder(input_ids=ids, attention_mask=self._mask(ids)).pooler_output)

    def save_assets(self, folder: Path) -> None:
        _save(folder, self.hf_config, self.source, self.tokenizer)


def _processor(folder: Path) -> Any:
    from transformers import AutoImageProcessor

    if not (folder / "preprocessor_config.json").is_file():
        raise MissingFileError(f"no preprocessor_config.json in {folder}: the image preprocessing is unknown")
    return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)


def _new(config: dict[str, Any], tokenizer: Any = None) -> tuple[str, Any]:
    """A randomly initialised CLIPModel/SiglipModel of ``config`` (``model_type`` + the config
    class's arguments); with a tokenizer, the text model's vocabulary and special tokens are its."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    args = dict(config)
    kind = args.pop("model_type", None)
    if kind not in ("clip", "siglip"):
        raise ConfigError(f"hf_dual config: model_type must be clip or siglip, got {kind!r}")
    text = dict(args.pop("text_config", None) or {})
    if tokenizer is not None:
        text.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,  # CLIP pools the first EOS: the word tokenizer's [SEP]
        )
    elif kind == "siglip":  # SigLIP's text defaults name ids outside its default vocabulary
        text.setdefault("bos_token_id", None)
        text.setdefault("eos_token_id", None)
    cfg_cls, model_cls = (CLIPConfig, CLIPModel) if kind == "clip" else (SiglipConfig, SiglipModel)
    try:
        return kind, model_cls(cfg_cls(text_config=text, **args))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"hf_dual config: {err}") from None


def _new_processor(kind: str, model: Any) -> Any:
    """transformers' default processor for the model's image size (CLIP: resize the shorter side
    and centre-crop, OpenAI mean/std; SigLIP: resize to the square, mean/std 0.5)."""
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    side = int(model.config.vision_config.image_size)
    if kind == "clip":
        return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return SiglipImageProcessor(size={"height": side, "width": side})


def _one_source(path: str | None, config: dict[str, Any] | None, tower: str) -> None:
    if (path is None) == (config is None):
        raise ConfigError(
            f"tower {tower!r}: give either path (a pretrained folder) or config (train from scratch)"
        )


@TOWERS.register("hf_dual_image")
def hf_dual_image_tower(
    path: str | None = None, config: dict[str, Any] | None = None, context: TowerContext | None = None
) -> HFDualImageTower:
    """The image tower of a local CLIP/SigLIP folder (``path``, may be ``pip:<module>/<folder>``), or
    of a new randomly initialised one (``config``: ``model_type`` + CLIPConfig/SiglipConfig args)."""
    assets = None if context is None else context.assets_dir
    if config is not None and not (assets is not None and (Path(assets) / "config.json").is_file()):
        _one_source(path, config, "hf_dual_image")
        kind, model = _new(config)
        return HFDualImageTower(kind, model, _new_processor(kind, model), None)
    _one_source(path, config if path is None else None, "hf_dual_image")
    folder, from_assets = _folder(path or "", context)
    kind, model = _load(folder, from_assets)
    return HFDualImageTower(kind, model, _processor(folder), _source_of(folder, from_assets))


@TOWERS.register("hf_dual_text")
def hf_dual_text_tower(
    path: str | None = None,
    config: dict[str, Any] | None = None,
    max_length: PositiveInt | None = None,
    vocab_size: PositiveInt = 1000,
    context: TowerContext | None = None,
) -> HFDualTextTower:
    """The text tower (and tokenizer) of a local CLIP/SigLIP folder, or of a new one (``config``;
    its word tokenizer of up to ``vocab_size`` words is built from the training captions).
    ``max_length`` defaults to the text model's positions (SigLIP pads to it)."""
    from transformers import AutoTokenizer

    assets = None if context is None else context.assets_dir
    if config is not None and not (assets is not None and (Path(assets) / "config.json").is_file()):
        _one_source(path, config, "hf_dual_text")
        if context is None or context.texts is None:
            raise InputError("hf_dual_text with config needs the training captions to build its tokenizer")
        tokenizer = train_word_tokenizer(context.texts, vocab_size)
        kind, model = _new(config, tokenizer)
        source = None
    else:
        _one_source(path, config if path is None else None, "hf_dual_text")
        folder, from_assets = _folder(path or "", context)
        kind, model = _load(folder, from_assets)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        source = _source_of(folder, from_assets)
    n_pos = int(model.config.text_config.max_position_embeddings)
    length = min(max_length or n_pos, n_pos)
    if kind == "clip":
        length = min(length, int(tokenizer.model_max_length))
    return HFDualTextTower(kind, model, tokenizer, length, source)


def _source_of(folder: Path, from_assets: bool) -> Path | None:
    """The pretrained folder a tower came from: ``folder`` itself, or (rebuilt from a run's assets)
    the one the assets record, which may be none (trained from scratch)."""
    if not from_assets:
        return folder
    record = folder / "source.json"
    return Path(json.loads(record.read_text())["path"]) if record.is_file() else None
