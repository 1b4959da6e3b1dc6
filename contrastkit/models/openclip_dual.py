"""Towers from a pretrained open_clip model (offline): ``model.from: open_clip:NAME:CHECKPOINT``.

``open_clip_image`` and ``open_clip_text`` split an open_clip ``CLIP`` / ``CustomTextCLIP`` into
contrastkit's image and text towers, each ending in the model's own projection, so with
``projection: none`` the embeddings equal ``encode_image`` / ``encode_text`` of open_clip:

```yaml
model:
  from: open_clip:ViT-B-32:checkpoints/my-clip.safetensors   # built-in architecture + local file
  # or  open_clip:models/my-clip    (a folder: open_clip_config.json + open_clip_model.safetensors)
```

* Weights: ``.safetensors``, or a PyTorch file read with ``torch.load(weights_only=True)`` (a
  pickle holding anything but tensors is refused), through open_clip's own ``load_checkpoint``
  (which also maps OpenAI-format and ``module.``-prefixed state dicts).
* Images: uint8 batches get open_clip's eval transform with torch ops
  (:class:`~contrastkit.models.preprocess.ImagePreprocess`): shorter side resized (bicubic,
  antialiased), centre crop, mean/std. On images already at the model's size this equals open_clip's
  PIL transform to float rounding; a resize differs from PIL's by interpolation rounding.
* Texts: open_clip's tokenizer for the architecture (its BPE ships with the package; a tokenizer
  that must be downloaded fails with a clear error instead).
* Assets: ``open_clip_config.json`` (model + preprocess config), the tokenizer's files if it has
  any, and ``source.json`` (the pretrained checkpoint, θ₀ of WiSE-FT) are saved with the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.models.preprocess import ImagePreprocess
from contrastkit.models.pretrained import check_weights, resolve_path
from contrastkit.models.towers import TOWERS, TextTower, Tower, TowerContext

__all__ = [
    "OpenCLIPImageTower",
    "OpenCLIPTextTower",
    "create_model",
    "open_clip_config",
    "open_clip_logit_scale",
    "parse_open_clip",
]

CONFIG = "open_clip_config.json"


def parse_open_clip(spec: str) -> tuple[str, str | None]:
    """``NAME:CHECKPOINT`` → (NAME, CHECKPOINT); ``DIR`` (an open_clip folder) → (DIR, None)."""
    name, sep, checkpoint = spec.partition(":")
    if not sep:
        return name, None
    if not name or not checkpoint:
        raise ConfigError(f"model.from: open_clip:{spec} must be open_clip:NAME:CHECKPOINT or open_clip:DIR")
    return name, checkpoint


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """open_clip logs every random init on the root logger; a loaded tower is not news."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def open_clip_config(name: str, checkpoint: str | None = None) -> dict[str, Any]:
    """``{"model_cfg", "preprocess_cfg"}`` of a built-in architecture or an open_clip folder; checks
    that the checkpoint file exists (nothing is loaded), so a bad ``model.from`` fails in one line."""
    import open_clip

    if checkpoint is None:
        folder = resolve_path(name)
        if not (folder / CONFIG).is_file():
            raise MissingFileError(
                f"model.from: no open_clip folder at {folder} (no {CONFIG}); use open_clip:NAME:CHECKPOINT "
                "for a built-in architecture and a checkpoint file"
            )
        cfg = json.loads((folder / CONFIG).read_text())
        if "model_cfg" not in cfg:
            raise ConfigError(f"{folder / CONFIG} has no 'model_cfg'")
        return {"model_cfg": cfg["model_cfg"], "preprocess_cfg": cfg.get("preprocess_cfg", {})}
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ConfigError(
            f"model.from: {name!r} is not an open_clip architecture (open_clip.list_models() has "
            f"{len(open_clip.list_models())}, e.g. ViT-B-32, RN50, ViT-B-16-SigLIP)"
        )
    file = resolve_path(checkpoint)
    if not file.is_file():
        raise MissingFileError(f"model.from: no checkpoint file {file}")
    check_weights(file)  # a pickle that is not plain tensors fails here, before any data is read
    # open_clip's defaults for a checkpoint file (create_model(NAME, pretrained=FILE) does the same)
    return {"model_cfg": model_cfg, "preprocess_cfg": {}}


