"""D-MEDCLIP-SAMPLER (``mode="independent"``) — image–text pairs drawn across an image-only and a
text-only labelled set, with soft targets from label overlap.

Paper: Wang, Wu, Agarwal, Sun 2022 (EMNLP), "MedCLIP: Contrastive Learning from Unpaired Medical
Images and Text". Reference: RyanWangZf/MedCLIP ``medclip/dataset.py``, ``medclip/losses.py``.
The independent mode is spec form (the paper's decoupling); the targets are the reference's.

The items of one labelled source are split, once per seed, into two disjoint sets: an image-only
set ``I`` (a share ``image_fraction``, default ½) whose captions are never used, and a text-only
set ``T`` (the rest) whose images are never used — so no original pair is ever seen. Global batch
``k`` takes chunk ``k`` of an epoch stream of ``I`` (images) and chunk ``k`` of an independent
epoch stream of ``T`` (one random caption each); row ``i`` pairs image ``I_k[i]`` with caption
``T_k[i]``, which is *not* its caption: the target comes from labels. Label vectors over the class
tasks ``tasks`` (concatenated one-hots; a label −1 gives zeros for that task): ``a_i`` of the
image, ``u_j`` of the caption's item. The batch carries

``weights [b, b] = A Uᵀ`` (``G_ij`` = number of tasks on which image ``i`` and caption ``j``
agree; no clamp), which the ``medclip`` loss turns into ``T^{i2t} = softmax_row(G)``,
``T^{t2i} = softmax_row(Gᵀ)`` (τ = 1). All-zero rows give uniform targets (allowed).

Deterministic in ``(seed, step)`` (``start`` resumes exactly); ``shard=(rank, world)`` takes the
rank's contiguous rows, and ``weights`` is the rank's own ``[b, b]`` block — the medclip loss
with ``weights`` runs in one process (a gathered loss refuses pairwise fields).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Fraction
from contrastkit.data.batching import ChunkStream, SamplerContext
from contrastkit.data.pairs import ClassTask, SampledBatch

__all__ = [
    "UNPAIRED_FIELDS",
    "UnpairedSampler",
    "UnpairedTexts",
    "label_vectors",
    "split_items",
    "unpaired_sampler",
]

UNPAIRED_FIELDS = ("weights",)  # what the batches add for the loss
_TAG = 0x4D43  # unpaired draws: default_rng([seed, _TAG, …])


def label_vectors(tasks: Mapping[str, ClassTask], names: Sequence[str]) -> np.ndarray:
    """``float32 [n, Σ C_t]``: for each item the concatenated one-hot labels of the tasks ``names``
    (zeros for a task whose label is −1)."""
    if not names:
        raise ConfigError("unpaired_labels needs at least one class task in tasks")
    blocks = []
    for name in names:
        if name not in tasks:
            raise ConfigError(f"unpaired_labels: no class task {name!r}; this data has {sorted(tasks)}")
        t = tasks[name]
        onehot = np.zeros((len(t.labels), len(t.classnames)), dtype=np.float32)
        known = t.labels >= 0
        onehot[np.flatnonzero(known), t.labels[known]] = 1.0
        blocks.append(onehot)
    return np.concatenate(blocks, axis=1)


def split_items(n: int, image_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted ``(image_items, text_items)``: a permutation from ``default_rng([seed, tag])``,
    the first ``round(n · image_fraction)`` items image-only, the rest text-only."""
    perm = np.random.default_rng([seed, _TAG, 0]).permutation(n)
    k = round(n * image_fraction)
    return np.sort(perm[:k]), np.sort(perm[k:])


