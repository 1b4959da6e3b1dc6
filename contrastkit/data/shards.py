"""The ``webdataset`` source: tar shards streamed with exact mid-epoch resume.

Shards use the layout of open_clip, img2dataset and DataComp: members ``KEY.jpg|png|webp``,
``KEY.txt`` (caption), optionally ``KEY.cls`` (class index) and ``KEY.json`` (extra fields).
Members are read with the ``webdataset`` library's tar iterators; ``urls`` may be a local path,
a brace pattern (``shards-{000000..000099}.tar``) or a list of them.

```yaml
data:
  name: webdataset
  params: {urls: "shards/train-{000000..000015}.tar", shuffle_buffer: 2000}
  num_workers: 2
```

**Streams.** With ``D`` ranks and ``W`` DataLoader workers there are ``S = D·W`` stream *slots*;
slot ``r·W + w`` reads, in epoch ``e``, the shards at positions ``slot, slot + S, …`` of a
permutation of all shards drawn from ``(seed, e)`` — so within an epoch every shard, hence every
sample, is read by exactly one slot (the number of shards must be ≥ S). Each slot shuffles its
samples with a buffer of ``shuffle_buffer`` undecoded samples and its own generator
``(seed, e, slot)``, decodes them (training transform seeded by ``(seed, slot, e, position)``)
and cuts batches of ``batch_size / D`` rows from its continuous stream of epochs. Unusable
samples are skipped and counted (:mod:`contrastkit.data.skips`).

**Resume.** Every batch carries ``_pos = {slot: [epoch, position, batches]}``, the slot's place
after it. The trainer keeps the newest place of every slot (gathered from all ranks) in the
checkpoint; a resumed loader fast-forwards each slot to its place by re-reading the shuffle buffer's
input without decoding, and rotates workers so that the batch after step ``k`` comes from the slot
that would have produced it. The result equals an uninterrupted run bit for bit, with the same
number of ranks and workers (a different layout is refused with a clear error).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from contrastkit.core.errors import ConfigError, DataError, InputError, MissingFileError
from contrastkit.core.registry import NonNegInt
from contrastkit.data.augment import AugmentConfig, make_views
from contrastkit.data.images import ImageConfig, SkipSample, load_image
from contrastkit.data.pairs import SEED_KEY, ClassTask, PairSet
from contrastkit.data.skips import SKIPS_KEY

__all__ = ["POS_KEY", "ShardSource", "ShardStream", "expand_urls", "iter_shard", "make_webdataset"]

POS_KEY = "_pos"
_TAG_ORDER, _TAG_BUFFER = 0x5A4D, 0xB0FF


def expand_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """Local shard paths from a path, a brace pattern or a list of them."""
    from braceexpand import braceexpand

    items = [urls] if isinstance(urls, str) else list(urls)
    out = tuple(str(Path(u).expanduser()) for item in items for u in braceexpand(item))
    if not out:
        raise ConfigError("webdataset source: no shard urls")
    missing = [u for u in out if not Path(u).is_file()]
    if missing:
        raise MissingFileError(
            f"webdataset source: {len(missing)} of {len(out)} shards missing, e.g. {missing[0]}"
        )
    return out


def iter_shard(path: str, skips: Counter[str] | None = None) -> Iterator[dict[str, Any]]:
    """The samples (``{"__key__": …, "<ext>": bytes}``) of one tar shard, in order. A shard that
    breaks off (truncated, corrupt) ends early and counts one ``bad shard`` in ``skips``."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    def members(f: Any) -> Iterator[dict[str, Any]]:
        for m in tar_file_iterator(f):
            m["__url__"] = path  # group_by_keys expects the url tar_file_expander would add
            yield m

    try:
        with open(path, "rb") as f:
            complete = _has_end_blocks(f)
            yield from group_by_keys(members(f))
    except Exception:  # tarfile raises several types on damaged archives
        complete = False
    if not complete and skips is not None:
        skips["bad shard"] += 1


