"""MLCD's k-means prototypes from a trained run: embed a split's images, cluster, save the centres.

What: the ``mlcd`` loss (L-MLCD, :mod:`contrastkit.losses.mlcd`) needs K cluster centres of a
*pretrained* model's embeddings. :func:`fit_run_prototypes` loads a run folder (its config and
checkpoint), embeds the images of one of its data splits with the run's image tower
(L2-normalised, no gradient, batches of ``batch_size``), fits seeded k-means
(:func:`~contrastkit.losses.mlcd.fit_prototypes`) and writes the ``[K, d]`` centres with
:func:`~contrastkit.losses.mlcd.save_prototypes`. A later run then selects them from its config::

    loss: {name: mlcd, params: {prototypes_file: runs/pretrained/protos.pt, num_positives: 8}}

Protocol and exactness: the centres are a deterministic function of (run checkpoint, split,
``max_images``, k, iters, seed): the first ``max_images`` images of the split in order, then
k-means initialised by ``randperm`` from ``seed``. The file holds a plain float32 tensor, read with
``torch.load(weights_only=True)``. The embedding width must equal the new run's (``model.embed_dim``).
Related: :mod:`contrastkit.evaluation.encoders`, :mod:`contrastkit.losses.mlcd`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from contrastkit.core.errors import InputError
from contrastkit.data.loading import load_split
from contrastkit.evaluation.multistage import run_encoders
from contrastkit.losses.mlcd import save_prototypes

__all__ = ["fit_run_prototypes"]


def fit_run_prototypes(
    run_dir: str | Path,
    out: str | Path,
    k: int,
    *,
    split: str | None = None,
    max_images: int | None = None,
    iters: int = 20,
    seed: int = 0,
    batch_size: int = 256,
) -> torch.Tensor:
    """K-means centres ``[k, d]`` of the run's image embeddings of ``split`` (default: the run's
    training split), written to ``out`` and returned (module docstring)."""
    cfg, _, _, enc, _ = run_encoders(run_dir, batch_size)
    name = split or cfg.data.train_split
    pairs = load_split(cfg.data, name)
    if pairs.images is None:
        raise InputError(f"split {name!r} of {run_dir} has no images to cluster")
    images = pairs.images if max_images is None else pairs.images[:max_images]
    if images.shape[0] < k:
        raise InputError(f"split {name!r} has {images.shape[0]} images, fewer than k={k} prototypes")
    return save_prototypes(enc.images(images), out, k, iters, seed)
