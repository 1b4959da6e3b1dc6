"""The data interface every source goes through: a :class:`PairSet` and a resumable loader.

A ``PairSet`` is an in-memory set of images (``uint8 [N, 3, H, W]``) with one or more captions
each, optional labelled classification tasks (for zero-shot evaluation) and an optional float
``attributes`` vector per image (a third modality, e.g. Shapes' one-hot scene description).
Batches are dicts keyed by modality — ``{"image": uint8 [B, 3, H, W], "text": LongTensor [B, L],
"attributes": float32 [B, D]}`` — plus augmented views ``"image@0" … "image@{V-1}"`` when asked
for, so models and losses never depend on where the data came from (docs/architecture.md).

The :class:`PairBatchSampler` makes a step-indexed, deterministic stream of batches: batch ``k``
depends only on ``(seed, k)`` — its augmented views too. Resuming at step ``k`` therefore
reproduces the exact batches an uninterrupted run would have seen, with any number of loader
workers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from contrastkit.core.concepts import caption_vocabulary, concept_targets, unknown_entries
from contrastkit.core.errors import InputError
from contrastkit.data.augment import AugmentConfig, make_views
from contrastkit.data.jigsaw import JigsawConfig, jigsaw_batch
from contrastkit.data.relations import RELATION_KEY, Relations
from contrastkit.data.signals import check_presence, check_signal, present_key, variant_rows

__all__ = [
    "INDEX_KEY",
    "MODALITIES",
    "SEED_KEY",
    "ClassTask",
    "PairBatchSampler",
    "PairDataset",
    "PairSet",
    "SampledBatch",
    "english_articles",
    "pair_offsets",
]

MODALITIES = ("image", "text", "attributes")  # what every PairSet may put in a batch (plus its signals)
SEED_KEY = "_seed"  # batch field: the integers that seed this batch's text augmentation
INDEX_KEY = "_pair"  # batch field (when asked for): each row's flat (image, caption) pair index

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClassTask:
    """A labelled classification task over a PairSet, for zero-shot evaluation.

    ``labels[i]`` is the class index of image ``i`` or ``-1`` when the task does not apply to it
    (e.g. a two-object Shapes image has no single colour). A class embedding averages the
    normalised text embeddings of its prompts ``template.format(name)`` over ``templates``;
    ``fix_articles`` turns "a orange" into "an orange" in the prompts.
    """

    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    labels: np.ndarray
    fix_articles: bool = False

    def prompts(self) -> list[list[str]]:
        """For each class, its prompts (one per template)."""
        fix = english_articles if self.fix_articles else (lambda s: s)
        return [[fix(t.format(name)) for t in self.templates] for name in self.classnames]

    def __post_init__(self) -> None:
        if not self.classnames:
            raise InputError("a ClassTask needs at least one class")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise InputError(f"every template must contain '{{}}', got {self.templates}")
        if self.labels.ndim != 1 or (self.labels >= len(self.classnames)).any():
            raise InputError("labels must be a 1-D array of class indices (or -1)")


@dataclass(frozen=True)
class PairSet:
    """Images with captions (and optional class tasks). ``captions[i]`` lists image i's captions.

    ``attributes``: optional ``float32 [N, D]`` vector per image (batch key ``"attributes"``);
    ``attribute_names``: what each of its D entries means (empty or D names).
    ``images`` may be ``None``: a set of other modalities with captions (sensor series, vectors).
    ``signals``: further modalities by name, float ``[N, V, …]`` (V variants per sample);
    ``signal_index``: for a signal shared by many samples (spoken captions repeat with the
    caption), int64 ``[N]`` rows into ``signals[m]`` of ``[U, V, …]`` — sample i's is row
    ``signal_index[m][i]`` (what :meth:`signal` reads); ``present``: ``{modality: bool [N]}`` for
    modalities some samples lack (:mod:`contrastkit.data.signals`).
    """

    images: torch.Tensor | None
    captions: tuple[tuple[str, ...], ...]
    tasks: dict[str, ClassTask] = field(default_factory=dict)
    name: str = ""
    attributes: torch.Tensor | None = None
    attribute_names: tuple[str, ...] = ()
    signals: Mapping[str, torch.Tensor] = field(default_factory=dict)
    present: Mapping[str, torch.Tensor] = field(default_factory=dict)
    signal_index: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        im = self.images
        if im is not None and (im.dtype != torch.uint8 or im.ndim != 4 or im.shape[1] != 3):
            raise InputError(f"images must be uint8 [N, 3, H, W], got {im.dtype} {tuple(im.shape)}")
        if im is not None and not im.is_contiguous():  # a channels-last view would change conv kernels
            object.__setattr__(self, "images", im.contiguous())
        if im is not None and len(self.captions) != im.shape[0]:
            raise InputError(f"{len(self.captions)} caption lists for {im.shape[0]} images")
        if any(len(c) == 0 for c in self.captions):
            raise InputError("every image needs at least one caption")
        for tname, task in self.tasks.items():
            if len(task.labels) != len(self):
                raise InputError(f"task {tname!r} has {len(task.labels)} labels for {len(self)} images")
        a = self.attributes
        if a is not None:
            if a.ndim != 2 or a.shape[0] != len(self) or not a.is_floating_point():
                raise InputError(
                    f"attributes must be a float [N={len(self)}, D] tensor, got {a.dtype} {tuple(a.shape)}"
                )
            if self.attribute_names and len(self.attribute_names) != a.shape[1]:
                raise InputError(f"{len(self.attribute_names)} attribute names for {a.shape[1]} attributes")
        for m, values in self.signals.items():
            check_signal(m, values, len(self), self.signal_index.get(m))
        stray = sorted(set(self.signal_index) - set(self.signals))
        if stray:
            raise InputError(f"signal_index names {stray}, which are not signals of the set")
        check_presence(self.present, self.modalities, len(self))

    def signal(
        self, m: str, rows: torch.Tensor | None = None, seed: tuple[int, int, int] | None = None
    ) -> torch.Tensor:
        """Samples ``rows`` (default all) of signal ``m``, one variant each: variant 0 without a
        ``seed``, else drawn per batch row (:func:`~contrastkit.data.signals.variant_rows`)."""
        idx = torch.arange(len(self)) if rows is None else rows
        index = self.signal_index.get(m)
        return variant_rows(self.signals[m], idx if index is None else index[idx], seed)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The batch keys this set can fill: ``image`` (if it has images), ``text``,
        ``attributes`` (if any) and its signals."""
        own = (
            ("image",) * (self.images is not None)
            + ("text",)
            + ("attributes",) * (self.attributes is not None)
        )
        return own + tuple(self.signals)

    def image_tensor(self) -> torch.Tensor:
        """The images, or an :class:`InputError` for a set without images (what image tasks call)."""
        if self.images is None:
            raise InputError(
                f"{self.name or 'this data set'} has no images (modalities {list(self.modalities)}); "
                "evaluate it with tasks over its own modalities (cross_modal)"
            )
        return self.images

    def subset(self, index: Sequence[int] | np.ndarray) -> PairSet:
        idx = np.asarray(index, dtype=np.int64)
        tasks = {
            k: ClassTask(t.classnames, t.templates, t.labels[idx], t.fix_articles)
            for k, t in self.tasks.items()
        }
        rows = torch.from_numpy(idx)
        return PairSet(
            images=None if self.images is None else self.images[rows],
            captions=tuple(self.captions[i] for i in idx),
            tasks=tasks,
            name=self.name,
            attributes=None if self.attributes is None else self.attributes[rows],
            attribute_names=self.attribute_names,
            signals={m: v if m in self.signal_index else v[rows] for m, v in self.signals.items()},
            present={m: v[rows] for m, v in self.present.items()},
            signal_index={m: v[rows] for m, v in self.signal_index.items()},
        )

    def flat_captions(self) -> tuple[list[str], np.ndarray]:
        """All captions in order, and for each the index of its image (for retrieval)."""
        texts = [c for caps in self.captions for c in caps]
        owner = np.repeat(np.arange(len(self)), [len(c) for c in self.captions])
        return texts, owner