class UnpairedTexts:
    """The sampler's batch transform: replace each row's caption by the text-only item's caption of
    the same global row and add ``weights = A Uᵀ`` (module docstring). Picklable."""

    def __init__(
        self,
        captions: Sequence[Sequence[str]],
        labels: np.ndarray,
        texts: ChunkStream,
        images: ChunkStream,
    ) -> None:
        self.captions, self.labels, self.texts, self.images = captions, labels, texts, images

    def rows(self, step: int, offset: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image items, text items and their caption indices of rows ``offset … offset+b−1`` of
        global batch ``step``."""
        img, _ = self.images(step)
        txt, cap = self.texts(step)
        sl = slice(offset, offset + b)
        return img[sl], txt[sl], cap[sl]

    def __call__(self, batch: dict[str, object], seed: tuple[int, int, int] | None) -> dict[str, object]:
        if seed is None:
            raise InputError("unpaired_labels needs batches that carry their step (from its sampler)")
        _, step, offset = seed
        rows = batch.get("text", batch.get("image"))
        if rows is None:
            raise InputError("unpaired_labels needs image and text in the batch (data.modalities)")
        img, txt, cap = self.rows(int(step), int(offset), len(rows))  # type: ignore[arg-type]
        if "text" in batch:
            batch["text"] = [self.captions[t][c] for t, c in zip(txt.tolist(), cap.tolist())]
        g = self.labels[img] @ self.labels[txt].T
        batch["weights"] = torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32))
        return batch


class UnpairedSampler(Sampler[list[tuple[int, int]]]):
    """Infinite batches of ``(image item, 0)`` keys of the image-only set; :attr:`transform` puts the
    text-only set's captions and the label-overlap ``weights`` in every batch (module docstring)."""

    def __init__(
        self,
        captions: Sequence[Sequence[str]],
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
        image_fraction: float = 0.5,
    ) -> None:
        n = len(captions)
        if len(labels) != n:
            raise InputError(f"unpaired_labels: {len(labels)} label vectors for {n} items")
        if batch_size % shard[1]:
            raise ConfigError(f"batch_size {batch_size} cannot be split into {shard[1]} equal shards")
        self.image_items, self.text_items = split_items(n, image_fraction, seed)
        for what, pool in (("image-only", self.image_items), ("text-only", self.text_items)):
            if len(pool) < batch_size:
                raise ConfigError(
                    f"unpaired_labels: the {what} set has {len(pool)} items, fewer than one batch of "
                    f"{batch_size} (image_fraction={image_fraction}, {n} items)"
                )
        n_caps = np.fromiter((len(c) for c in captions), dtype=np.int64, count=n)
        images = ChunkStream(self.image_items, n_caps, batch_size, [seed, _TAG, 1])
        texts = ChunkStream(self.text_items, n_caps, batch_size, [seed, _TAG, 2])
        self.transform = UnpairedTexts(captions, np.asarray(labels, np.float32), texts, images)
        self.batch_size, self.seed, self.start, self.shard = batch_size, seed, start, shard

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rank, world = self.shard
        local = self.batch_size // world
        k = self.start
        while True:
            img, _, _ = self.transform.rows(k, rank * local, local)
            yield SampledBatch([(i, 0) for i in img.tolist()], k, rank * local, self.batch_size)
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite
        return 2**62


def unpaired_sampler(
    context: SamplerContext, tasks: tuple[str, ...], image_fraction: Fraction = 0.5
) -> Sampler:
    """Images of an image-only half × captions of a text-only half, soft targets from shared labels.

    MedCLIP's decoupled setting (:mod:`contrastkit.data.unpaired`): the batch field ``weights``
    ``G = A Uᵀ`` counts the tasks on which image ``i`` and caption ``j`` agree.

    ``tasks``: the class tasks whose labels define the overlap ``G = A Uᵀ`` (e.g. ``[shape,
    color]`` on Shapes: ``G_ij`` ∈ {0, 1, 2}); ``image_fraction``: the share of items in the
    image-only set (the rest is text-only). One source; train with the ``medclip`` loss (it reads
    the batch field ``weights``); ``data.label_task`` must be unset (its ``labels`` would be the
    image's, not the pair's).
    """
    c = context
    if c.weights is not None:
        raise ConfigError("sampler 'unpaired_labels' splits one source; it does not take data.sources")
    if c.label_task is not None:
        raise ConfigError(
            "sampler 'unpaired_labels' makes its targets from labels (batch field weights); unset "
            f"data.label_task ({c.label_task!r}): its labels would be the image's, not the pair's"
        )
    if not c.captions:
        raise ConfigError("sampler 'unpaired_labels' needs the captions in its SamplerContext (captions=...)")
    if not 0 < image_fraction < 1:
        raise ConfigError(f"unpaired_labels: image_fraction must lie in (0, 1), got {image_fraction}")
    labels = label_vectors(c.tasks, tuple(tasks))
    return UnpairedSampler(c.captions[0], labels, c.batch_size, c.seed, c.start, c.shard, image_fraction)
