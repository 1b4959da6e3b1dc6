"""Batched, no-grad embedding of images and texts through any model.

Evaluation code talks to an :class:`Encoders` pair of callables, never to a model class, so the
same metrics run on contrastkit runs, on loaded third-party checkpoints, or on any two functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from contrastkit.core.errors import InputError
from contrastkit.core.progress import progress_bar
from contrastkit.models.dual_encoder import DualEncoder

__all__ = ["Encoders", "model_encoders"]


@dataclass(frozen=True)
class Encoders:
    """``images(uint8 [B,3,H,W]) -> [B, d]`` and ``texts(list[str]) -> [B, d]``, L2-normalised;
    optionally ``image_patches(uint8 [B,3,H,W]) -> [B, H', W', C]``, the image tower's unpooled
    token grid (tower feature space, not normalised), for the dense geometry metrics."""

    images: Callable[[torch.Tensor], torch.Tensor]
    texts: Callable[[list[str]], torch.Tensor]
    image_patches: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, kw_only=True)


def _batches(n: int, batch_size: int, desc: str) -> Iterable[int]:
    """Start indices of the batches of ``n`` items, with a progress bar (an inner one: it vanishes
    when done; quiet for quick calls, see :mod:`contrastkit.core.progress`)."""
    return progress_bar(range(0, n, batch_size), desc, unit="batch", leave=False)


def model_encoders(model: DualEncoder, batch_size: int = 256, device: str | None = None) -> Encoders:
    """Encoders of a :class:`DualEncoder`'s ``image`` and ``text`` towers (eval mode, no grad)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device else next(model.parameters()).device

    @torch.no_grad()
    def images(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        starts = _batches(len(x), batch_size, "embed images")
        outs = [model.encode("image", x[i : i + batch_size].to(dev)) for i in starts]
        return F.normalize(torch.cat(outs).float(), dim=-1).cpu()

    @torch.no_grad()
    def texts(t: list[str]) -> torch.Tensor:
        model.eval()
        outs = [
            model.encode("text", model.tokenize(list(t[i : i + batch_size])).to(dev))
            for i in _batches(len(t), batch_size, "embed texts")
        ]
        return F.normalize(torch.cat(outs).float(), dim=-1).cpu()

    tower = model.towers["image"] if "image" in model.towers else None

    @torch.no_grad()
    def image_patches(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        starts = _batches(len(x), batch_size, "embed patches")
        outs = [tower.patch_tokens(x[i : i + batch_size].to(dev)) for i in starts]
        return torch.cat(outs).float().cpu()

    return Encoders(images, texts, image_patches=image_patches if hasattr(tower, "patch_tokens") else None)
