"""An image–caption table whose images are decoded on demand: the user's own data, indexed.

A :class:`PairTable` is what the ``csv``/``tsv``/``parquet``, ``imagefolder`` and ``hf`` sources
build: one row per image with its image reference (a file path, or encoded bytes), one or more
captions, optional class tasks (for zero-shot evaluation, linear probes and label losses) and
optional per-sample *extra* columns passed through to the batch. Nothing is decoded when the
table is built; images are read in DataLoader workers.

Training goes through the same step-indexed :class:`~contrastkit.data.pairs.PairBatchSampler` as
the built-in sets, so batch ``k`` depends only on ``(seed, k)``: resume is exact mid-epoch and any
number of workers and ranks see the same global batches. A sample that cannot be used (missing
file, undecodable image, empty caption) is replaced by a substitute drawn from
``(seed, step, row, attempt)`` — deterministic, so resume stays exact — and counted per reason
(:mod:`contrastkit.data.skips`).

Evaluation decodes the whole table once with the evaluation transform
(:meth:`PairTable.pairset`) and runs the ordinary evaluation tasks on the resulting PairSet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from contrastkit.core.errors import DataError, InputError
from contrastkit.core.progress import progress_bar
from contrastkit.data.augment import AugmentConfig
from contrastkit.data.images import ImageConfig, SkipSample, load_image
from contrastkit.data.pairs import ClassTask, PairDataset, PairSet, SampledBatch
from contrastkit.data.skips import SKIPS_KEY

__all__ = ["PAIR_KEY", "ExtraColumn", "PairTable", "TableDataset", "extra_tensor"]

PAIR_KEY = "text@1"  # a text-pair table's second text (pair_column): a view of the text modality

_TAG = 0x7AB1E  # separates substitute draws from the sampler's and the augmentations' streams
MAX_ATTEMPTS = 64  # consecutive unusable substitutes before a batch gives up


@dataclass(frozen=True)
class ExtraColumn:
    """A per-sample column passed through to batches under its name.

    ``kind``: ``text`` (tokenised like captions, e.g. ``caption_neg``), ``float`` (e.g. ``weight``),
    ``int``, or ``category`` (strings → ``int64`` codes into ``categories``, e.g. ``source``).
    """

    values: tuple
    kind: Literal["text", "float", "int", "category"]
    categories: tuple[str, ...] = ()


def extra_tensor(col: ExtraColumn, rows: Sequence[int]) -> torch.Tensor | list[str]:
    """The batch value of ``col`` for ``rows`` (a list of strings for text columns)."""
    vals = [col.values[i] for i in rows]
    if col.kind == "text":
        return ["" if v is None else str(v) for v in vals]
    if col.kind == "float":
        return torch.tensor([float("nan") if v is None else float(v) for v in vals], dtype=torch.float32)
    if col.kind == "int":
        return torch.tensor([int(v) for v in vals], dtype=torch.long)
    return torch.tensor([col.categories.index(str(v)) for v in vals], dtype=torch.long)


@dataclass(frozen=True)
class PairTable:
    """Image references with captions, decoded on demand (see the module docstring).

    ``images[i]``: an absolute file path or encoded bytes (``None`` for a row without an image,
    which is skipped as ``missing file``). ``captions[i]``: image i's captions (may include empty
    strings: they are skipped and counted). ``tasks``: class tasks as in :class:`PairSet`.
    ``extras``: per-sample columns for batches.
    """

    images: Sequence[str | bytes | None]
    captions: tuple[tuple[str, ...], ...]
    tasks: dict[str, ClassTask] = field(default_factory=dict)
    extras: dict[str, ExtraColumn] = field(default_factory=dict)
    name: str = ""
    attributes: None = None  # the PairDataset interface: file tables carry no attribute vectors

    def __post_init__(self) -> None:
        if len(self.images) == 0:
            raise DataError(f"{self.name or 'data source'} is empty: no rows")
        if len(self.captions) != len(self.images):
            raise InputError(f"{len(self.captions)} caption lists for {len(self.images)} images")
        if any(len(c) == 0 for c in self.captions):
            raise InputError("every image needs at least one caption (empty ones are skipped when read)")
        for tname, task in self.tasks.items():
            if len(task.labels) != len(self):
                raise InputError(f"task {tname!r} has {len(task.labels)} labels for {len(self)} images")
        for cname, col in self.extras.items():
            if len(col.values) != len(self):
                raise InputError(f"extra column {cname!r} has {len(col.values)} values for {len(self)} rows")

    def __len__(self) -> int:
        return len(self.images)

    def flat_captions(self) -> tuple[list[str], np.ndarray]:
        """All captions in order, and for each the index of its image."""
        texts = [c for caps in self.captions for c in caps]
        owner = np.repeat(np.arange(len(self)), [len(c) for c in self.captions])
        return texts, owner

    def read(self, i: int, cfg: ImageConfig, key: Sequence[int] | None = None) -> torch.Tensor:
        """Image ``i`` as ``uint8 [3, S, S]`` (training transform seeded by ``key``, else evaluation)."""
        ref = self.images[i]
        if ref is None:
            raise SkipSample("missing file", f"row {i} has no image")
        return load_image(ref, cfg, key)

    def pairset(self, cfg: ImageConfig, progress: bool = False) -> tuple[PairSet, Counter[str]]:
        """Every usable row decoded with the evaluation transform, and what was skipped per reason.

        Rows whose image is unusable are dropped; empty captions are dropped from their row (a
        row left without captions is dropped)."""
        skips: Counter[str] = Counter()
        keep, images, captions = [], [], []
        for i in progress_bar(range(len(self)), f"decode {self.name}", progress, unit="img"):
            caps = tuple(c for c in self.captions[i] if c.strip())
            if len(caps) < len(self.captions[i]):
                skips["empty caption"] += len(self.captions[i]) - len(caps)
            if not caps:
                continue
            try:
                images.append(self.read(i, cfg))
            except SkipSample as err:
                skips[err.reason] += 1
                continue
            keep.append(i)
            captions.append(caps)
        if not keep:
            raise DataError(f"no usable rows in {self.name}: {dict(skips)}")
        idx = np.asarray(keep)
        tasks = {
            k: ClassTask(t.classnames, t.templates, t.labels[idx], t.fix_articles)
            for k, t in self.tasks.items()
        }
        return PairSet(torch.stack(images), tuple(captions), tasks, self.name), skips


class TableDataset(PairDataset):
    """:class:`PairDataset` over a :class:`PairTable`: decodes and transforms each image in the
    worker (training transform seeded by ``(seed, step, row)``), substitutes unusable samples
    deterministically, adds the table's extra columns and reports skips under ``_skips``."""

    def __init__(
        self,
        table: PairTable,
        image: ImageConfig,
        label_task: str | None = None,
        modalities: Sequence[str] = ("image", "text"),
        views: int = 0,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        concepts: bool = False,
        extras: Sequence[str] = (),
    ) -> None:
        super().__init__(table, label_task, modalities, views, augment, seed, concepts)  # type: ignore[arg-type]
        missing = [e for e in extras if e not in table.extras]
        if missing:
            raise InputError(f"extra column(s) {missing} not in {table.name}; it has {sorted(table.extras)}")
        self.table = table
        self.image = image
        self.extras = tuple(extras) + (
            (PAIR_KEY,) if PAIR_KEY in table.extras and PAIR_KEY not in extras else ()
        )
        self.decode = "image" in self.modalities or views > 0
        self._n_captions = np.asarray([len(c) for c in table.captions])

    def _sample(self, i: int, j: int, key: Sequence[int]) -> torch.Tensor:
        if not self.table.captions[i][j].strip():
            raise SkipSample("empty caption", f"row {i}")
        pair = self.table.extras.get(PAIR_KEY)
        if pair is not None and not str(pair.values[i] or "").strip():
            raise SkipSample("empty caption", f"row {i} ({PAIR_KEY})")
        if not self.decode:  # text-only batches: no image is read
            return torch.empty(0, dtype=torch.uint8)
        return self.table.read(i, self.image, key)

    def _load(
        self, keys: Sequence[tuple[int, int]]
    ) -> tuple[Sequence[tuple[int, int]], torch.Tensor, dict[str, object]]:
        if not isinstance(keys, SampledBatch):  # plain index lists (evaluation-style access)
            keys = SampledBatch(keys, step=0, offset=0, total=len(keys))
        taken = {i for i, _ in keys}
        skips: Counter[str] = Counter()
        out_keys, images = [], []
        for r, (i, j) in enumerate(keys):
            key = (self.seed, keys.step, keys.offset + r)
            for attempt in range(MAX_ATTEMPTS):
                try:
                    images.append(self._sample(i, j, key))
                    break
                except SkipSample as err:
                    skips[err.reason] += 1
                    rng = np.random.default_rng([_TAG, *key, attempt])
                    i = int(rng.integers(len(self.table)))
                    if i in taken and len(taken) < len(self.table):  # avoid a duplicate in the batch
                        i = int(rng.integers(len(self.table)))
                    j = int(rng.integers(self._n_captions[i]))
            else:
                raise DataError(
                    f"{MAX_ATTEMPTS} unusable samples in a row in {self.table.name} ({dict(skips)}): "
                    "is the image root right? (contrastkit data inspect SRC)"
                )
            taken.add(i)
            out_keys.append((i, j))
        rows = [i for i, _ in out_keys]
        fields: dict[str, object] = {
            name: extra_tensor(self.table.extras[name], rows) for name in self.extras
        }
        fields[SKIPS_KEY] = dict(skips)
        return SampledBatch(out_keys, keys.step, keys.offset, keys.total), torch.stack(images), fields
