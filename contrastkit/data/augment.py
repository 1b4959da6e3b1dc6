"""Seeded, deterministic image augmentations for multi-view (SSL) objectives.

Views ``"image@0" … "image@{V-1}"`` of a batch are made from its ``uint8 [B, 3, H, W]`` images by

1. a **random resized crop** (area fraction in ``crop_scale``, aspect ratio log-uniform in
   ``crop_ratio``, the box always inside the image) resampled bilinearly to the output size,
   combined with a **horizontal flip** (probability ``flip``) in one ``affine_grid`` /
   ``grid_sample`` call;
2. **colour jitter**: brightness, contrast and saturation factors uniform in ``[1 − s, 1 + s]``,
   applied in that order (torchvision's formulas: scale; blend with the grey mean; blend with the
   grey image). No hue jitter: colour is a label of Shapes, and a hue shift would change it;
3. rounding and clamping back to ``uint8``.

Randomness: the parameters of view ``v`` of batch ``step`` are drawn for the whole (global)
batch from a ``torch.Generator`` seeded by ``(seed, step, v)`` and never touch a global RNG;
a shard of rows ``[offset, offset + B)`` takes its rows of those parameters. A view therefore
depends only on ``(seed, step, v, row)``: a resumed run, any number of loader workers and any
number of ranks see the same views as an uninterrupted single-process run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "apply_augment",
    "augment",
    "color_jitter",
    "make_views",
    "resized_crop_flip",
    "sample_params",
    "view_key",
]

_TAG = 0x5EED_A119  # separates the augmentation streams from the sampler's (seed, epoch) streams


def check_crop_flip_jitter(cfg: object, where: str) -> None:
    """Validate the crop/flip/jitter fields shared by :class:`AugmentConfig` and ``ImageConfig``."""
    lo, hi = cfg.crop_scale  # type: ignore[attr-defined]
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"{where}.crop_scale must satisfy 0 < lo <= hi <= 1, got {(lo, hi)}")
    rlo, rhi = cfg.crop_ratio  # type: ignore[attr-defined]
    if not 0 < rlo <= rhi:
        raise ConfigError(f"{where}.crop_ratio must satisfy 0 < lo <= hi, got {(rlo, rhi)}")
    if not 0 <= cfg.flip <= 1:  # type: ignore[attr-defined]
        raise ConfigError(f"{where}.flip is a probability in [0, 1], got {cfg.flip}")  # type: ignore[attr-defined]
    for name in ("brightness", "contrast", "saturation"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ConfigError(f"{where}.{name} must be in [0, 1], got {getattr(cfg, name)}")


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the view augmentations (``data.augment``); see the module docstring.

    ``size``: output side in pixels (``None``: the input's ``H × W``).
    """

    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    size: int | None = None

    def __post_init__(self) -> None:
        check_crop_flip_jitter(self, "data.augment")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"data.augment.size must be >= 1 or null, got {self.size}")


@dataclass(frozen=True)
class AugmentParams:
    """Per-image parameters (float64, ``[B]`` each): crop box centre/size as fractions of the
    image side, flip flag, jitter factors."""

    cx: torch.Tensor
    cy: torch.Tensor
    w: torch.Tensor
    h: torch.Tensor
    flip: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor

    def rows(self, lo: int, hi: int) -> AugmentParams:
        return AugmentParams(*(getattr(self, f)[lo:hi] for f in self.__dataclass_fields__))


def view_key(modality: str, view: int) -> str:
    """The batch/embedding key of view ``view`` of ``modality``: ``"image@1"``."""
    return f"{modality}@{view}"


def _generator(seed: int, step: int, view: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(step), int(view), _TAG]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def sample_params(cfg: AugmentConfig, seed: int, step: int, view: int, total: int) -> AugmentParams:
    """Parameters of view ``view`` of batch ``step`` for a (global) batch of ``total`` images."""
    if total < 1:
        raise InputError(f"total must be >= 1, got {total}")
    u = torch.rand(total, 8, generator=_generator(seed, step, view), dtype=torch.float64)
    area = cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * u[:, 0]
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = w / 2 + (1 - w) * u[:, 2]
    cy = h / 2 + (1 - h) * u[:, 3]

    def factor(strength: float, col: int) -> torch.Tensor:
        return 1 - strength + 2 * strength * u[:, col]

    return AugmentParams(
        cx=cx,
        cy=cy,
        w=w,
        h=h,
        flip=u[:, 4] < cfg.flip,
        brightness=factor(cfg.brightness, 5),
        contrast=factor(cfg.contrast, 6),
        saturation=factor(cfg.saturation, 7),
    )


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")


def resized_crop_flip(
    images: torch.Tensor, p: AugmentParams, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Crop each image to its box, optionally mirror it, resample bilinearly to ``size``;
    float32 ``[B, 3, h, w]`` in 0..255. The identity box reproduces the input exactly."""
    b = images.shape[0]
    out_h, out_w = size or tuple(images.shape[-2:])
    sx = torch.where(p.flip, -p.w, p.w)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sx, 2 * p.cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = p.h, 2 * p.cy - 1
    grid = F.affine_grid(theta, [b, 3, out_h, out_w], align_corners=False)
    x = images.to(torch.float32)
    return F.grid_sample(
        x, grid.to(x.device, torch.float32), mode="bilinear", padding_mode="border", align_corners=False
    )


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def color_jitter(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Brightness, contrast, saturation (in that order) on float images in 0..255."""

    def per_image(t: torch.Tensor) -> torch.Tensor:
        return t.to(x.device, torch.float32).view(-1, 1, 1, 1)

    x = (x * per_image(p.brightness)).clamp(0, 255)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * per_image(p.contrast) + mean).clamp(0, 255)
    grey = _grey(x)
    return ((x - grey) * per_image(p.saturation) + grey).clamp(0, 255)


def apply_augment(images: torch.Tensor, p: AugmentParams, size: int | None = None) -> torch.Tensor:
    """Apply parameters ``p`` (one row per image) to ``uint8`` images; returns ``uint8``."""
    _check_images(images)
    if len(p.w) != images.shape[0]:
        raise InputError(f"{len(p.w)} parameter rows for {images.shape[0]} images")
    x = resized_crop_flip(images, p, None if size is None else (size, size))
    return color_jitter(x, p).round().clamp(0, 255).to(torch.uint8)


def augment(
    images: torch.Tensor,
    cfg: AugmentConfig,
    seed: int,
    step: int,
    view: int,
    offset: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """View ``view`` of batch ``step``: rows ``[offset, offset + B)`` of a global batch of
    ``total`` (default ``B``) images; deterministic in ``(seed, step, view, row)``."""
    _check_images(images)
    n = images.shape[0]
    total = n if total is None else total
    if offset < 0 or offset + n > total:
        raise InputError(f"rows [{offset}, {offset + n}) do not fit in a batch of {total}")
    p = sample_params(cfg, seed, step, view, total).rows(offset, offset + n)
    return apply_augment(images, p, cfg.size)


def make_views(
    images: torch.Tensor,
    views: int,
    cfg: AugmentConfig,
    seed: int,
    step: int,
    offset: int = 0,
    total: int | None = None,
    modality: str = "image",
) -> dict[str, torch.Tensor]:
    """``{"image@0": …, "image@{views-1}": …}``: ``views`` independent augmentations."""
    return {view_key(modality, v): augment(images, cfg, seed, step, v, offset, total) for v in range(views)}