def _has_end_blocks(f: Any) -> bool:
    """Whether a tar file ends with its two zero blocks: a file cut short almost never does, and
    tarfile's stream mode reads such a file up to the cut without an error."""
    size = f.seek(0, 2)
    if size < 1024:
        f.seek(0)
        return False
    f.seek(size - 1024)
    tail = f.read(1024)
    f.seek(0)
    return tail == bytes(1024)


@dataclass(frozen=True)
class ShardSource:
    """Tar shards and how to read a sample from them (see the module docstring)."""

    urls: tuple[str, ...]
    image_keys: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
    text_key: str = "txt"
    label_key: str | None = None
    json_fields: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ()
    shuffle_buffer: int = 1000
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ("a photo of a {}.",)
    name: str = "webdataset"
    counts: tuple[int, ...] = field(default=(), compare=False)

    def captions(self, limit: int = 50_000) -> list[str]:
        """Captions in shard order (up to ``limit``), e.g. to build a word tokenizer."""
        out: list[str] = []
        for url in self.urls:
            for s in iter_shard(url):
                if self.text_key in s:
                    out.append(s[self.text_key].decode("utf-8", "replace").strip())
                    if len(out) >= limit:
                        return out
        if not out:
            raise DataError(f"{self.name}: no '.{self.text_key}' captions in the shards")
        return out

    def decode(self, raw: Mapping[str, Any], image: ImageConfig, key: Sequence[int] | None) -> dict[str, Any]:
        """One raw sample → ``{"image": uint8 [3,S,S], "text": str, "label"?: int, fields…}``;
        raises :class:`SkipSample` for a missing member, an empty caption or a bad image."""
        ext = next((e for e in self.image_keys if e in raw), None)
        if ext is None or self.text_key not in raw:
            absent = "image" if ext is None else f".{self.text_key}"
            raise SkipSample("missing key", f"{raw.get('__key__')}: no {absent}")
        text = raw[self.text_key].decode("utf-8", "replace").strip()
        if not text:
            raise SkipSample("empty caption", str(raw.get("__key__")))
        out: dict[str, Any] = {"text": text, "__key__": raw["__key__"]}
        if self.label_key is not None:
            if self.label_key not in raw:
                raise SkipSample("missing key", f"{raw.get('__key__')}: no .{self.label_key}")
            out["label"] = int(raw[self.label_key].decode().strip())
        if self.json_fields or self.text_fields:
            meta = json.loads(raw["json"]) if "json" in raw else {}
            for f in (*self.json_fields, *self.text_fields):
                if f not in meta:
                    raise SkipSample("missing key", f"{raw.get('__key__')}: no json field {f!r}")
                out[f] = meta[f]
        out["image"] = load_image(raw[ext], image, key)
        return out

    def pairset(self, image: ImageConfig, progress: bool = False) -> tuple[PairSet, Counter[str]]:
        """Every usable sample, in shard order, decoded with the evaluation transform (with every
        caption ``KEY.json`` lists, for retrieval)."""
        from contrastkit.core.progress import progress_bar  # not needed by the loader workers

        skips: Counter[str] = Counter()
        rows: list[dict[str, Any]] = []
        metas: list[bytes | None] = []  # KEY.json: every caption of a sample written by data shards
        for url in progress_bar(self.urls, f"read {self.name}", progress, unit="shard"):
            for raw in iter_shard(url, skips):
                try:
                    rows.append(self.decode(raw, image, None))
                    metas.append(raw.get("json"))
                except SkipSample as err:
                    skips[err.reason] += 1
        if not rows:
            raise DataError(f"{self.name}: no usable samples ({dict(skips)})")
        tasks = {}
        if self.label_key is not None:
            labels = np.asarray([r["label"] for r in rows], dtype=np.int64)
            names = self.classnames or tuple(str(c) for c in range(int(labels.max()) + 1))
            tasks["class"] = ClassTask(tuple(names), self.templates, labels)
        images = torch.stack([r["image"] for r in rows])
        captions = tuple(_all_captions(raw_json, r["text"]) for r, raw_json in zip(rows, metas))
        return PairSet(images, captions, tasks, self.name), skips


