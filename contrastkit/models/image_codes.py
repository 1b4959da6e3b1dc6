"""A frozen, deterministic discrete image tokenizer: a k-means codebook over raw image patches.

What: an image ``uint8 [B, 3, H, W]`` is cut into non-overlapping ``p × p`` patches in raster
order; each patch (``3p²`` values in [0, 1]) becomes the index of its nearest codebook vector
(squared Euclidean distance, ties to the lower index): ``codes [B, (H/p)·(W/p)]`` in ``[0, K)``.

Why this tokenizer: FuseLIP (M-FUSELIP) feeds an early-fusion transformer with the discrete codes of
a frozen pretrained TiTok tokenizer, which cannot be downloaded here. A k-means codebook needs no
weights from anywhere, is fitted once from the run's own training images, is exactly reproducible
(float64 Lloyd iterations from a seeded initialisation; no randomness beyond the seed) and, on
small synthetic images such as Shapes, keeps what matters — colour and local edge patterns — in a
few hundred codes. It is 2-D (one code per patch), not TiTok's 1-D latent tokens.

Fit (:func:`fit_codebook`): ``K`` distinct patches drawn with ``torch.Generator().manual_seed(seed)``
from a sample of the training patches initialise the centroids; ``iters`` Lloyd steps (assign,
then mean per cluster; an empty cluster keeps its centroid) in float64. The codebook is a buffer
(in the state dict, saved with the run and any export, never trained: no gradient reaches it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from contrastkit.core.errors import InputError, MissingFileError

__all__ = ["KMeansImageTokenizer", "fit_codebook", "image_patches"]


def image_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``uint8 [B, 3, H, W]`` → float ``[B, n, 3·p²]`` in [0, 1], patches in raster order."""
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise InputError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise InputError(f"image size {h}×{w} is not a multiple of the patch size {p}")
    x = images.float().div(255.0).reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)
    return d.argmin(1)


def fit_codebook(
    images: torch.Tensor, patch_size: int, size: int, iters: int = 10, seed: int = 0, max_patches: int = 65536
) -> torch.Tensor:
    """A ``[size, 3·p²]`` float32 k-means codebook of the patches of ``images`` (at most
    ``max_patches`` of them, a seeded sample), fitted as the module docstring says."""
    patches = image_patches(images, patch_size).reshape(-1, 3 * patch_size**2).double()
    if len(patches) < size:
        raise InputError(f"{len(patches)} image patches cannot fit a codebook of {size} codes")
    gen = torch.Generator().manual_seed(seed)
    if len(patches) > max_patches:
        patches = patches[torch.randperm(len(patches), generator=gen)[:max_patches]]
    centroids = patches[torch.randperm(len(patches), generator=gen)[:size]].clone()
    for _ in range(iters):
        owner = _assign(patches, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, owner, patches)
        counts = torch.bincount(owner, minlength=size).to(patches.dtype)[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids.float()


class KMeansImageTokenizer(nn.Module):
    """Images → patch codes with a frozen codebook (a buffer). ``forward`` runs without gradient
    and outside autocast, so codes are the same in fp32 and bf16 runs."""

    def __init__(self, codebook: torch.Tensor, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.register_buffer("codebook", codebook.detach().float().clone())

    @property
    def size(self) -> int:
        return int(self.codebook.shape[0])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            x = image_patches(images, self.patch_size)
            b, n, d = x.shape
            if d != self.codebook.shape[1]:
                raise InputError(f"patches of {d} values for a codebook of {self.codebook.shape[1]}")
            return _assign(x.reshape(b * n, d), self.codebook).view(b, n)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {"codebook": self.codebook.detach().cpu().contiguous()}, str(folder / "codebook.safetensors")
        )

    @staticmethod
    def load(folder: Path) -> torch.Tensor:
        from safetensors.torch import load_file

        path = folder / "codebook.safetensors"
        if not path.is_file():
            raise MissingFileError(f"no image codebook at {path} (saved with the run's assets)")
        return load_file(str(path))["codebook"]
