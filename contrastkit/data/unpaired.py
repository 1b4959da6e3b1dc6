"""D-MEDCLIP-SAMPLER (``mode="independent"``) — image–text pairs drawn across an image-only and a
text-only labelled set, with soft targets from label overlap.

Paper: Wang, Wu, Agarwal, Sun 2022 (EMNLP), "MedCLIP: Contrastive Learning from Unpaired Medical
Images and Text". Reference: RyanWangZf/MedCLIP ``medclip/dataset.py``, ``medclip/losses.py``.
The independent mode is spec form (the paper's decoupling); the targets are the reference's.

The two sets, image-only ``I`` and text-only ``T``, come either from

* **one labelled source**, split once per seed: a permutation from ``default_rng([seed, tag, 0])``,
  the first ``round(n · image_fraction)`` items (default ½) are ``I`` (captions never used), the
  rest ``T`` (images never used) — so no original pair is ever seen; or
* **two sources** (``data.sources``, exactly two): every item of source ``image_source`` (default
  0) is in ``I``, every item of the other in ``T`` (a text-only table may have no image column;
  the image table's captions are never read). Class tasks are matched by *name*, classes by
  *class name* (the union of both sources' class names, so the two tables need not list the same
  classes or in the same order); a task missing from either source is an error.

Global batch ``k`` takes chunk ``k`` of an epoch stream of ``I`` (images) and chunk ``k`` of an
independent epoch stream of ``T`` (one random caption each); row ``i`` pairs image ``I_k[i]``
with caption ``T_k[i]``, which is *not* its caption: the target comes from labels. Label vectors
over the class tasks ``tasks`` (concatenated one-hots; a label −1 gives zeros for that task):
``a_i`` of the image, ``u_j`` of the caption's item. The batch carries them per sample,

``image_labels [b, C] = A``, ``text_labels [b, C] = U`` (float32, ``C = Σ_t C_t``),

and the ``medclip`` loss forms ``G = A Uᵀ`` (``G_ij`` = number of tasks on which image ``i`` and
caption ``j`` agree; no clamp), ``T^{i2t} = softmax_row(G)``, ``T^{t2i} = softmax_row(Gᵀ)``
(τ = 1). All-zero rows give uniform targets (allowed). Because the fields are per sample, a
cross-process loss (``GatherAllLoss``) gathers them with the embeddings and ``G`` spans the
global batch: D processes give the single-process loss and gradients (tested on 2 gloo ranks).

Deterministic in ``(seed, step)`` (``start`` resumes exactly); ``shard=(rank, world)`` takes the
rank's contiguous rows of both streams. Keys are ``(image, 0)`` for one source and
``(image_source, image, 0)`` for two (the mixture's keys).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

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
    "matched_label_vectors",
    "split_items",
    "unpaired_sampler",
]

UNPAIRED_FIELDS = ("image_labels", "text_labels")  # what the batches add for the loss
_TAG = 0x4D43  # unpaired draws: default_rng([seed, _TAG, …])


def _check_names(tasks: Mapping[str, ClassTask], names: Sequence[str], where: str = "") -> None:
    if not names:
        raise ConfigError("unpaired_labels needs at least one class task in tasks")
    for name in names:
        if name not in tasks:
            raise ConfigError(f"unpaired_labels: no class task {name!r}{where}; it has {sorted(tasks)}")


def _onehot(labels: np.ndarray, columns: np.ndarray, width: int) -> np.ndarray:
    """Rows ``e_{columns[label]}`` (zeros for label −1)."""
    out = np.zeros((len(labels), width), dtype=np.float32)
    known = labels >= 0
    out[np.flatnonzero(known), columns[labels[known]]] = 1.0
    return out


def label_vectors(tasks: Mapping[str, ClassTask], names: Sequence[str]) -> np.ndarray:
    """``float32 [n, Σ C_t]``: for each item the concatenated one-hot labels of the tasks ``names``
    (zeros for a task whose label is −1)."""
    _check_names(tasks, names)
    blocks = []
    for name in names:
        t = tasks[name]
        blocks.append(_onehot(t.labels, np.arange(len(t.classnames)), len(t.classnames)))
    return np.concatenate(blocks, axis=1)


def matched_label_vectors(
    image_tasks: Mapping[str, ClassTask], text_tasks: Mapping[str, ClassTask], names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(A, U)``, ``float32 [n_img, C]`` and ``[n_txt, C]``, of two sources whose tasks are matched
    by name and classes by class name: per task the columns are the image source's class names,
    then the text source's that the image source lacks (two tables label the same class the same
    way whatever the order their values first appear in)."""
    _check_names(image_tasks, names, " in the image source")
    _check_names(text_tasks, names, " in the text source")
    a_blocks, u_blocks = [], []
    for name in names:
        ti, tt = image_tasks[name], text_tasks[name]
        classes = list(dict.fromkeys([*ti.classnames, *tt.classnames]))
        col = {c: k for k, c in enumerate(classes)}
        a_blocks.append(_onehot(ti.labels, np.array([col[c] for c in ti.classnames]), len(classes)))
        u_blocks.append(_onehot(tt.labels, np.array([col[c] for c in tt.classnames]), len(classes)))
    return np.concatenate(a_blocks, axis=1), np.concatenate(u_blocks, axis=1)