_A_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def english_articles(text: str) -> str:
    """Replace "a" by "an" before a vowel ("a orange star" → "an orange star")."""
    return _A_AN.sub(lambda m: m.group(1) + "n ", text)


class SampledBatch(list):
    """A batch of ``(image, caption)`` index pairs that knows where it sits in the stream:
    ``step`` (global batch index), ``offset`` (first row of this shard in the global batch) and
    ``total`` (global batch size). Augmented views are seeded from these. Compares equal to the
    plain list of its pairs."""

    def __init__(self, pairs: Sequence[tuple[int, int]], step: int, offset: int, total: int) -> None:
        super().__init__(pairs)
        self.step, self.offset, self.total = step, offset, total


class PairDataset(Dataset):
    """Indexable view of a PairSet by ``(image index, caption index)`` pairs; with ``label_task``
    each item also carries that task's label (``-1`` entries become unique labels ``C + index``).

    ``modalities``: which of ``image`` / ``text`` / ``attributes`` go in a batch (``attributes``
    needs a PairSet that has them). ``views ≥ 1`` adds ``"image@0" … "image@{views-1}"``:
    augmentations (``augment``) of the images seeded by ``(seed, batch step, view, row)``; keys
    must then come from :class:`PairBatchSampler` (a :class:`SampledBatch` knows its step).
    ``concepts``: add ``targets`` — the sampled caption's multi-hot concepts over
    :attr:`vocabulary`, the sorted non-stop-words of all the set's captions.

    ``unknown_share`` (an attribute, 0 by default; ``data.concepts_unknown``): that share of each
    image's concept entries is −1 = unknown (:func:`contrastkit.core.concepts.unknown_entries`,
    seeded by the image index, so an image misses the same labels in every batch).

    ``relations`` (an attribute, ``None`` by default; ``data.relations``): add ``relation`` texts and
    relation-group ``labels`` (:mod:`contrastkit.data.relations`).

    ``jigsaw`` (an attribute, ``None`` by default; ``data.jigsaw``): ``image`` becomes the batch's
    montages, with ``labels`` / ``positions`` per cell (:func:`contrastkit.data.jigsaw.jigsaw_batch`).

    ``pair_index`` (an attribute, off by default; the trainer sets it for per-pair state such as
    noisy-pair weights): add ``_pair`` — int64 ``[B]``, each row's flat pair index
    ``first_caption[i] + j`` (the order of :meth:`PairSet.flat_captions`), after substitutions.
    """

    pair_index: bool = False
    unknown_share: float = 0.0  # data.concepts_unknown: share of each image's concepts marked −1
    relations: Relations | None = None  # data.relations: a relation text and group labels per row
    jigsaw: JigsawConfig | None = None  # data.jigsaw: montages, cell labels and positions

    def __init__(
        self,
        pairs: PairSet,
        label_task: str | None = None,
        modalities: Sequence[str] = ("image", "text"),
        views: int = 0,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        concepts: bool = False,
    ) -> None:
        self.pairs = pairs
        self.vocabulary = caption_vocabulary(pairs.captions) if concepts else None
        self.labels: torch.Tensor | None = None
        available = getattr(pairs, "modalities", ("image", "text"))
        missing = [m for m in modalities if m not in available]
        if "attributes" in missing:
            raise InputError(f"{pairs.name or 'this data set'} has no attributes to put in batches")
        if missing:
            raise InputError(
                f"{pairs.name or 'this data set'} has no modalities {missing} to put in batches; "
                f"it has {list(available)}"
            )
        if views and "image" not in available:
            raise InputError(f"augmented views need images; {pairs.name or 'this data set'} has none")
        if views < 0:
            raise InputError(f"views must be >= 0, got {views}")
        self.modalities = tuple(modalities)
        self.views = views
        self.augment = augment or AugmentConfig()
        self.seed = seed
        if label_task is not None:
            if label_task not in pairs.tasks:
                raise InputError(
                    f"label_task {label_task!r} not in {pairs.name}'s tasks {sorted(pairs.tasks)}"
                )
            task = pairs.tasks[label_task]
            lab = task.labels.copy()
            missing = lab < 0
            lab[missing] = len(task.classnames) + np.flatnonzero(missing)
            self.labels = torch.from_numpy(lab)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, object]:
        return self.__getitems__([key])

    def _load(
        self, keys: Sequence[tuple[int, int]]
    ) -> tuple[Sequence[tuple[int, int]], torch.Tensor, dict[str, object]]:
        """The keys actually used, their images, and extra batch fields. File-backed subclasses
        decode here, may substitute unusable samples and add fields (extra columns, skip counts)."""
        images = self.pairs.images
        idx = torch.tensor([k[0] for k in keys], dtype=torch.long)
        return keys, (images[idx] if images is not None else torch.empty(0)), {}

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> dict[str, object]:
        keys, images, item = self._load(keys)
        idx = torch.tensor([k[0] for k in keys], dtype=torch.long)
        seed = (self.seed, keys.step, keys.offset) if isinstance(keys, SampledBatch) else None
        if "image" in self.modalities:
            item["image"] = images
        if "text" in self.modalities:
            item["text"] = [self.pairs.captions[i][j] for i, j in keys]
        if "attributes" in self.modalities:
            item["attributes"] = self.pairs.attributes[idx]  # type: ignore[index]
        for m in self.modalities:
            if m in getattr(self.pairs, "signals", {}):
                item[m] = self.pairs.signal(m, idx, seed)
        _mask_absent(item, getattr(self.pairs, "present", {}), self.modalities, idx)
        if self.views:
            if not isinstance(keys, SampledBatch):
                raise InputError("augmented views need batches from PairBatchSampler (they know their step)")
            item.update(
                make_views(images, self.views, self.augment, self.seed, keys.step, keys.offset, keys.total)
            )
        if self.jigsaw is not None:  # seeded like the views: a resumed run sees the same montages
            if not isinstance(keys, SampledBatch):
                raise InputError("data.jigsaw needs batches from PairBatchSampler (they know their step)")
            item.update(jigsaw_batch(images, self.jigsaw.grid, self.seed, keys.step, keys.offset))
        if isinstance(keys, SampledBatch):  # seeds per-batch text augmentation (Collate)
            item[SEED_KEY] = (self.seed, keys.step, keys.offset)
        if self.labels is not None:
            item["labels"] = self.labels[idx]
        if self.relations is not None:
            if not isinstance(keys, SampledBatch):
                raise InputError("data.relations needs batches from PairBatchSampler (they know their step)")
            item[RELATION_KEY], item["labels"] = self.relations.batch(idx, self.seed, keys.step, keys.offset)
        if self.vocabulary is not None:
            targets = concept_targets([self.pairs.captions[i][j] for i, j in keys], self.vocabulary)
            if self.unknown_share:  # partial labels: the same entries of an image in every batch
                hidden = unknown_entries(idx.numpy(), len(self.vocabulary), self.unknown_share, self.seed)
                targets[hidden] = -1.0
            item["targets"] = targets
        if self.pair_index:
            first = self.__dict__.get("_first")
            if first is None:  # once per dataset (and worker): the caption counts do not change
                first = self.__dict__["_first"] = pair_offsets(self.pairs.captions)
            item[INDEX_KEY] = torch.tensor([int(first[i]) + j for i, j in keys], dtype=torch.long)
        return item


