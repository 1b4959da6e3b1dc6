"""Masked image modelling as a tower auxiliary loss, next to the contrastive objective (X-Former).

What: Sun et al. 2024, "X-Former: Unifying Contrastive and Reconstruction Learning for MLLMs" (seed
26; no spec entry, UNVERIFIED: from the abstract, not checked against the original — X-Former
fuses a frozen CLIP-ViT and a frozen MAE-ViT through a Q-Former-like module; here the idea that
a masked-reconstruction term adds the detailed, local information contrastive learning misses is
applied to the trained image tower itself). A loss function cannot reconstruct pixels from
embeddings alone, so this is a **tower change**: the ``mim`` tower wraps any image tower
(``inner: {name, params}``); its forward returns the inner tower's embedding of the *unmasked*
image (what the contrastive loss sees, unchanged), and in a training step (training mode with
gradients) it also

1. masks ``ceil(mask_ratio · P)`` of the P patches (``patch × patch`` pixels) of every image,
   chosen at random per image, by filling them with grey (127);
2. embeds the masked image with the same inner tower (a second forward) and decodes every patch's
   pixels from that embedding with a decoder ``Linear(d, P·patch²·3)`` (``decoder_hidden > 0``:
   ``Linear → GELU → Linear``);
3. records ``weight · L_MIM`` as the auxiliary term ``mim/reconstruction``
   (:mod:`contrastkit.models.aux`), which the trainer adds to the contrastive loss and logs as
   ``aux/mim/reconstruction``.

Formula (MAE's loss, He et al. 2022), pixels scaled to [0, 1], with ``norm_pix`` each target patch
standardised by its own mean and unbiased variance (``(t − μ)/sqrt(var + 1e-6)``)::

    L_MIM = Σ_{i, p masked} mean_k (pred_ipk − target_ipk)² / #masked

Exactness and limits: :func:`masked_patch_loss` equals a naive float64 loop (tests). The term is a
mean over the batch's masked patches, so gradient caching (``scale.chunk_size``) is refused (the
tower declares why); several processes compute it per rank (per-shard, as every tower term). The
mask comes from the global RNG (as FuseLIP's masked modelling). Cost: one more inner forward and
backward per step. Combine with any pair loss: the contrastive loss is the config's ``loss``; this
term rides on the tower. Related: M-FUSELIP (masked modelling of tokens), :mod:`contrastkit.models.aux`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, NonNegInt, PositiveInt
from contrastkit.models.aux import AuxLosses, declare_chunking
from contrastkit.models.towers import TOWERS, Tower, TowerContext

__all__ = ["MIMTower", "masked_patch_loss", "patchify", "random_patch_mask", "unpatchify"]

FILL = 127  # grey: what a masked patch shows the tower (uint8)
WHY_NO_CHUNKS = "the mim tower's reconstruction term is a mean over the batch's masked patches"


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, P, patch²·3]`` row-major patches of ``[B, 3, H, W]`` images (channels last in a patch)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise InputError(f"image size {h}×{w} is not divisible by patch={patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, 3, H, W]`` images from ``[B, P, patch²·3]`` patches."""
    b = patches.shape[0]
    grid = patches.reshape(b, h // patch, w // patch, patch, patch, 3)
    return grid.permute(0, 5, 1, 3, 2, 4).reshape(b, 3, h, w).contiguous()


def random_patch_mask(b: int, p: int, ratio: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``bool [B, P]`` with exactly ``ceil(ratio·P)`` True (masked) entries per row, at random."""
    k = min(p, math.ceil(ratio * p))
    order = torch.rand(b, p, device=device).argsort(1)
    mask = torch.zeros(b, p, dtype=torch.bool, device=device)
    return mask.scatter_(1, order[:, :k], True)


def masked_patch_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """MAE's reconstruction loss: mean squared error per patch, averaged over the masked patches.

    Args:
        pred: ``[B, P, D]`` predicted patches. target: ``[B, P, D]`` true patches. mask: ``bool [B, P]``.
        norm_pix: standardise each target patch (mean, unbiased variance, eps 1e-6) first.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2] or mask.dtype != torch.bool:
        raise InputError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and bool mask {tuple(mask.shape)} "
            "must be [B, P, D], [B, P, D], [B, P]"
        )
    if not bool(mask.any()):
        raise InputError("masked_patch_loss needs at least one masked patch")
    target = target.to(pred.dtype)
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(-1)
    return per_patch[mask].sum() / mask.sum()


