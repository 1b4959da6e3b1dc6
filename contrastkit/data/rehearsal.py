"""D-REHEARSAL — a class-balanced rehearsal memory and the batches that replay it (continual training).

Spec form from Cappellazzo et al. 2024, "Continual Contrastive Spoken Language Understanding"
(COCONUT) and iCaRL (Rebuffi et al. 2017) for herding; UNVERIFIED against code (none is public).
The stage loop that fills the memory is :mod:`contrastkit.train.continual`.

**Memory.** A fixed budget of ``M`` items, split evenly over the classes seen so far
(:func:`class_quotas`: ``⌊M/C⌋`` each, one more for the first ``M mod C`` classes in the order they
were seen). Each class keeps a ranked list of its items, chosen once, when it is first learned
(:func:`select_class`), and later stages keep the first ``quota`` of it, so the memory of older
classes shrinks as new ones arrive without being chosen again (iCaRL's "reduce exemplar set"):

* ``random``: the class's items in the order of a permutation from ``default_rng([seed, tag, c])``;
* ``herding`` (iCaRL): with the class mean ``μ = mean_x φ(x)`` of the given features, pick step
  ``k`` the not yet picked ``x`` that minimises ``‖μ − (φ(x) + Σ_{j<k} φ(p_j)) / k‖`` (ties: the
  lowest index), so the mean of the first ``k`` picks stays closest to ``μ`` for every ``k``.

A class with fewer items than its quota contributes all of them (the memory is then below ``M``).

**Batches** (:class:`RehearsalBatchSampler`, sampler ``rehearsal``): global batch ``k`` is
``B − m`` items of the current stage's classes followed by ``m`` memory items, each part from
its own :class:`~contrastkit.data.batching.ChunkStream` (epochs of distinct items, one caption
each), so a batch is a function of ``(seed, stage, k)`` and resume is exact. ``m =
memory_per_batch``, or by default ``max(1, round(B·|M|/(|M| + |D_t|)))``: the memory's share of
the pooled data. Each batch carries ``rehearsal`` (bool ``[b]``: the row is a memory item), what
the ``coconut`` loss uses. Ranks take contiguous slices of the global batch, as everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.core.registry import NonNegInt
from contrastkit.data.batching import ChunkStream, SamplerContext
from contrastkit.data.pairs import SampledBatch

__all__ = [
    "REHEARSAL_KEY",
    "SELECTIONS",
    "RehearsalBatchSampler",
    "RehearsalFlag",
    "assemble_memory",
    "class_quotas",
    "herding_order",
    "read_memory",
    "rehearsal_sampler",
    "select_class",
]

REHEARSAL_KEY = "rehearsal"  # batch field: bool [b], True for rows drawn from the memory
SELECTIONS = ("random", "herding")
_TAG = 0x5245  # rehearsal draws: default_rng([seed, _TAG, …]) — apart from every other stream


def herding_order(features: np.ndarray, k: int) -> np.ndarray:
    """iCaRL herding: the first ``min(k, n)`` picks (row indices of ``features [n, d]``, in order)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or not np.isfinite(f).all():
        raise InputError(f"herding needs finite features [n, d], got shape {f.shape}")
    if k < 0:
        raise InputError(f"k must be >= 0, got {k}")
    mu, total = f.mean(0), np.zeros(f.shape[1])
    free = np.ones(len(f), dtype=bool)
    picks: list[int] = []
    for step in range(1, min(k, len(f)) + 1):
        dist = ((mu - (total + f) / step) ** 2).sum(1)  # squared: the same argmin
        dist[~free] = np.inf
        j = int(np.argmin(dist))  # the first minimum: ties go to the lowest index
        picks.append(j)
        total += f[j]
        free[j] = False
    return np.asarray(picks, dtype=np.int64)