def _all_captions(meta: bytes | None, text: str) -> tuple[str, ...]:
    """A sample's captions for evaluation: ``KEY.json``'s ``captions`` list when it has one (as
    ``contrastkit data shards`` writes), else the ``.txt`` caption."""
    try:
        caps = json.loads(meta)["captions"] if meta else None
    except (ValueError, KeyError, TypeError):
        caps = None
    if isinstance(caps, list) and caps and all(isinstance(c, str) and c.strip() for c in caps):
        return tuple(c.strip() for c in caps)
    return (text,)


class ShardStream(IterableDataset):
    """One rank's infinite stream of batches from a :class:`ShardSource` (module docstring).

    ``start``: ``{slot: [epoch, position, batches]}`` from a checkpoint; ``rotate``: the number of
    batches this rank already consumed (workers are rotated by it). ``epochs``: stop each slot after
    this many epochs (a finite pass that also yields the last, partial batch) instead of streaming
    forever.
    """

    def __init__(
        self,
        source: ShardSource,
        image: ImageConfig,
        batch_size: int,
        seed: int,
        shard: tuple[int, int] = (0, 1),
        num_workers: int = 0,
        start: Mapping[int, Sequence[int]] | None = None,
        rotate: int = 0,
        views: int = 0,
        augment: AugmentConfig | None = None,
        label_task: str | None = None,
        extras: Sequence[str] = (),
        keys: bool = False,
        epochs: int | None = None,
    ) -> None:
        rank, world = shard
        if batch_size % world:
            raise InputError(f"batch_size {batch_size} cannot be split into {world} equal shards")
        self.slots = world * max(num_workers, 1)
        if len(source.urls) < self.slots:
            raise ConfigError(
                f"{source.name}: {len(source.urls)} shards for {world} rank(s) × {max(num_workers, 1)} "
                f"worker(s) = {self.slots} streams; every stream needs a shard: write more, smaller shards "
                "(contrastkit data shards SRC --shard-size N) or use fewer workers"
            )
        if label_task not in (None, "class"):
            raise ConfigError(
                f"webdataset sources have one label task, 'class' (from .cls), not {label_task!r}"
            )
        if label_task == "class" and source.label_key is None:
            raise ConfigError("data.label_task 'class' needs the webdataset param label_key (e.g. cls)")
        unknown = [e for e in extras if e not in (*source.json_fields, *source.text_fields)]
        if unknown:
            raise ConfigError(
                f"data.extras {unknown} are not json_fields/text_fields of the webdataset source"
            )
        self.source, self.image, self.seed = source, image, seed
        self.rank, self.world, self.num_workers = rank, world, num_workers
        self.local = batch_size // world
        self.start = {int(k): tuple(int(x) for x in v) for k, v in (start or {}).items()}
        self.rotate, self.views, self.augment = rotate, views, augment or AugmentConfig()
        self.labels, self.extras, self.keys, self.epochs = label_task is not None, tuple(extras), keys, epochs

    def _slot(self) -> int:
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if n != max(self.num_workers, 1):
            raise InputError(f"ShardStream built for {self.num_workers} workers runs in {n}")
        return self.rank * n + (w + self.rotate) % n

    def _epoch(self, slot: int, epoch: int) -> Iterator[dict[str, Any]]:
        """Slot's raw samples of ``epoch`` after the shuffle buffer (undecoded); a shard that breaks
        off adds a ``{"__bad_shard__": url}`` marker (not a sample) where it broke."""
        order = np.random.default_rng([self.seed, _TAG_ORDER, epoch]).permutation(len(self.source.urls))
        rng = np.random.default_rng([self.seed, _TAG_BUFFER, epoch, slot])
        size, buf = max(self.source.shuffle_buffer, 1), []
        for i in order[slot :: self.slots]:
            broken: Counter[str] = Counter()
            for raw in iter_shard(self.source.urls[i], broken):
                if len(buf) < size:
                    buf.append(raw)
                    continue
                j = int(rng.integers(size))
                yield buf[j]
                buf[j] = raw
            if broken:
                yield {"__bad_shard__": self.source.urls[i]}
        for j in rng.permutation(len(buf)):
            yield buf[j]

    def _positions(self, slot: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """``(epoch, position after, raw sample)`` from the slot's saved place onwards (samples
        before it are re-read undecoded, and their skips were counted by the earlier run)."""
        epoch, pos = self.start.get(slot, (0, 0, 0))[:2]
        while self.epochs is None or epoch < self.epochs:
            seen = 0
            for raw in self._epoch(slot, epoch):
                marker = "__bad_shard__" in raw
                seen += not marker
                if (seen >= pos) if marker else (seen > pos):
                    yield epoch, seen, raw
            if seen == 0:
                raise DataError(f"{self.source.name}: stream {slot} read no samples in epoch {epoch}")
            epoch, pos = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot = self._slot()
        made = self.start.get(slot, (0, 0, 0))[2]
        stream = self._positions(slot)
        while True:
            rows, place, skips = [], None, Counter[str]()
            for epoch, pos, raw in stream:
                place = (epoch, pos)
                if "__bad_shard__" in raw:
                    skips["bad shard"] += 1
                    continue
                try:
                    rows.append(self.source.decode(raw, self.image, (self.seed, slot, epoch, pos)))
                except SkipSample as err:
                    skips[err.reason] += 1
                if len(rows) == self.local:
                    break
            if not rows:
                return
            made += 1
            yield self._batch(rows, slot, made, place, skips)

    def _batch(self, rows: list[dict], slot: int, made: int, place: Any, skips: Counter[str]) -> dict:
        images = torch.stack([r["image"] for r in rows])
        item: dict[str, Any] = {"image": images, "text": [r["text"] for r in rows]}
        if self.views:
            item.update(
                make_views(
                    images, self.views, self.augment, self.seed, made * self.slots + slot, 0, len(rows)
                )
            )
        if self.labels:
            item["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        for f in self.extras:
            vals = [r[f] for r in rows]
            is_text = f in self.source.text_fields
            item[f] = [str(v) for v in vals] if is_text else torch.tensor(vals, dtype=torch.float32)
        if self.keys:
            item["__key__"] = [r["__key__"] for r in rows]
        item[SEED_KEY] = (self.seed, slot, made)
        item[SKIPS_KEY] = dict(skips)
        item[POS_KEY] = {slot: [place[0], place[1], made]}
        return item


def _manifest(urls: tuple[str, ...]) -> dict[str, Any]:
    path = Path(urls[0]).parent / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def make_webdataset(
    split: str,
    urls: str | Sequence[str],
    image_keys: Sequence[str] = ("jpg", "jpeg", "png", "webp"),
    text_key: str = "txt",
    label_key: str | None = None,
    json_fields: Sequence[str] = (),
    text_fields: Sequence[str] = (),
    shuffle_buffer: NonNegInt = 1000,
    classnames: Sequence[str] = (),
    templates: Sequence[str] = ("a photo of a {}.",),
) -> ShardSource:
    """The ``split``'s tar shards as a :class:`ShardSource`. Class names default to the
    ``classes`` of a ``manifest.json`` beside the shards (written by ``contrastkit data shards``)."""
    paths = expand_urls(urls)
    if shuffle_buffer < 0:
        raise ConfigError(f"webdataset shuffle_buffer must be >= 0, got {shuffle_buffer}")
    manifest = _manifest(paths)
    names = tuple(classnames) or tuple(manifest.get("classes", ()))
    return ShardSource(
        paths,
        tuple(image_keys),
        text_key,
        label_key,
        tuple(json_fields),
        tuple(text_fields),
        shuffle_buffer,
        names,
        tuple(templates),
        name=f"{Path(paths[0]).parent.name}:{split}",
    )
