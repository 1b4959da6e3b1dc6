"""Training Jigsaw Clustering from a config: ``data.jigsaw: {grid: g}`` with ``loss: jigsaw``.

What: the data side (:func:`contrastkit.data.jigsaw.jigsaw_batch`) turns each training batch's B
images into B montages of shuffled g×g patches and adds ``labels`` (source image, a global batch
row) and ``positions`` (original cell), ``[B·G]`` each, G = g². The model side is here: the image
tower's unpooled feature map of the montages (``ImageTower.patch_tokens``: a timm CNN's last
feature map, or a ViT's patch-token grid) is average-pooled over the g×g cells
(:func:`contrastkit.losses.parts.jigsaw_cells`, row-major, montage-major: the order of the targets)
and each cell goes through the image projection, so ``image`` is ``[B·G, d]``. The trainer passes
those cell embeddings alone to the ``jigsaw`` loss (its ``y`` is optional); a text tower, if the
model has one, is not run. With a linear projection (``model.projection: linear``) and a feature map
that divides into equal cells, the mean of a montage's cell embeddings is the model's ordinary
pooled embedding of the montage: the trained run evaluates with the plain forward (``contrastkit
eval RUN --tasks probe``).

Checked before any data is read (:func:`check_jigsaw`): data ↔ loss both or neither, the loss's
``grid`` equals the data's, an image tower, image side divisible by g, a dense single-process step
(no gradient caching, tiling, JEST, noisy pairs, modulation or momentum encoder: none of them
would see the cells). Several processes are refused when the session starts (:func:`check_world`).
A feature map smaller than g×g (a 32-pixel image through a stride-32 ResNet is 1×1) is an error at
the first step naming the fix (larger images, or timm ``output_stride: 8``).
"""

from __future__ import annotations

import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.parts import jigsaw_cells
from contrastkit.models.dual_encoder import DualEncoder
from contrastkit.train.config import RunConfig

__all__ = ["cell_embeddings", "check_jigsaw", "check_world"]

_FILE_SOURCES = ("csv", "tsv", "parquet", "imagefolder", "hf", "webdataset")  # images sized by data.image


def check_jigsaw(cfg: RunConfig) -> None:
    """Refuse a jigsaw config that cannot train as configured (module docstring)."""
    data, loss = cfg.data.jigsaw, cfg.loss
    uses = loss.name == "jigsaw" and not loss.terms
    if data is None:
        if uses or "jigsaw" in loss.terms:
            raise ConfigError(
                "loss jigsaw needs the montages and their cell targets: set data.jigsaw: {grid: 2}"
            )
        return
    if not uses:
        what = f"loss terms {list(loss.terms)}" if loss.terms else f"loss {loss.name!r}"
        raise ConfigError(f"data.jigsaw makes montages for the jigsaw loss alone; the config trains {what}")
    grid = data.grid
    if loss.params.get("grid", 2) != grid:
        raise ConfigError(
            f"loss.params.grid={loss.params.get('grid', 2)} must equal data.jigsaw.grid={grid} "
            "(the localisation head has one output per cell)"
        )
    if "image" not in cfg.model.towers:
        raise ConfigError(f"data.jigsaw needs an image tower; model.towers has {list(cfg.model.towers)}")
    params = cfg.data.params if cfg.data.sources else cfg.data.split_params(cfg.data.train_split)
    size = cfg.data.image.size if cfg.data.name in _FILE_SOURCES else params.get("image_size")
    if isinstance(size, int) and size % grid:
        raise ConfigError(f"data.jigsaw.grid={grid} must divide the image side {size} (equal patches)")
    refused = [
        k
        for k, on in (
            ("scale.chunk_size", cfg.scale.chunk_size is not None),
            ("scale.tile_size", cfg.scale.tile_size is not None),
            ("curation.jest", cfg.curation.jest is not None),
            ("curation.noisy_pairs", cfg.curation.noisy_pairs is not None),
            ("train.modulation", cfg.train.modulation is not None),
            ("model.momentum", cfg.model.momentum is not None),
        )
        if on
    ]
    if refused:
        raise ConfigError(
            f"data.jigsaw trains the cells of one dense forward per step; unset {refused} (they would "
            "not see the cell embeddings)"
        )


def check_world(cfg: RunConfig, world: int) -> None:
    """One process: the montages shuffle patches within a rank's rows and the cells are not gathered."""
    if cfg.data.jigsaw is not None and world > 1:
        raise ConfigError(f"data.jigsaw trains on one process (the cells are not gathered), not {world}")


def cell_embeddings(model: DualEncoder, montages: torch.Tensor, grid: int) -> torch.Tensor:
    """``[B·G, d]``: the image projection of each g×g cell of the image tower's feature map of
    ``montages`` (``uint8 [B, 3, H, W]``), cell order of :func:`~contrastkit.losses.parts.jigsaw_cells`."""
    tower = model.towers["image"]
    if not hasattr(tower, "patch_tokens"):
        raise ConfigError(
            f"data.jigsaw needs the image tower's feature map; tower {type(tower).__name__} has none "
            "(use a timm tower)"
        )
    feats = tower.patch_tokens(montages).permute(0, 3, 1, 2)  # [B, H', W', C] -> [B, C, H', W']
    try:
        cells = jigsaw_cells(feats, grid)
    except InputError as err:
        raise InputError(
            f"data.jigsaw: {err}; use larger images or a tower with a finer feature map "
            "(timm kwargs output_stride: 8)"
        ) from None
    return model.projections["image"](cells)
