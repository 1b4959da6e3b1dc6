"""Class-structured batches: ``m`` examples of each of ``c`` classes per batch, and batch binding.

:class:`ClassMixSampler` — the "m per class" sampler supervised contrastive losses want: every
global batch holds ``classes_per_batch`` classes × ``per_class`` examples of a class task (items
the task does not cover are never drawn, and classes without items are left out: ``C`` counts the
classes that have items). Classes come in rounds: round ``r`` is a permutation of
the ``C`` classes from ``default_rng([seed, tag, r])``, cut into ``⌊C/c⌋`` batches of ``c``
classes (the remaining classes sit that round out), so every class is drawn about equally often
(class-balanced: items of small classes recur more often than those of large ones). Within a
class, examples come from its own :class:`~contrastkit.data.batching.ChunkStream` (epochs of
that class's items, ``per_class`` distinct items a draw). The rows of a batch are shuffled (a
permutation seeded by the step) before ranks take their contiguous slices, so every rank sees
a mix of classes.

:class:`BatchBindingSampler` — D-BATCH-BINDING (Kini, Vakilian, Behnia, Gill, Thrampoulidis
2024, "Symmetric Neural-Collapse Representations with Supervised Contrastive Loss: The Impact
of ReLU and Batching", Sec. 5.2): a binding set ``S`` of one example per class, chosen once
(or every epoch with ``rebind_each_epoch``), is appended to every batch of a base sampler; an
element of ``S`` already in the batch is not added twice, so a batch has
``B + k − |S ∩ batch|`` rows. Varying sizes cannot be split into equal rank shards: one process.

Both are functions of ``(seed, step)`` only, so resuming at ``start`` is exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from contrastkit.core.errors import ConfigError
from contrastkit.data.batching import ChunkStream
from contrastkit.data.pairs import SampledBatch

__all__ = ["BatchBindingSampler", "ClassMixSampler", "binding_set"]

_TAG = 0x434D  # class_mix draws: default_rng([seed, _TAG, …]) — apart from every other stream
_BIND = 0x4242  # batch binding draws


def _class_name(c: int, classnames: Sequence[str]) -> str:
    return f"class {c} ({classnames[c]!r})" if c < len(classnames) else f"class {c}"


class ClassMixSampler(Sampler[list[tuple[int, int]]]):
    """Infinite batches of ``classes_per_batch × per_class`` ``(image, caption)`` keys (module
    docstring). ``labels[i]``: class of item ``i`` in ``0 … n_classes−1``, or ``−1`` (never drawn)."""

    def __init__(
        self,
        n_captions: Sequence[int] | np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        batch_size: int,
        seed: int,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
        per_class: int = 2,
        classes_per_batch: int | None = None,
        classnames: Sequence[str] = (),
    ) -> None:
        cpb = classes_per_batch if classes_per_batch is not None else batch_size // per_class
        if cpb * per_class != batch_size:
            raise ConfigError(
                f"class_mix: classes_per_batch={cpb} × per_class={per_class} = {cpb * per_class} rows, "
                f"but the batch has {batch_size}; choose numbers that multiply to train.batch_size"
            )
        if batch_size % shard[1]:
            raise ConfigError(f"batch_size {batch_size} cannot be split into {shard[1]} equal shards")
        labels = np.asarray(labels, dtype=np.int64)
        caps = np.asarray(n_captions, dtype=np.int64)
        # a class without items is absent from this data (e.g. Shapes' held-out colour–shape
        # combinations in train): it is left out, as if the task did not name it
        self.classes = np.asarray([c for c in range(n_classes) if (labels == c).any()], dtype=np.int64)
        if cpb > len(self.classes):
            raise ConfigError(
                f"class_mix: classes_per_batch={cpb} but the task has only {len(self.classes)} classes "
                "with items"
            )
        self.streams: dict[int, ChunkStream] = {}
        for c in self.classes.tolist():
            members = np.flatnonzero(labels == c)
            if len(members) < per_class:
                raise ConfigError(
                    f"class_mix: {_class_name(c, classnames)} has {len(members)} item(s), fewer than "
                    f"per_class={per_class}"
                )
            self.streams[c] = ChunkStream(members, caps, per_class, [seed, _TAG, 1, c])
        self.n_classes, self.cpb, self.per_class = n_classes, cpb, per_class
        self.batch_size, self.seed, self.start, self.shard = batch_size, seed, start, shard
        self.rounds = len(self.classes) // cpb  # batches per round of classes
        self._perm: tuple[int, np.ndarray] | None = None

    def _round(self, r: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != r:
            perm = np.random.default_rng([self.seed, _TAG, 0, r]).permutation(len(self.classes))
            self._perm = (r, self.classes[perm])
        return self._perm[1]

    def _counts_before(self, k: int) -> np.ndarray:
        """How many chunks of each class the batches ``0 … k−1`` took."""
        r, b = divmod(k, self.rounds)
        used = self.rounds * self.cpb
        if used == len(self.classes):  # every class is drawn once per round: no need to replay
            counts = np.zeros(self.n_classes, dtype=np.int64)
            counts[self.classes] = r
        else:
            counts = np.zeros(self.n_classes, dtype=np.int64)
            for past in range(r):
                counts[self._round(past)[:used]] += 1
        counts[self._round(r)[: b * self.cpb]] += 1
        return counts

    def batch_classes(self, k: int) -> np.ndarray:
        """The classes of global batch ``k``."""
        r, b = divmod(k, self.rounds)
        return self._round(r)[b * self.cpb : (b + 1) * self.cpb]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        counts = self._counts_before(self.start)
        rank, world = self.shard
        local = self.batch_size // world
        k = self.start
        while True:
            rows: list[tuple[int, int]] = []
            for c in self.batch_classes(k).tolist():
                items, caps = self.streams[c](int(counts[c]))
                counts[c] += 1
                rows.extend(zip(items.tolist(), caps.tolist()))
            order = np.random.default_rng([self.seed, _TAG, 2, k]).permutation(self.batch_size)
            rows = [rows[i] for i in order]
            yield SampledBatch(rows[rank * local : (rank + 1) * local], k, rank * local, self.batch_size)
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite
        return 2**62


def binding_set(labels: np.ndarray, n_classes: int, seed: int, epoch: int = 0) -> np.ndarray:
    """One item per class that has items (classes without any are absent from the data and get
    none), uniform within the class, from ``default_rng([seed, tag, epoch])``."""
    rng = np.random.default_rng([seed, _BIND, 0, epoch])
    out = []
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        if len(members):
            out.append(int(members[rng.integers(len(members))]))
    if not out:
        raise ConfigError("batch binding: no class of the task has an item; nothing to bind")
    return np.asarray(out, dtype=np.int64)


class BatchBindingSampler(Sampler[list[tuple[int, int]]]):
    """The batches of ``base`` (global batches: built with ``shard=(0, 1)``) with the binding set
    appended (module docstring). ``batches_per_epoch``: when ``rebind_each_epoch`` draws a new set.
    Binding items get a caption drawn per batch from ``default_rng([seed, tag, step])``."""

    def __init__(
        self,
        base: Sampler,
        n_captions: Sequence[int] | np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        seed: int,
        batches_per_epoch: int,
        rebind_each_epoch: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if shard[1] != 1:
            raise ConfigError(
                "batch binding gives batches of batch_size + classes − (binding items already there) "
                f"rows, which cannot be split into {shard[1]} equal process shards: train on one process"
            )
        self.base, self.labels = base, np.asarray(labels, dtype=np.int64)
        self.n_captions = np.asarray(n_captions, dtype=np.int64)
        self.n_classes, self.seed, self.rebind = n_classes, seed, rebind_each_epoch
        self.batches_per_epoch = max(1, batches_per_epoch)
        self._bound = binding_set(self.labels, n_classes, seed, 0)
        batch_size = getattr(base, "batch_size", None)
        if batch_size is not None and len(self._bound) > batch_size:
            warnings.warn(
                f"batch binding: {len(self._bound)} classes > batch size {batch_size}; the binding set "
                "dominates every batch",
                stacklevel=2,
            )

    def bound(self, step: int) -> np.ndarray:
        """The binding set in force at global batch ``step``."""
        if not self.rebind:
            return self._bound
        return binding_set(self.labels, self.n_classes, self.seed, step // self.batches_per_epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.base:
            k = batch.step
            present = {i for i, _ in batch}
            extra = [int(i) for i in self.bound(k) if int(i) not in present]
            u = np.random.default_rng([self.seed, _BIND, 1, k]).random(len(extra))
            caps = (u * self.n_captions[extra]).astype(np.int64).tolist() if extra else []
            rows = list(batch) + list(zip(extra, caps))
            yield SampledBatch(rows, k, 0, len(rows))

    def __len__(self) -> int:
        return 2**62