class MIMTower(AuxLosses, Tower):
    """Any image tower plus a masked-patch reconstruction term (module docstring)."""

    def __init__(
        self,
        inner: Tower,
        image_size: int,
        patch: int,
        mask_ratio: float,
        weight: float,
        decoder_hidden: int = 0,
        norm_pix: bool = True,
    ) -> None:
        super().__init__()
        self.inner, self.output_dim = inner, int(inner.output_dim)
        self.patch, self.mask_ratio, self.weight, self.norm_pix = patch, mask_ratio, weight, norm_pix
        self.n_patches, out = (image_size // patch) ** 2, patch * patch * 3
        d = self.output_dim
        if decoder_hidden:
            self.decoder: nn.Module = nn.Sequential(
                nn.Linear(d, decoder_hidden), nn.GELU(), nn.Linear(decoder_hidden, self.n_patches * out)
            )
        else:
            self.decoder = nn.Linear(d, self.n_patches * out)
        self.chunking_refusal = WHY_NO_CHUNKS

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        emb = self.inner(images)
        if self.weight and self.training and torch.is_grad_enabled():
            self.add_aux_loss("mim/reconstruction", self.weight * self.reconstruction(images))
        return emb

    def reconstruction(self, images: torch.Tensor) -> torch.Tensor:
        """``L_MIM`` of one random mask over ``images`` (uint8 ``[B, 3, H, W]``)."""
        patches = patchify(images, self.patch)
        if patches.shape[1] != self.n_patches:
            got = patches.shape[1]
            raise InputError(f"the mim tower was built for {self.n_patches} patches, the images give {got}")
        mask = random_patch_mask(images.shape[0], self.n_patches, self.mask_ratio, images.device)
        masked = torch.where(mask[..., None], torch.full_like(patches, FILL), patches)
        masked_images = unpatchify(masked, self.patch, images.shape[2], images.shape[3])
        pred = self.decoder(self.inner(masked_images)).reshape(images.shape[0], self.n_patches, -1)
        return masked_patch_loss(pred.float(), patches.float() / 255.0, mask, self.norm_pix)

    def save_assets(self, folder: Path) -> None:
        self.inner.save_assets(folder)


def _inner(inner: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(inner, Mapping) or not isinstance(inner.get("name"), str):
        raise ConfigError(
            f"tower 'mim' needs params.inner: {{name: <image tower>, params: …}}, got {inner!r}"
        )
    if inner["name"] == "mim":
        raise ConfigError("tower 'mim': the inner tower cannot be another mim tower")
    return inner["name"], dict(inner.get("params") or {})


@TOWERS.register("mim")
@declare_chunking(lambda params: WHY_NO_CHUNKS)
def mim_tower(
    inner: dict[str, Any],
    image_size: PositiveInt,
    patch: PositiveInt = 4,
    mask_ratio: float = 0.5,
    weight: NonNegative = 1.0,
    decoder_hidden: NonNegInt = 0,
    norm_pix: bool = True,
    context: TowerContext | None = None,
) -> MIMTower:
    """An image tower ``inner`` (``{name, params}``) with X-Former-style masked-image modelling as a
    tower auxiliary loss: ``weight`` · MAE reconstruction of ``mask_ratio`` of the ``patch``-pixel
    patches of ``image_size``² images from the masked image's embedding."""
    if image_size % patch:
        raise ConfigError(f"tower 'mim': image_size={image_size} must be a multiple of patch={patch}")
    if not 0 < mask_ratio <= 1:
        raise ConfigError(f"tower 'mim': mask_ratio must lie in (0, 1], got {mask_ratio}")
    name, params = _inner(inner)
    built = TOWERS.build(name, context=context or TowerContext(), **params)
    return MIMTower(built, image_size, patch, mask_ratio, weight, decoder_hidden, norm_pix)
