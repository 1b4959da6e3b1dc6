"""The data interface every source goes through: a :class:`PairSet` and a resumable loader.

A ``PairSet`` is an in-memory set of images (``uint8 [N, 3, H, W]``) with one or more captions
each, plus optional labelled classification tasks (for zero-shot evaluation). Batches are dicts
keyed by modality — ``{"image": uint8 [B, 3, H, W], "text": LongTensor [B, L]}`` — so models and
losses never depend on where the data came from.

The :class:`PairBatchSampler` makes a step-indexed, deterministic stream of batches: batch ``k``
depends only on ``(seed, k)``. Resuming at step ``k`` therefore reproduces the exact batches an
uninterrupted run would have seen, with any number of loader workers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from contrastkit.core.errors import InputError

__all__ = [
    "ClassTask",
    "PairBatchSampler",
    "PairDataset",
    "PairSet",
    "english_articles",
    "make_loader",
]

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
    """Images with captions (and optional class tasks). ``captions[i]`` lists image i's captions."""

    images: torch.Tensor
    captions: tuple[tuple[str, ...], ...]
    tasks: dict[str, ClassTask] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise InputError(
                f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.captions) != self.images.shape[0]:
            raise InputError(f"{len(self.captions)} caption lists for {self.images.shape[0]} images")
        if any(len(c) == 0 for c in self.captions):
            raise InputError("every image needs at least one caption")
        for tname, task in self.tasks.items():
            if len(task.labels) != len(self):
                raise InputError(f"task {tname!r} has {len(task.labels)} labels for {len(self)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: Sequence[int] | np.ndarray) -> PairSet:
        idx = np.asarray(index, dtype=np.int64)
        tasks = {
            k: ClassTask(t.classnames, t.templates, t.labels[idx], t.fix_articles)
            for k, t in self.tasks.items()
        }
        return PairSet(
            images=self.images[torch.from_numpy(idx)],
            captions=tuple(self.captions[i] for i in idx),
            tasks=tasks,
            name=self.name,
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


class PairDataset(Dataset):
    """Indexable view of a PairSet by ``(image index, caption index)`` pairs; with ``label_task``
    each item also carries that task's label (``-1`` entries become unique labels ``C + index``)."""

    def __init__(self, pairs: PairSet, label_task: str | None = None) -> None:
        self.pairs = pairs
        self.labels: torch.Tensor | None = None
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

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> dict[str, object]:
        idx = torch.tensor([k[0] for k in keys], dtype=torch.long)
        item: dict[str, object] = {
            "image": self.pairs.images[idx],
            "text": [self.pairs.captions[i][j] for i, j in keys],
        }
        if self.labels is not None:
            item["labels"] = self.labels[idx]
        return item


class PairBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite, deterministic, resumable stream of batches of ``(image, caption)`` indices.

    Each epoch is a fresh permutation drawn from ``default_rng([seed, epoch])`` with one random
    caption per image; the last incomplete batch of an epoch is dropped (contrastive losses want
    full batches). ``start`` is the number of batches already consumed. With ``shard=(r, D)``
    it yields rank r's contiguous slice of each global batch (``batch_size`` is the global,
    contrastive batch and must divide by D): every rank walks the same global stream.
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
            yield list(zip(cached[0][sl].tolist(), cached[1][sl].tolist()))
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite
        return 2**62


def make_loader(
    pairs: PairSet,
    tokenize: Callable[[list[str]], torch.Tensor],
    batch_size: int,
    seed: int,
    start: int = 0,
    num_workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    label_task: str | None = None,
) -> DataLoader:
    """Infinite loader of ``{"image": uint8, "text": token ids}`` batches starting at batch ``start``
    (this rank's shard of each global batch of ``batch_size``)."""

    def collate(item: dict[str, object]) -> Batch:
        out = {**item, "text": tokenize(item["text"])}  # type: ignore[arg-type]
        return out  # type: ignore[return-value]

    sampler = PairBatchSampler([len(c) for c in pairs.captions], batch_size, seed, start, shard)
    return DataLoader(
        PairDataset(pairs, label_task),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