def _mask_absent(
    item: dict[str, object], present: Mapping[str, torch.Tensor], modalities: Sequence[str], idx: torch.Tensor
) -> None:
    """Add ``present:<m>`` for each batched modality with a mask and blank its absent rows (zeros,
    or the empty caption), so an absent input cannot leak into the model."""
    for m in modalities:
        if m not in present:
            continue
        mask = present[m][idx]
        item[present_key(m)] = mask
        if bool(mask.all()):
            continue
        if m == "text":
            item[m] = [t if ok else "" for t, ok in zip(item[m], mask.tolist(), strict=True)]  # type: ignore[arg-type]
        else:
            x = item[m].clone()  # type: ignore[union-attr]
            x[~mask] = 0
            item[m] = x


def pair_offsets(captions: Sequence[Sequence[str]]) -> np.ndarray:
    """The flat pair index of each image's first caption (``cumsum`` of caption counts, from 0)."""
    counts = np.fromiter((len(c) for c in captions), dtype=np.int64, count=len(captions))
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


class PairBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite, deterministic, resumable stream of batches of ``(image, caption)`` indices.

    Each epoch is a fresh permutation drawn from ``default_rng([seed, epoch])`` with one random
    caption per image; the last incomplete batch of an epoch is dropped (contrastive losses want
    full batches). ``start`` is the number of batches already consumed. With ``shard=(r, D)``
    it yields rank r's contiguous slice of each global batch (``batch_size`` is the global,
    contrastive batch and must divide by D): every rank walks the same global stream. Batches are
    :class:`SampledBatch` lists (they carry their step and rows for seeding augmentations).
    """

    def __init__(
        self,
        n_captions: Sequence[int],
        batch_size: int,
        seed: int,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        n = len(n_captions)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if n < batch_size:
            raise InputError(f"data set has {n} items, fewer than one batch of {batch_size}")
        rank, world = shard
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise InputError(
                f"batch_size {batch_size} cannot be split into {world} equal shards (rank {rank})"
            )
        self.shard = shard
        self.n_captions = np.asarray(n_captions, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.start = start
        self.batches_per_epoch = n // batch_size

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.n_captions))
        caps = (rng.random(len(perm)) * self.n_captions[perm]).astype(np.int64)
        return perm, caps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        k = self.start
        epoch, cached = -1, (np.empty(0, np.int64), np.empty(0, np.int64))
        while True:
            e, b = divmod(k, self.batches_per_epoch)
            if e != epoch:
                epoch, cached = e, self._epoch(e)
            local = self.batch_size // self.shard[1]
            lo = b * self.batch_size + self.shard[0] * local
            sl = slice(lo, lo + local)
            pairs = zip(cached[0][sl].tolist(), cached[1][sl].tolist())
            yield SampledBatch(pairs, step=k, offset=self.shard[0] * local, total=self.batch_size)
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite
        return 2**62
