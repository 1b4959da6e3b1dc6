"""The trainer's data feed: the training loader of any source, and what it reports besides batches.

Loaders put bookkeeping fields in every batch (docs/architecture.md): ``_skips`` (unusable samples
per reason) and, for a shard source, ``_pos`` (the place of the stream that made the batch).
:class:`DataFeed` pops them before the batch reaches the model, sums skip counts over ranks so every
rank takes the same stop decision (``data.max_skip_fraction``), and keeps each stream's newest
place. Its :meth:`state_dict` goes into checkpoints; :meth:`load_state_dict` restores it, so a
resumed run continues the exact stream and reports the same skip totals.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from contrastkit.core.errors import ConfigError
from contrastkit.data import Source, train_loader
from contrastkit.data.config import DataConfig
from contrastkit.data.pairs import PairDataset
from contrastkit.data.shards import POS_KEY, ShardSource
from contrastkit.data.skips import REASONS, SKIPS_KEY, SkipTally
from contrastkit.train.distributed import DistContext, all_sum_counts

__all__ = ["DataFeed"]


class DataFeed:
    """Training batches of ``source`` for this rank, with skip totals and stream places."""

    def __init__(self, source: Source, cfg: DataConfig, dist: DistContext, pair_index: bool = False) -> None:
        self.source, self.cfg, self.dist = source, cfg, dist
        self.pair_index = pair_index  # batches carry _pair (per-pair state, e.g. noisy-pair weights)
        self.skips = SkipTally()
        self.places: dict[int, list[int]] = {}  # shard source: newest place per stream slot (this rank's)

    def loader(
        self,
        tokenize: Callable[[list[str]], torch.Tensor] | None,
        truncated: Callable[[list[str]], int] | None,
        batch_size: int,
        seed: int,
        start: int,
        device: torch.device,
    ) -> DataLoader:
        """The stream of batches after ``start`` consumed ones (from the restored places)."""
        shard, pin = (self.dist.rank, self.dist.world), device.type == "cuda"
        places = dict(self.places)
        loader = train_loader(
            self.source, self.cfg, tokenize, batch_size, seed, start, shard, places, truncated, pin
        )
        if self.pair_index:
            if not isinstance(loader.dataset, PairDataset):
                raise ConfigError(f"pair indices need an indexed training set, not {self.source.name!r}")
            loader.dataset.pair_index = True  # before iteration: workers copy the dataset then
        return loader

    def take(self, raw: dict, device: torch.device) -> dict[str, torch.Tensor]:
        """Pop the bookkeeping fields, count (over all ranks) and check skips, move to ``device``."""
        counts = raw.pop(SKIPS_KEY, {})
        self.places.update(raw.pop(POS_KEY, {}))
        counts["rows"] = len(next(v for v in raw.values() if isinstance(v, torch.Tensor)))
        total = all_sum_counts(counts, ("rows", *REASONS), self.dist)  # the same totals on every rank
        self.skips.add({k: v for k, v in total.items() if k != "rows"}, total["rows"])
        self.skips.check(self.cfg.max_skip_fraction, self.cfg.skip_grace)
        return {k: v.to(device, non_blocking=True) for k, v in raw.items()}

    def state_dict(self) -> dict:
        """Skip totals and every stream's place, gathered from all ranks (a collective: every rank
        calls it)."""
        places: dict[int, list[int]] = dict(self.places)
        if self.dist.active and isinstance(self.source, ShardSource):
            import torch.distributed as dist

            parts: list[dict | None] = [None] * self.dist.world
            dist.all_gather_object(parts, places)
            places = {k: v for part in parts for k, v in (part or {}).items()}
        return {
            "skips": self.skips.state_dict(),
            "stream": {str(k): v for k, v in sorted(places.items())},
            "layout": self._layout(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.skips.load_state_dict(state.get("skips", {}))
        if not isinstance(self.source, ShardSource):
            return
        saved, now = state.get("layout", {}), self._layout()
        if saved and saved != now:
            raise ConfigError(
                f"this run streamed its shards with {saved['world']} rank(s) × {saved['num_workers']} "
                f"worker(s); resume it with the same layout (now {now['world']} × {now['num_workers']}) "
                "to continue the exact stream"
            )
        self.places = {int(k): list(v) for k, v in state.get("stream", {}).items()}

    def _layout(self) -> dict[str, int]:
        return {"world": self.dist.world, "num_workers": self.cfg.num_workers}