def _weights_file(folder: Path) -> Path | None:
    names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors")
    return next((folder / n for n in names if (folder / n).is_file()), None)


def create_model(cfg: dict[str, Any], checkpoint: Path | None = None) -> Any:
    """The open_clip model of ``cfg`` with ``checkpoint``'s weights (random init without one)."""
    import open_clip

    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / CONFIG).write_text(json.dumps(cfg))  # create_model builds any config from a folder
        model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, pretrained_text=False)
    if checkpoint is not None:
        try:
            open_clip.load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
        except pickle.UnpicklingError as err:
            raise InputError(
                f"{checkpoint}: not a plain tensor checkpoint (weights_only=True refused it: "
                f"{str(err).splitlines()[0]}); convert it to .safetensors"
            ) from None
        except RuntimeError as err:
            raise InputError(f"{checkpoint} does not match the open_clip architecture: {err}") from None
    return model.eval()


def _source(spec_name: str, checkpoint: str | None) -> tuple[dict[str, Any], Path | None]:
    cfg = open_clip_config(spec_name, checkpoint)
    if checkpoint is None:
        return cfg, _weights_file(resolve_path(spec_name))
    return cfg, resolve_path(checkpoint)


def _load(name: str, checkpoint: str | None, context: TowerContext | None) -> tuple[dict, Path | None, Any]:
    """(config, pretrained checkpoint, model). Rebuilding from a run's assets, the pretrained weights
    are read again if the recorded checkpoint is still there (WiSE-FT's θ₀), else random init (the
    run's checkpoint replaces them anyway)."""
    assets = None if context is None else context.assets_dir
    if assets is not None and (Path(assets) / CONFIG).is_file():
        cfg = json.loads((Path(assets) / CONFIG).read_text())
        record = Path(assets) / "source.json"
        source = json.loads(record.read_text()).get("checkpoint") if record.is_file() else None
        ckpt = Path(source) if source and Path(source).is_file() else None
        return cfg, ckpt, create_model(cfg, ckpt)
    cfg, ckpt = _source(name, checkpoint)
    return cfg, ckpt, create_model(cfg, ckpt)


def open_clip_logit_scale(spec: str) -> tuple[float, float | None]:
    """The checkpoint's ``exp(logit_scale)`` and ``logit_bias`` (None for CLIP-style models)."""
    cfg, ckpt = _source(*parse_open_clip(spec))
    model = create_model(cfg, ckpt)
    bias = getattr(model, "logit_bias", None)
    return float(model.logit_scale.detach().exp()), None if bias is None else float(bias.detach())


