"""Decoding and per-image transforms for images read from files, shards or tables.

Every image a file source yields goes through one pipeline and comes out as ``uint8 [3, S, S]``
(the batch format of :mod:`contrastkit.data.pairs`); normalisation stays in the image tower
(its own mean/std, e.g. timm's data config for a pretrained tower), so a saved run evaluates
exactly as it trained.

* **Decoding**: Pillow (JPEG, PNG, WebP, GIF, BMP, TIFF; palette/alpha/grey → RGB on white).
  For a JPEG much larger than the output, Pillow's ``draft`` decodes at ½, ¼ or ⅛ scale first
  (libjpeg's DCT scaling — the same image, far fewer pixels to decode), never below the
  resize target.
* **Training** (``train=True``): a random resized crop (area fraction ``crop_scale``, aspect ratio
  log-uniform in ``crop_ratio``; torchvision's sampling rule with 10 tries then a centre crop),
  a horizontal flip with probability ``flip``, optional colour jitter — all with torchvision's
  ``transforms.v2.functional`` kernels (antialiased resize on ``uint8``). The default
  ``crop_scale = (0.9, 1.0)`` and no flip are open_clip's training defaults.
* **Evaluation** (``train=False``): resize the shorter side to ``size``, centre crop.

Randomness: the parameters are drawn from ``numpy.random.default_rng(key)`` for an integer key
given by the caller (e.g. ``(seed, step, row)``), never from a global RNG, so a resumed run and any
number of loader workers produce identical images.

A file that is missing or cannot be decoded raises :class:`SkipSample` with its reason; loaders
count it and move on (:mod:`contrastkit.data.skips`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from contrastkit.core.errors import ConfigError
from contrastkit.data.augment import check_crop_flip_jitter

__all__ = ["ImageConfig", "SkipSample", "decode_image", "load_image", "transform_image"]

_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is one of :data:`contrastkit.data.skips.REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageConfig:
    """How images read from files become ``uint8 [3, size, size]`` (``data.image``).

    ``crop_scale``/``crop_ratio``: the training random resized crop (``crop_scale = [1, 1]`` with
    ``crop_ratio = [1, 1]`` is a plain resize of a centre square); ``flip``: horizontal-flip
    probability; ``brightness``/``contrast``/``saturation``/``hue``: colour-jitter strengths
    (factors in ``[1 − s, 1 + s]``, hue shift in ``[−hue, hue]``); ``interpolation``: resampling
    filter (antialiased). ``draft``: let Pillow decode large JPEGs at a reduced scale.
    """

    size: int = 64
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    draft: bool = True

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"data.image.size must be >= 1, got {self.size}")
        check_crop_flip_jitter(self, "data.image")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"data.image.hue must be in [0, 0.5], got {self.hue}")

    @classmethod
    def tiny(cls) -> ImageConfig:
        return cls(size=32)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes | Path | str, min_side: int | None = None) -> torch.Tensor:
    """``uint8 [3, H, W]`` RGB of an encoded image (bytes or a path). ``min_side``: with a JPEG,
    let Pillow decode at the smallest ½/¼/⅛ scale whose shorter side stays ≥ ``min_side``.
    Raises :class:`SkipSample` (``missing file`` / ``bad image``)."""
    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")
    except FileNotFoundError:
        raise SkipSample("missing file", str(data)) from None
    except OSError as err:
        raise SkipSample("missing file", f"{data}: {err}") from None
    try:
        with src, Image.open(src) as img:
            if min_side is not None and img.format == "JPEG":
                w, h = img.size
                scale = min(w, h) / min_side
                if scale >= 2:
                    img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
            img.load()
            rgb = _to_rgb(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        name = "<bytes>" if isinstance(data, bytes) else str(data)
        raise SkipSample("bad image", f"{name}: {type(err).__name__}: {err}") from None
    if rgb.width < 1 or rgb.height < 1:
        raise SkipSample("bad image", "zero-sized image")
    arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def load_image(data: bytes | Path | str, cfg: ImageConfig, key: Sequence[int] | None) -> torch.Tensor:
    """Decode and transform one image: training transform seeded by ``key``, or the evaluation
    transform when ``key`` is ``None``."""
    min_side = cfg.size if cfg.draft else None
    if min_side is not None and key is not None:  # a crop may keep only crop_scale[0] of the area
        min_side = math.ceil(cfg.size / math.sqrt(cfg.crop_scale[0]))
    return transform_image(decode_image(data, min_side), cfg, key)


def _crop_box(h: int, w: int, cfg: ImageConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params with an explicit generator."""
    area = h * w
    log_ratio = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw = round(math.sqrt(target * ratio))
        ch = round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h  # fallback: centre crop at the nearest allowed ratio
    if in_ratio < cfg.crop_ratio[0]:
        cw, ch = w, round(w / cfg.crop_ratio[0])
    elif in_ratio > cfg.crop_ratio[1]:
        ch, cw = h, round(h * cfg.crop_ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def transform_image(img: torch.Tensor, cfg: ImageConfig, key: Sequence[int] | None) -> torch.Tensor:
    """``uint8 [3, H, W]`` → ``uint8 [3, size, size]`` (see the module docstring)."""
    size, interp = cfg.size, _INTERP[cfg.interpolation]
    h, w = img.shape[-2:]
    if key is None:
        img = TF.resize(img, [size], interpolation=interp, antialias=True)
        return TF.center_crop(img, [size, size]).contiguous()
    rng = np.random.default_rng([int(k) for k in key])
    top, left, ch, cw = _crop_box(h, w, cfg, rng)
    img = TF.resized_crop(img, top, left, ch, cw, [size, size], interpolation=interp, antialias=True)
    if cfg.flip and rng.random() < cfg.flip:
        img = TF.horizontal_flip(img)
    jitter = [(n, getattr(cfg, n)) for n in ("brightness", "contrast", "saturation") if getattr(cfg, n)]
    for name, s in jitter:
        factor = float(rng.uniform(1 - s, 1 + s))
        img = getattr(TF, f"adjust_{name}")(img, factor)
    if cfg.hue:
        img = TF.adjust_hue(img, float(rng.uniform(-cfg.hue, cfg.hue)))
    return img.contiguous()