def split_items(n: int, image_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted ``(image_items, text_items)``: a permutation from ``default_rng([seed, tag])``,
    the first ``round(n · image_fraction)`` items image-only, the rest text-only."""
    perm = np.random.default_rng([seed, _TAG, 0]).permutation(n)
    k = round(n * image_fraction)
    return np.sort(perm[:k]), np.sort(perm[k:])


class UnpairedTexts:
    """The sampler's batch transform: replace each row's caption by the text-only item's caption of
    the same global row and add ``image_labels`` / ``text_labels`` (module docstring). Picklable."""

    def __init__(
        self,
        captions: Sequence[Sequence[str]],
        image_labels: np.ndarray,
        text_labels: np.ndarray,
        texts: ChunkStream,
        images: ChunkStream,
    ) -> None:
        self.captions, self.texts, self.images = captions, texts, images
        self.image_labels, self.text_labels = image_labels, text_labels

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
        batch["image_labels"] = torch.from_numpy(np.ascontiguousarray(self.image_labels[img]))
        batch["text_labels"] = torch.from_numpy(np.ascontiguousarray(self.text_labels[txt]))
        return batch


class UnpairedSampler(Sampler[list[tuple[int, ...]]]):
    """Infinite batches of keys of the image-only set — ``(image, 0)``, or ``(image_source, image,
    0)`` for two sources; :attr:`transform` puts the text-only set's captions and both sides' label
    vectors in every batch (module docstring).

    ``image_items`` / ``text_items`` index the image source / the text source (the same source
    when ``image_source`` is None); ``captions`` and ``text_labels`` are the text source's,
    ``image_labels`` the image source's, all indexed by item."""

    def __init__(
        self,
        captions: Sequence[Sequence[str]],
        image_items: np.ndarray,
        text_items: np.ndarray,
        image_labels: np.ndarray,
        text_labels: np.ndarray,
        batch_size: int,
        seed: int,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
        image_source: int | None = None,
    ) -> None:
        if len(text_labels) != len(captions):
            raise InputError(
                f"unpaired_labels: {len(text_labels)} text label vectors for {len(captions)} items"
            )
        if batch_size % shard[1]:
            raise ConfigError(f"batch_size {batch_size} cannot be split into {shard[1]} equal shards")
        for what, pool in (("image-only", image_items), ("text-only", text_items)):
            if len(pool) < batch_size:
                raise ConfigError(
                    f"unpaired_labels: the {what} set has {len(pool)} items, fewer than one batch of "
                    f"{batch_size}"
                )
        self.image_items, self.text_items = np.asarray(image_items), np.asarray(text_items)
        # the image stream's caption draws are never used: only its permutation (drawn first) counts
        ones = np.ones(len(image_labels), dtype=np.int64)
        n_caps = np.fromiter((len(c) for c in captions), dtype=np.int64, count=len(captions))
        images = ChunkStream(self.image_items, ones, batch_size, [seed, _TAG, 1])
        texts = ChunkStream(self.text_items, n_caps, batch_size, [seed, _TAG, 2])
        a, u = (np.asarray(x, np.float32) for x in (image_labels, text_labels))
        self.transform = UnpairedTexts(captions, a, u, texts, images)
        self.batch_size, self.seed, self.start, self.shard = batch_size, seed, start, shard
        self.image_source = image_source

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        rank, world = self.shard
        local = self.batch_size // world
        src = () if self.image_source is None else (self.image_source,)
        k = self.start
        while True:
            img, _, _ = self.transform.rows(k, rank * local, local)
            yield SampledBatch([(*src, i, 0) for i in img.tolist()], k, rank * local, self.batch_size)
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite
        return 2**62


def unpaired_sampler(
    context: SamplerContext,
    tasks: tuple[str, ...],
    image_fraction: Fraction | None = None,
    image_source: Literal[0, 1] | None = None,
) -> Sampler:
    """Images of an image-only set × captions of a text-only set, soft targets from shared labels.

    MedCLIP's decoupled setting (:mod:`contrastkit.data.unpaired`): the batch fields
    ``image_labels`` / ``text_labels`` ``[b, C]`` give the ``medclip`` loss ``G = A Uᵀ``, the number
    of tasks on which image ``i`` and caption ``j`` agree, over the global batch.

    ``tasks``: the class tasks whose labels define the overlap (e.g. ``[shape, color]`` on Shapes:
    ``G_ij`` ∈ {0, 1, 2}). One source: it is split, ``image_fraction`` (default 0.5) of the items
    image-only, the rest text-only. Two ``data.sources``: source ``image_source`` (default 0) gives
    the images, the other the texts; tasks matched by name, classes by class name; the sources'
    weights are not used. Train with the ``medclip`` loss; ``data.label_task`` must be unset (its
    ``labels`` would be the image's, not the pair's).
    """
    c = context
    if c.label_task is not None:
        raise ConfigError(
            "sampler 'unpaired_labels' makes its targets from labels (batch fields image_labels, "
            f"text_labels); unset data.label_task ({c.label_task!r}): its labels would be the image's"
        )
    if not c.captions:
        raise ConfigError("sampler 'unpaired_labels' needs the captions in its SamplerContext (captions=...)")
    names = tuple(tasks)
    if c.weights is None:
        if image_source is not None:
            raise ConfigError(
                "unpaired_labels: image_source names one of two data.sources; this data has one"
            )
        fraction = 0.5 if image_fraction is None else image_fraction
        if not 0 < fraction < 1:
            raise ConfigError(f"unpaired_labels: image_fraction must lie in (0, 1), got {fraction}")
        labels = label_vectors(c.tasks, names)
        img, txt = split_items(len(c.captions[0]), fraction, c.seed)
        return UnpairedSampler(
            c.captions[0], img, txt, labels, labels, c.batch_size, c.seed, c.start, c.shard
        )
    if len(c.n_captions) != 2:
        raise ConfigError(
            f"sampler 'unpaired_labels' takes one source or two data.sources, got {len(c.n_captions)}"
        )
    if image_fraction is not None:
        raise ConfigError("unpaired_labels: image_fraction splits one source; two data.sources are not split")
    if len(c.source_tasks) != 2:
        raise ConfigError("sampler 'unpaired_labels' needs each source's class tasks (source_tasks=...)")
    i, t = (0, 1) if image_source in (None, 0) else (1, 0)
    a, u = matched_label_vectors(c.source_tasks[i], c.source_tasks[t], names)
    img, txt = np.arange(len(a)), np.arange(len(u))
    return UnpairedSampler(c.captions[t], img, txt, a, u, c.batch_size, c.seed, c.start, c.shard, i)