def _preprocess(cfg: dict[str, Any]) -> ImagePreprocess:
    """open_clip's eval transform (``image_transform(is_train=False)``) as torch ops."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    size = cfg["model_cfg"]["vision_cfg"].get("image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    pre = cfg.get("preprocess_cfg", {})
    mode = pre.get("resize_mode", "shortest")
    interp = pre.get("interpolation", "bicubic")
    if interp not in ("bicubic", "bilinear") or mode not in ("shortest", "squash"):
        raise ConfigError(
            f"open_clip preprocessing {interp}/{mode} is not supported (bicubic|bilinear, shortest|squash)"
        )
    if mode == "squash":
        resize = {"height": h, "width": w}
    elif h == w:
        resize = {"shortest_edge": h}
    else:
        raise ConfigError(
            f"open_clip resize_mode 'shortest' with a non-square image size {size} is not supported"
        )
    return ImagePreprocess(
        size=resize,
        resample=interp,
        crop=(h, w),
        mean=tuple(pre.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(pre.get("std", OPENAI_DATASET_STD)),
    )


def _save(folder: Path, cfg: dict[str, Any], ckpt: Path | None, tokenizer: Any = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(cfg, indent=1))
    (folder / "source.json").write_text(
        json.dumps({"checkpoint": None if ckpt is None else str(ckpt.resolve())})
    )
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
    if inner is not None and hasattr(inner, "save_pretrained"):
        inner.save_pretrained(str(folder))


class OpenCLIPImageTower(Tower):
    """``model.visual`` of an open_clip model (projection included), on uint8 images."""

    def __init__(self, visual: nn.Module, cfg: dict[str, Any], source: Path | None) -> None:
        super().__init__()
        self.visual, self.cfg, self.source = visual, cfg, source
        self.prep = _preprocess(cfg)
        self.output_dim = int(cfg["model_cfg"]["embed_dim"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.prep(images).to(next(self.visual.parameters()).device)
        return self.visual(pixels)

    def save_assets(self, folder: Path) -> None:
        _save(folder, self.cfg, self.source)


class OpenCLIPTextTower(TextTower):
    """The text half of an open_clip model (``encode_text``, projection included) and its tokenizer.
    It holds the model without ``visual``, ``logit_scale`` and ``logit_bias`` (the loss owns those)."""

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: dict[str, Any], source: Path | None) -> None:
        Tower.__init__(self)
        for name in ("visual", "logit_scale", "logit_bias"):
            if hasattr(model, name):
                delattr(model, name)
        self.clip, self.tokenizer, self.cfg, self.source = model, tokenizer, cfg, source
        self.max_length = int(cfg["model_cfg"]["text_cfg"].get("context_length", 77))
        self.output_dim = int(cfg["model_cfg"]["embed_dim"])

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).long()

    def count_truncated(self, texts: list[str]) -> int:
        return 0  # open_clip's tokenizers truncate silently and do not report lengths

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise InputError(
                f"text input must be LongTensor [B, L] of token ids, got {ids.dtype} {tuple(ids.shape)}"
            )
        return self.clip.encode_text(ids)

    def save_assets(self, folder: Path) -> None:
        _save(folder, self.cfg, self.source, self.tokenizer)


def _tokenizer(cfg: dict[str, Any], folder: Path | None) -> Any:
    import open_clip

    text_cfg = cfg["model_cfg"].get("text_cfg", {})
    hf_name = text_cfg.get("hf_tokenizer_name")
    if hf_name and (folder is None or not (folder / "tokenizer_config.json").is_file()):
        raise MissingFileError(
            f"the open_clip text tower uses the Hugging Face tokenizer {hf_name!r}, which is not saved "
            "locally: use an open_clip folder (open_clip:DIR) that holds its tokenizer files"
        )
    with _quiet(), contextlib.ExitStack() as stack:
        tmp = folder
        if tmp is None or not (tmp / CONFIG).is_file():
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            (tmp / CONFIG).write_text(json.dumps(cfg))
        return open_clip.get_tokenizer(f"local-dir:{tmp}")


@TOWERS.register("open_clip_image")
def open_clip_image_tower(
    source: str, checkpoint: str | None = None, context: TowerContext | None = None
) -> OpenCLIPImageTower:
    """The image tower of an open_clip model: ``source`` a built-in architecture with a local
    ``checkpoint`` file, or ``source`` an open_clip folder (``open_clip_config.json`` + weights)."""
    cfg, ckpt, model = _load(source, checkpoint, context)
    return OpenCLIPImageTower(model.visual, cfg, ckpt)


@TOWERS.register("open_clip_text")
def open_clip_text_tower(
    source: str, checkpoint: str | None = None, context: TowerContext | None = None
) -> OpenCLIPTextTower:
    """The text tower (and tokenizer) of an open_clip model (``source``/``checkpoint`` as for the
    image tower)."""
    cfg, ckpt, model = _load(source, checkpoint, context)
    assets = None if context is None else context.assets_dir
    if assets is not None and (Path(assets) / CONFIG).is_file():
        folder: Path | None = Path(assets)
    else:
        folder = resolve_path(source) if checkpoint is None else None
    return OpenCLIPTextTower(model, _tokenizer(cfg, folder), cfg, ckpt)
