"""Several sources mixed with weights (``data.sources``), deterministically.

```yaml
data:
  sources:
    - {name: csv, params: {path: web.csv}, weight: 0.7}
    - {name: imagefolder, params: {root: photos}, weight: 0.3}
  mix: rows          # rows: every batch holds each source in proportion; batch: one source a batch
```

``mix: rows`` gives source ``i`` a fixed quota of every global batch of ``B`` rows — ``B·wᵢ``
rounded by largest remainder (ties to the earlier source) — so the mixture is exact in every
batch. ``mix: batch`` draws one source per global batch with probabilities ``wᵢ`` from a generator
seeded by ``(seed, step block)`` (the same on every rank), the per-source batch sampling of ZeroVL:
every batch is source-pure. Each source walks its own stream of epochs (a fresh permutation per
epoch, one random caption per image, as :class:`~contrastkit.data.pairs.PairBatchSampler`), so
batch ``k`` depends only on ``(seed, k)``: resume is exact and ranks split each global batch as
usual. Batches carry ``source`` (``int64``, the source's index) next to the modalities.
Sources are indexed ones (built-in sets and tables); shard sources stream and are not mixed here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.pairs import SEED_KEY, PairDataset, SampledBatch
from contrastkit.data.skips import SKIPS_KEY

__all__ = ["MixBatchSampler", "MixDataset", "quotas"]

_TAG = 0x313C
_BLOCK = 4096  # source choices of mix: batch are drawn in blocks of this many steps


def quotas(batch_size: int, weights: Sequence[float]) -> list[int]:
    """Rows per source in a batch: ``B·wᵢ`` (normalised) by largest remainder, ties to the earlier."""
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not w.sum() > 0:
        raise ConfigError(f"source weights must be >= 0 with a positive sum, got {list(weights)}")
    exact = batch_size * w / w.sum()
    q = np.floor(exact).astype(int)
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - q[i]), i))
    for i in order[: batch_size - int(q.sum())]:
        q[i] += 1
    return q.tolist()


class MixBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Infinite, deterministic, resumable batches of ``(source, image, caption)`` keys (module
    docstring). ``shard=(r, D)`` yields rank r's contiguous slice of each global batch."""

    def __init__(
        self,
        n_captions: Sequence[Sequence[int]],
        weights: Sequence[float],
        batch_size: int,
        seed: int,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
        mode: Literal["rows", "batch"] = "rows",
    ) -> None:
        if batch_size % shard[1]:
            raise InputError(f"batch_size {batch_size} cannot be split into {shard[1]} equal shards")
        self.n_captions = [np.asarray(c, dtype=np.int64) for c in n_captions]
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.quota = quotas(batch_size, weights)
        need = batch_size if mode == "batch" else 0
        for i, (n, q) in enumerate(zip(self.n_captions, self.quota)):
            if len(n) < max(q, need) or len(n) == 0:
                raise InputError(f"source {i} has {len(n)} items, fewer than its {max(q, need)} rows a batch")
        self.batch_size, self.seed, self.start, self.shard, self.mode = batch_size, seed, start, shard, mode

    def _choices(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _TAG, block])
        return rng.choice(len(self.weights), size=_BLOCK, p=self.weights)

    def _rows(self, src: int, lo: int, n: int, cache: dict) -> list[tuple[int, int, int]]:
        """Positions ``lo … lo+n-1`` of source ``src``'s stream of epochs."""
        size, out = len(self.n_captions[src]), []
        for pos in range(lo, lo + n):
            epoch, k = divmod(pos, size)
            if cache.get(src, (None,))[0] != epoch:
                rng = np.random.default_rng([self.seed, _TAG, src, epoch])
                perm = rng.permutation(size)
                caps = (rng.random(size) * self.n_captions[src][perm]).astype(np.int64)
                cache[src] = (epoch, perm, caps)
            _, perm, caps = cache[src]
            out.append((src, int(perm[k]), int(caps[k])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        cache: dict = {}
        used = np.zeros(len(self.weights), dtype=np.int64)  # mix: batch — batches taken per source
        if self.mode == "batch":
            for block in range(self.start // _BLOCK + 1):
                c = self._choices(block)[: self.start - block * _BLOCK] if block * _BLOCK < self.start else []
                used += np.bincount(np.asarray(c, dtype=np.int64), minlength=len(used))
        k = self.start
        rank, world = self.shard
        local = self.batch_size // world
        while True:
            if self.mode == "rows":
                rows = [r for i, q in enumerate(self.quota) for r in self._rows(i, k * q, q, cache)]
            else:
                src = int(self._choices(k // _BLOCK)[k % _BLOCK])
                rows = self._rows(src, int(used[src]) * self.batch_size, self.batch_size, cache)
                used[src] += 1
            yield SampledBatch(rows[rank * local : (rank + 1) * local], k, rank * local, self.batch_size)
            k += 1

    def __len__(self) -> int:
        return 2**62


class MixDataset(Dataset):
    """Batches of ``(source, image, caption)`` keys from several :class:`PairDataset` s: each
    source's rows are loaded by its own dataset (decoding, substitution, views) and the fields
    concatenated in key order; adds ``source``."""

    def __init__(self, parts: Sequence[PairDataset]) -> None:
        if not parts:
            raise ConfigError("data.sources is empty")
        self.parts = list(parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitems__(self, keys: SampledBatch) -> dict[str, object]:
        fields: dict[str, list] = {}
        skips: Counter[str] = Counter()
        row = 0
        for src in sorted({k[0] for k in keys}):
            mine = [(i, j) for s, i, j in keys if s == src]
            sub = SampledBatch(mine, keys.step, keys.offset + row, keys.total)
            item = self.parts[src].__getitems__(sub)
            skips.update(item.pop(SKIPS_KEY, {}))  # type: ignore[arg-type]
            item.pop(SEED_KEY, None)
            item["source"] = torch.full((len(mine),), src, dtype=torch.long)
            for name, value in item.items():
                fields.setdefault(name, []).append(value)
            row += len(mine)
        if any(len(v) != len(fields["source"]) for v in fields.values()):
            raise ConfigError(f"data.sources give different batch fields: {sorted(fields)}")
        out: dict[str, object] = {
            k: torch.cat(v) if isinstance(v[0], torch.Tensor) else [x for part in v for x in part]
            for k, v in fields.items()
        }
        out[SKIPS_KEY] = dict(skips)
        out[SEED_KEY] = (self.parts[0].seed, keys.step, keys.offset)
        return out
