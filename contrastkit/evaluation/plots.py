"""Figures: the image–text similarity matrix of a held-out batch, with the images and captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contrastkit.core.errors import InputError
from contrastkit.core.io import save_png

__all__ = ["plot_similarity"]


def plot_similarity(
    images: torch.Tensor | None,
    captions: list[str],
    sims: torch.Tensor,
    path: str | Path,
    title: str = "",
    row_kind: str = "image",
) -> Path:
    """Heat map of ``sims[i, j]`` = cos(image i, caption j), images as row labels (PNG, atomic).
    ``images=None`` (a set of another modality, ``row_kind``): rows are labelled ``<row_kind> i``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(captions)
    rows = n if images is None else images.shape[0]
    if rows != n or sims.shape != (n, n):
        raise InputError(f"need n images, n captions and an n×n matrix; got {rows}, {n}, {tuple(sims.shape)}")
    fig = plt.figure(figsize=(0.55 * n + 3.5, 0.55 * n + 3.5))
    ax = fig.add_axes([0.2, 0.32, 0.62, 0.62])
    # aspect="auto": the axes fill their box exactly, so the thumbnails line up with the rows
    im = ax.imshow(
        sims.numpy(), cmap="viridis", aspect="auto", vmin=float(sims.min()), vmax=float(sims.max())
    )
    ax.set_xticks(range(n), captions, rotation=70, ha="right", fontsize=7)
    ax.set_xlabel("caption j (text embedding)", fontsize=8)
    if images is None:
        ax.set_yticks(range(n), [f"{row_kind} {i}" for i in range(n)], fontsize=7)
        ax.set_ylabel(f"{row_kind} i", fontsize=8)
    else:
        ax.set_yticks([])
        # the thumbnails sit left of the axes: pad the label past them (their width, in points)
        thumb_pt = 0.62 / n * fig.get_figwidth() * 72
        ax.set_ylabel("image i (thumbnail)", fontsize=8, labelpad=thumb_pt + 4)
    for i in range(n):  # the images themselves as row labels
        if images is not None:
            h = 0.62 / n
            tax = fig.add_axes([0.2 - h - 0.005, 0.32 + 0.62 - (i + 1) * h, h, h])
            tax.imshow(images[i].permute(1, 2, 0).numpy())
            tax.axis("off")
        j = int(np.argmax(sims[i].numpy()))
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.2))
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="cosine similarity")
    ax.set_title(title or f"{row_kind}–text cosine similarity (red: best caption per {row_kind})", fontsize=9)
    return save_png(fig, path)
