"""D-MCL data side — group-pure batches and mixed-radix pseudo-labels of multistage contrastive learning.

Paper: Zhang et al. 2024 (ECCV), "Learning the Unlearned: Mitigating Feature Suppression in
Contrastive Learning" (MCL). Reference: MajorDavidZhang/MCL ``my_training/data.py``
(``MCL_batch_sampler_DDP``) and ``cluster.py``. The stage loop that produces the group labels is
:mod:`contrastkit.train.multistage`.

:class:`MCLBatchSampler` — every global batch holds items of ONE group (a k-means cluster of the
previous stages' embeddings), so an anchor's in-batch negatives all share its group: the loss must
separate examples on features the earlier stages did not already use to split them. Epoch ``e``
(generator ``default_rng([seed, tag, e])``), ``D`` ranks, per-rank batch ``b = B/D``:

* groups in ascending label order; each group's items are permuted and truncated to
  ``⌊|g|/(bD)⌋·bD`` items; item ``j`` of that list goes to rank ``j mod D``;
* batches cycle the groups ``g = 0, 1, …, G−1, 0, …``, one batch from each group that still has
  items (every rank takes ``b`` items from the end of its list of that group), until all are empty;
* every rank holds the same count per group, so ranks stay in lockstep and the GLOBAL batch (rank
  ``r``'s rows are rows ``r·b … (r+1)·b−1``) is group-pure; one uniform caption per item;
* ``batches_per_epoch = Σ_g ⌊|g|/(bD)⌋``; a group smaller than ``bD`` sits the epoch out; labels
  ``−1`` are never drawn; an epoch without any batch is an :class:`~contrastkit.core.errors.InputError`.

Step ``k`` is batch ``k mod L`` of epoch ``⌊k/L⌋`` (``L = batches_per_epoch``): a function of
``(seed, k)``, so resuming at ``start`` is exact. ``K = 1`` (one group) is plain shuffled batching
truncated to a multiple of ``bD``.

:func:`combine_labels` — pseudo-labels of stage ``t+1`` from the cluster labels
``c^(0) … c^(t) ∈ {0…K−1}ⁿ`` of stages ``0 … t``: ``p = Σ_s c^(s)·K^(t−s)`` (recursion
``p ← p·K + c^(s)``; ``K^(t+1)`` possible groups, a bijection of the label tuple),
``combine="all_stages"`` (default). ``"current_only"`` reproduces the reference, whose loop reloads
the current stage's labels for every ``s``: ``p = c^(t)·Σ_s K^(t−s)``, a bijection of ``c^(t)``
alone. An item with ``−1`` at any stage gets ``−1``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import Sampler

from contrastkit.core.errors import InputError, MissingFileError
from contrastkit.data.pairs import SampledBatch

__all__ = ["COMBINE", "MCLBatchSampler", "combine_labels", "read_groups"]

COMBINE = ("all_stages", "current_only")
_TAG = 0x4D43  # MCL draws: default_rng([seed, _TAG, epoch]) — apart from every other stream


def combine_labels(
    stage_labels: Sequence[np.ndarray],
    clusters: int,
    combine: Literal["all_stages", "current_only"] = "all_stages",
) -> np.ndarray:
    """Mixed-radix group labels (int64) of the cluster labels of stages ``0 … t`` (module docstring)."""
    if combine not in COMBINE:
        raise InputError(f"combine must be one of {list(COMBINE)}, got {combine!r}")
    if clusters < 1:
        raise InputError(f"clusters must be >= 1, got {clusters}")
    if not stage_labels:
        raise InputError("combine_labels needs the cluster labels of at least one stage")
    labels = [np.asarray(c, dtype=np.int64) for c in stage_labels]
    if any(c.ndim != 1 or len(c) != len(labels[0]) for c in labels):
        raise InputError(
            f"stage labels must be 1-D arrays of one length, got shapes {[c.shape for c in labels]}"
        )
    if any(((c < -1) | (c >= clusters)).any() for c in labels):
        raise InputError(f"cluster labels must lie in 0 … {clusters - 1} (or -1 = unused)")
    if len(labels) * np.log2(max(clusters, 2)) >= 62:
        raise InputError(f"{clusters}^{len(labels)} groups do not fit in int64; use fewer stages or clusters")
    used = labels if combine == "all_stages" else [labels[-1]] * len(labels)
    p = np.zeros(len(labels[0]), dtype=np.int64)
    for c in used:  # Horner: p ← p·K + c^(s)
        p = p * clusters + c
    unused = np.zeros(len(p), dtype=bool)
    for c in labels:
        unused |= c < 0
    p[unused] = -1
    return p


def read_groups(path: str | Path, n: int) -> np.ndarray:
    """Group labels of ``n`` items from a ``.npy`` file (integers, ``−1`` = never drawn)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"sampler 'mcl': no group-label file {path}")
    labels = np.load(path, allow_pickle=False)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"sampler 'mcl': {path} must hold a 1-D integer array, got {labels.dtype} {labels.shape}"
        )
    if len(labels) != n:
        raise InputError(f"sampler 'mcl': {path} has {len(labels)} labels for {n} training items")
    return labels.astype(np.int64)


class MCLBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite, resumable group-pure batches of ``(image, caption)`` keys (module docstring).

    ``groups[i]``: group of item ``i`` (any integers; ``−1`` = never drawn); ``batch_size`` is the
    global batch ``B``; ``shard = (rank, D)``: this rank's rows ``rank·b … (rank+1)·b−1``.
    """

    def __init__(
        self,
        n_captions: Sequence[int] | np.ndarray,
        groups: np.ndarray,
        batch_size: int,
        seed: int,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        rank, world = shard
        if batch_size < 1 or world < 1 or not 0 <= rank < world or batch_size % world:
            raise InputError(
                f"batch_size {batch_size} cannot be split into {world} equal shards (rank {rank})"
            )
        self.n_captions = np.asarray(n_captions, dtype=np.int64)
        groups = np.asarray(groups, dtype=np.int64)
        if groups.shape != self.n_captions.shape:
            raise InputError(f"sampler 'mcl': {len(groups)} group labels for {len(self.n_captions)} items")
        self.batch_size, self.seed, self.start, self.shard = batch_size, seed, start, shard
        self.local = batch_size // world
        used = np.flatnonzero(groups >= 0)
        by_group = used[np.argsort(groups[used], kind="stable")]  # item order kept inside a group
        names, first = np.unique(groups[by_group], return_index=True)
        self.members = np.split(by_group, first[1:])  # O(n log n) for any number of groups
        self.group_names = names
        self.per_group = np.asarray([len(m) // batch_size for m in self.members], dtype=np.int64)
        self.batches_per_epoch = int(self.per_group.sum())
        if self.batches_per_epoch == 0:
            largest = max((len(m) for m in self.members), default=0)
            raise InputError(
                f"sampler 'mcl': no group has a full global batch of {batch_size} items (largest group: "
                f"{largest} of {len(groups)} items, {len(names)} groups): the epoch would be empty; "
                "use fewer clusters or a smaller batch"
            )
        self._order = self._group_order()
        self._nth = np.zeros(len(self._order), dtype=np.int64)  # batch i is its group's _nth[i]-th
        seen = np.zeros(len(self.members), dtype=np.int64)
        for i, g in enumerate(self._order.tolist()):
            self._nth[i], seen[g] = seen[g], seen[g] + 1
        self._cached: tuple[int, list[np.ndarray], np.ndarray] | None = None

    def _group_order(self) -> np.ndarray:
        """Group position of each batch of an epoch: round-robin over the groups with batches left."""
        order = [
            g for r in range(int(self.per_group.max())) for g in np.flatnonzero(self.per_group > r).tolist()
        ]
        return np.asarray(order, dtype=np.int64)

    def _epoch(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Per group: its kept items as a ``[D, count·b]`` layout (rank ``r`` = items ``j ≡ r mod D``);
        and one caption index per item of the data set."""
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, _TAG, epoch])
            world = self.shard[1]
            lists = []
            for m, count in zip(self.members, self.per_group.tolist()):
                kept = m[rng.permutation(len(m))][: count * self.batch_size]
                lists.append(kept.reshape(-1, world).T)  # row r: kept[r::D]
            caps = (rng.random(len(self.n_captions)) * self.n_captions).astype(np.int64)
            self._cached = (epoch, lists, caps)
        return self._cached[1], self._cached[2]

    def global_batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and caption indices of global batch ``k`` (rank ``r``'s rows are ``r·b … (r+1)·b−1``)."""
        epoch, pos = divmod(int(k), self.batches_per_epoch)
        lists, caps = self._epoch(epoch)
        g = int(self._order[pos])
        taken = int(self._nth[pos])  # batches of this group already emitted this epoch
        rows = lists[g]
        end = rows.shape[1] - taken * self.local  # from the end of each rank's list
        items = rows[:, end - self.local : end].reshape(-1)
        return items, caps[items]

    def batch_group(self, k: int) -> int:
        """The group label of global batch ``k``."""
        return int(self.group_names[self._order[int(k) % self.batches_per_epoch]])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rank = self.shard[0]
        k = self.start
        while True:
            items, caps = self.global_batch(k)
            sl = slice(rank * self.local, (rank + 1) * self.local)
            pairs = zip(items[sl].tolist(), caps[sl].tolist())
            yield SampledBatch(pairs, k, rank * self.local, self.batch_size)
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite (one epoch: batches_per_epoch)
        return 2**62
