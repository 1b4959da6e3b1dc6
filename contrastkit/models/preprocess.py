"""An image processor's preprocessing with torch ops, for towers loaded from Hugging Face folders.

``ImagePreprocess.from_processor(cfg)`` reads a ``CLIPImageProcessor``/``SiglipImageProcessor``
``to_dict()``: resize (``shortest_edge`` keeping the aspect ratio, or exact ``height×width``; the
processor's resample mode, antialiased, on uint8 — what transformers' torchvision backend does),
centre crop, and transformers' fused rescale + normalise. The result equals the processor's
``pixel_values`` (tested in ``tests/evaluation/test_external.py``), so a tower built from a CLIP
folder sees exactly what the source model saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError

__all__ = ["ImagePreprocess"]

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL codes transformers stores


@dataclass(frozen=True)
class ImagePreprocess:
    """uint8 ``[B,3,H,W]`` → float ``pixel_values`` with an image processor's settings."""

    size: dict[str, int] | None  # {"shortest_edge": s} or {"height": h, "width": w}; None = no resize
    resample: str = "bicubic"
    crop: tuple[int, int] | None = None
    rescale: float | None = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_processor(cls, cfg: dict[str, Any]) -> ImagePreprocess:
        """From an image processor's ``to_dict()`` (``preprocessor_config.json`` + class defaults)."""
        size = dict(cfg.get("size") or {}) if cfg.get("do_resize", True) else None
        if size is not None and set(size) not in ({"shortest_edge"}, {"height", "width"}):
            raise ConfigError(
                f"unsupported image processor size {size}; supported: shortest_edge or height+width"
            )
        code = int(cfg.get("resample", 3))
        if code not in _RESAMPLE:
            raise ConfigError(f"unsupported resample mode {code}; supported PIL codes: {sorted(_RESAMPLE)}")
        crop = None
        if cfg.get("do_center_crop", False):
            c = cfg.get("crop_size") or {}
            crop = (int(c["height"]), int(c["width"]))
        norm = cfg.get("do_normalize", True)
        return cls(
            size={k: int(v) for k, v in size.items()} if size is not None else None,
            resample=_RESAMPLE[code],
            crop=crop,
            rescale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None,
            mean=tuple(float(v) for v in cfg["image_mean"]) if norm else None,
            std=tuple(float(v) for v in cfg["image_std"]) if norm else None,
        )

    def _target(self, h: int, w: int) -> tuple[int, int]:
        assert self.size is not None
        if "shortest_edge" in self.size:  # torchvision Resize(int): short side = s, int() on the long one
            s = self.size["shortest_edge"]
            short, long = min(h, w), max(h, w)
            new_long = int(s * long / short)
            return (s, new_long) if h <= w else (new_long, s)
        return self.size["height"], self.size["width"]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as tvF  # what transformers' processors call

        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        x = images
        if self.size is not None:
            mode = InterpolationMode(self.resample)
            x = tvF.resize(x, list(self._target(*x.shape[-2:])), interpolation=mode, antialias=True)
        if self.crop is not None:
            x = _center_crop(x, *self.crop)
        if self.mean is not None and self.std is not None:
            rf = self.rescale if self.rescale is not None else 1.0
            mean = torch.tensor(self.mean) * (1.0 / rf)  # transformers' fused rescale + normalise
            std = torch.tensor(self.std) * (1.0 / rf)
            return (x.float() - mean[:, None, None]) / std[:, None, None]
        return x.float() * self.rescale if self.rescale is not None else x.float()

    def describe(self) -> dict[str, Any]:
        return {
            "resize": self.size,
            "resample": self.resample,
            "antialias": True,
            "center_crop": list(self.crop) if self.crop else None,
            "rescale": self.rescale,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
        }


def _center_crop(x: torch.Tensor, ch: int, cw: int) -> torch.Tensor:
    """transformers' centre crop: zero-pad when too small, top/left = int((size − crop) / 2)."""
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        x = F.pad(x, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2))
        h, w = x.shape[-2:]
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    return x[..., top : top + ch, left : left + cw]
