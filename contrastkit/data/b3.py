"""S-B3 — batches from a teacher's similarity graph, so every batch is rich in hard negatives.

Paper: Thirukovalluru et al. 2025, "Breaking the Batch Barrier (B3) of Contrastive Learning via
Smart Batch Mining". Spec form, not checked against the original (no public code was found; the
parameters below are the spec's examples).

Offline, once per sampler (= once per run start or resume; deterministic in the seed):

1. teacher embeddings of every training item, query side ``q_i`` and target side ``t_j``
   (default: the teacher's image and text embeddings, ``sim(i, j) = q̂_i · t̂_j`` on L2-normalised
   rows; :func:`contrastkit.train.teacher.teacher_embeddings` computes and caches them);
2. sparse graph: for each ``i`` rank all ``j ≠ i`` by ``sim(i, j)`` (faiss, exact inner product)
   and connect ``i`` to the items at ranks ``[p, p + m)`` (0-based; the top ``p`` are skipped as
   likely false negatives — paraphrases, near duplicates). Undirected, unweighted edges.
3. communities: networkx Louvain (``resolution``, seeded by the run seed) — members are strong
   negatives for one another; isolated items (``m = 0``, or no edge) are singletons.
4. batches, epoch ``e`` (``default_rng([seed, tag, e])``): shuffle each community, cut it into
   pieces of at most ``cluster_size`` (default: the batch size), shuffle the pieces (singletons
   included, so isolated items fill batches at random) and concatenate them; consecutive runs of
   ``B`` items are the batches (a piece that does not fit is split across two batches). When
   ``B ∤ n`` the ``r = n mod B`` leftovers make a final batch, completed with ``B − r`` distinct
   random items of the same epoch. Every item appears exactly once per epoch when ``B | n`` (at
   least once otherwise); ``⌈n / B⌉`` batches per epoch; one random caption per item.

Edge cases: ``p + m ≥ n`` → the window is cut at ``n − 1``; ``m = 0`` → no edges → random
batches; a data set smaller than ``2B`` → random batches with a warning (too small to mine).
Batch ``k`` is a function of ``(seed, k)``: ``start`` resumes exactly; ``shard=(rank, world)``
takes the rank's contiguous slice of every global batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegInt, Positive, PositiveInt
from contrastkit.data.batching import SamplerContext
from contrastkit.data.pairs import SampledBatch

__all__ = [
    "B3Sampler",
    "b3_communities",
    "b3_graph",
    "b3_neighbours",
    "b3_sampler",
    "epoch_order",
    "load_embeddings",
    "mine_communities",
]

_TAG = 0xB3B3  # b3 epoch draws: default_rng([seed, _TAG, epoch])


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def b3_neighbours(query: np.ndarray, target: np.ndarray, p: int = 30, m: int = 100) -> np.ndarray:
    """``[n, m']`` indices of the items at similarity ranks ``[p, p + m)`` of each row (self excluded,
    ``m' = min(m, n − 1 − p)``, at least 0). ``sim(i, j) = q̂_i · t̂_j`` (cosine), ranked with faiss."""
    import faiss

    if query.ndim != 2 or query.shape != target.shape:
        raise InputError(
            f"b3: query and target embeddings must both be [n, d], got {query.shape}, {target.shape}"
        )
    n = len(query)
    width = max(0, min(m, n - 1 - p))
    if width == 0:
        return np.empty((n, 0), dtype=np.int64)
    q, t = _unit_rows(query), _unit_rows(target)
    index = faiss.IndexFlatIP(t.shape[1])
    index.add(t)
    _, found = index.search(q, p + width + 1)  # one spare: i itself may be among the top ranks
    out = np.empty((n, width), dtype=np.int64)
    for i in range(n):
        row = found[i][(found[i] != i) & (found[i] >= 0)]  # self never counts as a rank
        out[i] = row[p : p + width]
    return out


def b3_graph(neighbours: np.ndarray):  # -> networkx.Graph (imported lazily: no work at import)
    """Undirected, unweighted graph on ``0 … n−1`` with an edge ``i — j`` for every window neighbour."""
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(range(len(neighbours)))
    rows = np.repeat(np.arange(len(neighbours)), neighbours.shape[1])
    g.add_edges_from(zip(rows.tolist(), neighbours.reshape(-1).tolist()))
    return g


def b3_communities(graph, seed: int = 0, resolution: float = 1.0) -> list[np.ndarray]:
    """Louvain communities of ``graph`` (seeded), each sorted, ordered by their smallest member."""
    import networkx as nx

    found = nx.community.louvain_communities(graph, seed=seed, resolution=resolution)
    parts = [np.sort(np.fromiter(c, dtype=np.int64)) for c in found]
    return sorted(parts, key=lambda c: int(c[0]))


def epoch_order(communities: Sequence[np.ndarray], cluster_size: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's item order: communities shuffled inside, cut into pieces of ``≤ cluster_size``,
    the pieces shuffled and concatenated (module docstring, step 4)."""
    pieces: list[np.ndarray] = []
    for c in communities:
        members = c[rng.permutation(len(c))]
        pieces += [members[a : a + cluster_size] for a in range(0, len(members), cluster_size)]
    order = rng.permutation(len(pieces))
    return np.concatenate([pieces[i] for i in order]) if pieces else np.empty(0, dtype=np.int64)


def load_embeddings(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(query, target)`` from a ``.npz`` with arrays ``query`` and ``target`` (or one array
    ``embeddings`` for both sides), as :func:`contrastkit.train.teacher.teacher_embeddings` writes."""
    try:
        with np.load(path) as z:
            if "query" in z and "target" in z:
                return np.asarray(z["query"]), np.asarray(z["target"])
            if "embeddings" in z:
                e = np.asarray(z["embeddings"])
                return e, e
    except (OSError, ValueError) as err:
        raise InputError(f"b3: cannot read teacher embeddings {path}: {err}") from err
    raise InputError(f"b3: {path} holds neither 'query' + 'target' nor 'embeddings' arrays")


class B3Sampler(Sampler[list[tuple[int, int]]]):
    """Infinite, resumable batches of ``(item, caption)`` keys built from ``communities`` (a
    partition of ``0 … n−1``; module docstring). ``cluster_size`` defaults to ``batch_size``."""

    def __init__(
        self,
        n_captions: Sequence[int] | np.ndarray,
        communities: Sequence[np.ndarray],
        batch_size: int,
        seed: int,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
        cluster_size: int | None = None,
    ) -> None:
        self.n_captions = np.asarray(n_captions, dtype=np.int64)
        n = len(self.n_captions)
        if n < batch_size:
            raise InputError(f"b3: data set has {n} items, fewer than one batch of {batch_size}")
        if batch_size % shard[1]:
            raise ConfigError(f"batch_size {batch_size} cannot be split into {shard[1]} equal shards")
        flat = np.sort(np.concatenate(list(communities))) if len(communities) else np.empty(0, np.int64)
        if len(flat) != n or not np.array_equal(flat, np.arange(n)):
            raise InputError(f"b3: communities must partition the {n} items exactly once each")
        self.communities = [np.asarray(c, dtype=np.int64) for c in communities]
        self.cluster_size = batch_size if cluster_size is None else int(cluster_size)
        if self.cluster_size < 1:
            raise ConfigError(f"b3: cluster_size must be >= 1, got {cluster_size}")
        self.batch_size, self.seed, self.start, self.shard = batch_size, seed, start, shard
        self.batches_per_epoch = -(-n // batch_size)
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``e``'s ``⌈n/B⌉·B`` items (batch after batch) and their caption indices."""
        if self._cached is None or self._cached[0] != e:
            rng = np.random.default_rng([self.seed, _TAG, e])
            order = epoch_order(self.communities, self.cluster_size, rng)
            r = len(order) % self.batch_size
            if r:  # leftovers: a final batch completed with distinct random items of this epoch
                fill = rng.choice(len(order) - r, size=self.batch_size - r, replace=False)
                order = np.concatenate([order, order[fill]])
            caps = (rng.random(len(order)) * self.n_captions[order]).astype(np.int64)
            self._cached = (e, order, caps)
        return self._cached[1], self._cached[2]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rank, world = self.shard
        local = self.batch_size // world
        k = self.start
        while True:
            e, b = divmod(k, self.batches_per_epoch)
            items, caps = self.epoch(e)
            lo = b * self.batch_size + rank * local
            rows = zip(items[lo : lo + local].tolist(), caps[lo : lo + local].tolist())
            yield SampledBatch(rows, step=k, offset=rank * local, total=self.batch_size)
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite
        return 2**62


def mine_communities(
    query: np.ndarray,
    target: np.ndarray,
    batch_size: int,
    seed: int,
    p: int = 30,
    m: int = 100,
    resolution: float = 1.0,
) -> list[np.ndarray]:
    """Steps 2–3 of the module docstring; a set smaller than ``2 · batch_size`` gets singletons
    (random batches) with a warning."""
    n = len(query)
    if n < 2 * batch_size:
        warnings.warn(
            f"b3: {n} items are fewer than two batches of {batch_size}; too few to mine: random batches",
            stacklevel=2,
        )
        return [np.array([i], dtype=np.int64) for i in range(n)]
    return b3_communities(b3_graph(b3_neighbours(query, target, p, m)), seed, resolution)


def b3_sampler(
    context: SamplerContext,
    teacher: str | None = None,
    embeddings: str | None = None,
    p: NonNegInt = 30,
    m: NonNegInt = 100,
    cluster_size: PositiveInt | None = None,
    resolution: Positive = 1.0,
    teacher_batch: PositiveInt = 256,
) -> Sampler:
    """Batches filled from communities of a teacher's k-NN similarity graph: hard negatives, S-B3.

    Graph: each item linked to the items at teacher-similarity ranks ``[p, p + m)`` (faiss);
    Louvain communities (seeded); every epoch the communities are shuffled, cut into pieces of at
    most ``cluster_size`` and concatenated into batches (:mod:`contrastkit.data.b3`).

    ``teacher``: a contrastkit run folder, ``hf:DIR`` or ``open_clip:…`` — the trainer embeds the
    training items with it (``teacher_batch`` at a time), caches ``b3_teacher.npz`` in the run
    folder and passes its path as ``embeddings``; from Python pass ``embeddings`` (a ``.npz`` with
    ``query``/``target`` arrays ``[n, d]``) directly. ``p``: top ranks skipped (likely false
    negatives); ``m``: graph neighbours per item (ranks ``[p, p + m)``); ``cluster_size``: largest
    piece of a community in one batch (default: the batch size); ``resolution``: Louvain's.
    One source only.
    """
    c = context
    if c.weights is not None:
        raise ConfigError("sampler 'b3' draws from one source; it does not take data.sources")
    if embeddings is None:
        raise ConfigError(
            "sampler 'b3' needs teacher embeddings: set data.sampler.params.teacher (a run folder, "
            "hf:DIR or open_clip:...) for training, or pass embeddings=<file.npz> from Python"
        )
    query, target = load_embeddings(embeddings)
    n = len(c.n_captions[0])
    if len(query) != n:
        raise InputError(f"b3: {len(query)} teacher embeddings for {n} training items ({embeddings})")
    parts = mine_communities(query, target, c.batch_size, c.seed, p, m, resolution)
    return B3Sampler(c.n_captions[0], parts, c.batch_size, c.seed, c.start, c.shard, cluster_size)
