"""Jigsaw Clustering views: a batch of images cut into g×g patches, shuffled across the batch and
re-assembled into montages (the data side of the ``jigsaw`` loss).

What: Chen et al. 2021, "Jigsaw Clustering for Unsupervised Visual Representation Learning" (seed
93; no spec entry, UNVERIFIED: from the abstract, not checked against the original). Each of the B
``uint8 [3, H, W]`` images is cut into G = g² equal patches (row-major cells); the B·G patches are
permuted by one seeded permutation and written back, G per montage, into B montages of the same
size. The network forwards only the montages — one forward per batch, no second augmented copy.

Protocol: :func:`jigsaw_views` returns the montages and, for every montage cell (row ``b·G + k``
of the flattened ``[B·G]`` targets, cell k row-major), the **source** image it came from and its
original **position** in that image — the ``labels`` and ``positions`` batch fields of the
``jigsaw`` loss, whose cell embeddings come from
:func:`contrastkit.losses.parts.jigsaw_cells` on the montages' feature maps (same cell order).

Exactness: a pure re-arrangement (every patch appears once, bit-exact); ``unshuffle`` inverts it.
Randomness: a ``torch.Generator`` seeded with ``seed`` (never the global RNG): the same seed gives
the same montages. H and W must be divisible by g.

Training (``data.jigsaw: {grid: g}``, :class:`JigsawConfig`): every training batch's images become
montages (:func:`jigsaw_batch`), seeded by ``(train seed, step, shard offset)`` like the augmented
views (:mod:`contrastkit.data.augment`), so a resumed run sees the same montages; ``labels`` are
global rows (the shard's offset in the global batch added), ``positions`` the original cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, InputError

__all__ = ["JigsawConfig", "JigsawViews", "jigsaw_batch", "jigsaw_seed", "jigsaw_views", "unshuffle"]

_TAG = 0x1165_A3  # separates the montage stream from the augmentation and sampler streams


@dataclass(frozen=True)
class JigsawConfig:
    """``data.jigsaw``: train on montages of g×g patches (``grid`` = g ≥ 1; 2: the paper's 2×2)."""

    grid: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 1:
            raise ConfigError(f"data.jigsaw.grid must be an integer >= 1, got {self.grid!r}")


@dataclass(frozen=True)
class JigsawViews:
    """Montages ``uint8 [B, 3, H, W]``; per montage cell (``[B·G]``, montage-major) the source
    image ``labels`` and original cell ``positions``; ``grid`` = g."""

    montages: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    grid: int


def _patches(images: torch.Tensor, g: int) -> torch.Tensor:
    """``[B, G, 3, h, w]`` row-major patches of ``[B, 3, H, W]`` images."""
    b, c, h, w = images.shape
    p = images.reshape(b, c, g, h // g, g, w // g).permute(0, 2, 4, 1, 3, 5)
    return p.reshape(b, g * g, c, h // g, w // g)


def _assemble(patches: torch.Tensor, g: int) -> torch.Tensor:
    """Inverse of :func:`_patches`."""
    b, _, c, ph, pw = patches.shape
    return patches.reshape(b, g, g, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * ph, g * pw)


def jigsaw_views(images: torch.Tensor, grid: int = 2, *, seed: int = 0) -> JigsawViews:
    """Cut, shuffle across the batch and re-assemble (module docstring).

    Args:
        images: ``uint8 [B, 3, H, W]`` with H and W divisible by ``grid``.
        grid: g (2: four patches per image, the paper's setting).
        seed: seed of the permutation (e.g. derived from the step, for resumable runs).
    """
    if not isinstance(grid, int) or grid < 1:
        raise ConfigError(f"grid must be an integer >= 1, got {grid!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be uint8 [B, 3, H, W], got {got}")
    if images.dtype != torch.uint8 or images.shape[0] == 0:
        raise InputError(f"images must be a non-empty uint8 batch, got {images.dtype} {tuple(images.shape)}")
    h, w = images.shape[2:]
    if h % grid or w % grid:
        raise InputError(f"image size {h}×{w} is not divisible by grid={grid}")
    b, cells = images.shape[0], grid * grid
    perm = torch.randperm(b * cells, generator=torch.Generator().manual_seed(int(seed)))
    flat = _patches(images, grid).reshape(b * cells, *images.shape[1:2], h // grid, w // grid)
    montages = _assemble(flat[perm.to(images.device)].reshape(b, cells, 3, h // grid, w // grid), grid)
    return JigsawViews(montages, perm // cells, perm % cells, grid)


def unshuffle(views: JigsawViews) -> torch.Tensor:
    """The original images back from the montages (exact inverse of :func:`jigsaw_views`)."""
    g, cells = views.grid, views.grid * views.grid
    b = views.montages.shape[0]
    flat = _patches(views.montages, g).reshape(b * cells, *views.montages.shape[1:2], *_patch_hw(views))
    out = torch.empty_like(flat)
    out[(views.labels * cells + views.positions).to(flat.device)] = flat
    return _assemble(out.reshape(b, cells, *flat.shape[1:]), g)


def _patch_hw(views: JigsawViews) -> tuple[int, int]:
    h, w = views.montages.shape[2:]
    return h // views.grid, w // views.grid


def jigsaw_seed(seed: int, step: int, offset: int) -> int:
    """The montage seed of the shard at row ``offset`` of training batch ``step`` (a 62-bit int)."""
    state = np.random.SeedSequence([int(seed), int(step), int(offset), _TAG]).generate_state(2, np.uint32)
    return (int(state[0]) << 30) ^ int(state[1])


def jigsaw_batch(
    images: torch.Tensor, grid: int, seed: int, step: int, offset: int
) -> dict[str, torch.Tensor]:
    """The batch fields of ``data.jigsaw`` for this shard's ``images`` (rows ``offset …`` of batch
    ``step``): ``image`` = the montages, ``labels`` = source image as a global batch row (unique
    over shards), ``positions`` = original cell; ``labels``/``positions`` are ``[B·G]``."""
    views = jigsaw_views(images, grid, seed=jigsaw_seed(seed, step, offset))
    return {"image": views.montages, "labels": views.labels + int(offset), "positions": views.positions}