def select_class(
    items: np.ndarray,
    k: int,
    selection: str = "random",
    *,
    seed: int = 0,
    label: int = 0,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """The first ``min(k, len(items))`` of class ``label``'s ``items`` in memory order (module
    docstring); ``herding`` needs ``features`` (one row per item, e.g. L2-normalised embeddings)."""
    items = np.asarray(items, dtype=np.int64)
    if selection == "random":
        order = np.random.default_rng([seed, _TAG, 0, label]).permutation(len(items))[:k]
    elif selection == "herding":
        if features is None or len(features) != len(items):
            raise InputError("herding selection needs one feature row per item")
        order = herding_order(features, k)
    else:
        raise ConfigError(f"memory selection must be one of {list(SELECTIONS)}, got {selection!r}")
    return items[order]


def class_quotas(classes: Sequence[int], size: int) -> dict[int, int]:
    """Memory slots per class: ``⌊size/C⌋``, plus one for the first ``size mod C`` classes."""
    if size < 0:
        raise InputError(f"memory size must be >= 0, got {size}")
    if not classes:
        return {}
    q, r = divmod(size, len(classes))
    return {int(c): q + (i < r) for i, c in enumerate(classes)}


def assemble_memory(rankings: Mapping[int, np.ndarray], seen: Sequence[int], size: int) -> np.ndarray:
    """The memory (int64 item indices): each seen class's quota of its ranking, in ``seen`` order."""
    missing = [c for c in seen if c not in rankings]
    if missing:
        raise InputError(f"no ranked items for class(es) {missing}")
    quotas = class_quotas(seen, size)
    parts = [np.asarray(rankings[c], dtype=np.int64)[: quotas[c]] for c in seen]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def read_memory(path: str | Path, n: int) -> np.ndarray:
    """Memory item indices (1-D integers in ``0 … n−1``) from a ``.npy`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"sampler 'rehearsal': no memory file {path}")
    memory = np.load(path, allow_pickle=False)
    if memory.ndim != 1 or not np.issubdtype(memory.dtype, np.integer):
        raise InputError(f"sampler 'rehearsal': {path} must hold a 1-D integer array, got {memory.dtype}")
    if len(memory) and (memory.min() < 0 or memory.max() >= n):
        raise InputError(f"sampler 'rehearsal': {path} indexes items outside 0 … {n - 1}")
    return memory.astype(np.int64)


class RehearsalFlag:
    """Batch transform: ``rehearsal`` = the row sits in the last ``memory`` rows of the global
    batch (the loader passes this shard's first global row as the seed's last entry). Picklable."""

    def __init__(self, batch_size: int, memory: int, local: int) -> None:
        self.first_memory_row, self.local = batch_size - memory, local

    def __call__(self, batch: dict[str, object], seed: Sequence[int] | None) -> dict[str, object]:
        if seed is None:
            raise InputError("the rehearsal flag needs batches that carry their seed (_seed)")
        rows = torch.arange(int(seed[2]), int(seed[2]) + self.local)
        batch[REHEARSAL_KEY] = rows >= self.first_memory_row
        return batch


class RehearsalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite batches: ``B − m`` items of ``current`` then ``m`` of ``memory`` (module docstring)."""

    def __init__(
        self,
        n_captions: Sequence[int] | np.ndarray,
        current: np.ndarray,
        memory: np.ndarray,
        batch_size: int,
        memory_per_batch: int,
        seed: int,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
        stage: int = 0,
    ) -> None:
        world = shard[1]
        if batch_size % world:
            raise ConfigError(f"batch_size {batch_size} cannot be split into {world} equal shards")
        m = int(memory_per_batch)
        if not 0 <= m < batch_size:
            raise ConfigError(f"sampler 'rehearsal': memory_per_batch={m} must be in 0 … batch_size−1")
        if m > len(memory):
            raise ConfigError(
                f"sampler 'rehearsal': memory_per_batch={m} but the memory holds {len(memory)} items"
            )
        if len(current) < batch_size - m:
            raise ConfigError(
                f"sampler 'rehearsal': the stage's classes have {len(current)} items, fewer than the "
                f"{batch_size - m} current rows of a batch"
            )
        caps = np.asarray(n_captions, dtype=np.int64)
        self.current = ChunkStream(current, caps, batch_size - m, [seed, _TAG, 1, stage, 0])
        self.memory = ChunkStream(memory, caps, m, [seed, _TAG, 1, stage, 1]) if m else None
        self.batch_size, self.memory_per_batch, self.start, self.shard = batch_size, m, start, shard
        self.stage = stage
        self.local = batch_size // world
        self.transform = RehearsalFlag(batch_size, m, self.local)

    def global_batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and caption indices of global batch ``k`` (current rows first, then memory rows)."""
        items, caps = self.current(k)
        if self.memory is not None:
            mem, mem_caps = self.memory(k)
            items, caps = np.concatenate([items, mem]), np.concatenate([caps, mem_caps])
        return items, caps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rank = self.shard[0]
        k = self.start
        while True:
            items, caps = self.global_batch(k)
            sl = slice(rank * self.local, (rank + 1) * self.local)
            yield SampledBatch(
                zip(items[sl].tolist(), caps[sl].tolist()), k, rank * self.local, self.batch_size
            )
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite
        return 2**62


def _class_ids(
    context: SamplerContext, classes: Sequence[str], task: str | None
) -> tuple[np.ndarray, list[int]]:
    if context.weights is not None:
        raise ConfigError("sampler 'rehearsal' draws from one source; it does not take data.sources")
    name = task if task is not None else context.label_task
    if name is None or name not in context.tasks:
        raise ConfigError(
            f"sampler 'rehearsal' needs a class task (its task parameter or data.label_task); got {name!r}, "
            f"this data has {sorted(context.tasks)}"
        )
    t = context.tasks[name]
    unknown = [c for c in classes if c not in t.classnames]
    if unknown or not classes:
        raise ConfigError(
            f"sampler 'rehearsal': classes {list(classes)} must be non-empty names of task {name!r} "
            f"(unknown: {unknown}); its classes are {list(t.classnames)}"
        )
    return np.asarray(t.labels, dtype=np.int64), [t.classnames.index(c) for c in classes]


def rehearsal_sampler(
    context: SamplerContext,
    classes: tuple[str, ...],
    task: str | None = None,
    memory: str | None = None,
    memory_per_batch: NonNegInt | None = None,
    stage: NonNegInt = 0,
) -> Sampler:
    """A continual stage's batches: its ``classes`` of the class task ``task`` (default
    ``data.label_task``) plus ``memory_per_batch`` rows of the ``memory`` file (item indices, what
    ``continual`` writes; none: no replay) — module docstring. One source; resumable."""
    labels, ids = _class_ids(context, classes, task)
    current = np.flatnonzero(np.isin(labels, ids))
    n_caps = context.n_captions[0]
    mem = read_memory(memory, len(n_caps)) if memory is not None else np.zeros(0, dtype=np.int64)
    m = memory_per_batch
    if m is None:  # the memory's share of the pooled data, at least one row when there is a memory
        m = max(1, round(context.batch_size * len(mem) / (len(mem) + len(current)))) if len(mem) else 0
    c = context
    return RehearsalBatchSampler(n_caps, current, mem, c.batch_size, m, c.seed, c.start, c.shard, stage)
