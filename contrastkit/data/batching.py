"""What every batch sampler is built from, and the chunked item streams they share.

A sampler (:mod:`contrastkit.data.samplers`) is built from a :class:`SamplerContext` — what the
loader knows at run time: captions per item of each source, the class tasks, the global batch
size, the seed, how many batches were already consumed (``start``) and this process's shard.

:class:`ChunkStream` is the building block of the non-default samplers: an endless sequence of
chunks of distinct items of a pool, epoch after epoch, where chunk ``j`` depends only on
``(seed key, j)``. Samplers that know how many chunks of each pool they took before step ``k``
can therefore start at step ``k`` exactly where an uninterrupted run was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from contrastkit.core.errors import InputError
from contrastkit.data.pairs import ClassTask

__all__ = ["ChunkStream", "SamplerContext"]


@dataclass(frozen=True)
class SamplerContext:
    """The run-time inputs of a batch sampler.

    ``n_captions[s][i]``: captions of item ``i`` of source ``s`` (one source unless the data is a
    ``data.sources`` mixture); ``weights``: the mixture's source weights, ``None`` for one
    source; ``tasks``: the class tasks of a single source (``class_mix``); ``label_task``: the
    task of ``data.label_task``; ``mix``: ``data.mix`` (what ``random`` does with a mixture).
    ``batch_size`` is the global batch, ``start`` the batches already consumed, ``shard`` =
    ``(rank, world)``. ``captions``: each source's caption lists, for samplers that pick captions
    of other items (``unpaired_labels``); empty when the loader does not pass them.
    ``source_tasks``: each source's class tasks, for a ``data.sources`` mixture (``tasks`` is
    then empty); empty when the loader does not pass them.
    """

    n_captions: tuple[np.ndarray, ...]
    batch_size: int
    seed: int
    start: int = 0
    shard: tuple[int, int] = (0, 1)
    weights: tuple[float, ...] | None = None
    tasks: Mapping[str, ClassTask] = field(default_factory=dict)
    label_task: str | None = None
    mix: str = "rows"
    captions: tuple[Sequence[Sequence[str]], ...] = ()
    source_tasks: tuple[Mapping[str, ClassTask], ...] = ()

    def __post_init__(self) -> None:
        rank, world = self.shard
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if world < 1 or not 0 <= rank < world:
            raise InputError(f"shard must be (rank, world) with 0 <= rank < world, got {self.shard}")
        if self.start < 0:
            raise InputError(f"start must be >= 0 (batches already consumed), got {self.start}")
        if self.weights is not None and len(self.weights) != len(self.n_captions):
            raise InputError(f"{len(self.weights)} source weights for {len(self.n_captions)} sources")

    @classmethod
    def single(
        cls, n_captions: Sequence[int], batch_size: int, seed: int, **kwargs: object
    ) -> SamplerContext:
        """The context of one source whose item ``i`` has ``n_captions[i]`` captions."""
        return cls((np.asarray(n_captions, dtype=np.int64),), batch_size, seed, **kwargs)  # type: ignore[arg-type]

    @property
    def sizes(self) -> list[int]:
        """Items per source."""
        return [len(n) for n in self.n_captions]

    def local(self) -> int:
        """Rows of this rank's shard of a global batch (the global batch must split evenly)."""
        rank, world = self.shard
        if self.batch_size % world:
            raise InputError(
                f"batch_size {self.batch_size} cannot be split into {world} equal shards (rank {rank})"
            )
        return self.batch_size // world


class ChunkStream:
    """Chunks of ``size`` distinct items of ``pool``, epoch after epoch, with one caption each.

    Epoch ``e`` is a permutation of ``pool`` from ``default_rng([*key, e])`` cut into
    ``len(pool) // size`` chunks (the remainder of the permutation is dropped, so a chunk never
    holds an item twice); with it come uniform caption draws ``⌊u·n_captions⌋``. Chunk ``j`` is
    chunk ``j mod m`` of epoch ``⌊j / m⌋`` (``m`` chunks per epoch): a function of ``(key, j)``.
    """

    def __init__(self, pool: np.ndarray, n_captions: np.ndarray, size: int, key: Sequence[int]) -> None:
        if size < 1 or len(pool) < size:
            raise InputError(f"a pool of {len(pool)} items cannot give chunks of {size}")
        self.pool, self.n_captions = np.asarray(pool, np.int64), np.asarray(n_captions, np.int64)
        self.size, self.key = size, [int(k) for k in key]
        self.per_epoch = len(pool) // size
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([*self.key, epoch])
            items = self.pool[rng.permutation(len(self.pool))]
            caps = (rng.random(len(items)) * self.n_captions[items]).astype(np.int64)
            self._cached = (epoch, items, caps)
        return self._cached[1], self._cached[2]

    def __call__(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``j``: its items and their caption indices."""
        epoch, b = divmod(int(j), self.per_epoch)
        items, caps = self._epoch(epoch)
        sl = slice(b * self.size, (b + 1) * self.size)
        return items[sl], caps[sl]
