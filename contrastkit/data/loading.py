"""One entry point from a data config to evaluation sets and training loaders, for every source.

* :func:`open_split` — the configured split as a :class:`~contrastkit.data.pairs.PairSet` (a
  built-in set), a :class:`~contrastkit.data.table.PairTable` (``csv``, ``tsv``, ``parquet``,
  ``imagefolder``, ``hf``) or a :class:`~contrastkit.data.shards.ShardSource` (``webdataset``).
* :func:`load_split` — the split decoded in memory as a PairSet (what evaluation uses); file
  sources are decoded with the evaluation transform of ``data.image``.
* :func:`train_loader` — the infinite, resumable stream of training batches of any of them.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from contrastkit.core.errors import ConfigError, MissingFileError
from contrastkit.core.registry import Registry, check_params
from contrastkit.data.collate import Collate
from contrastkit.data.config import DataConfig
from contrastkit.data.folders import make_hf, make_imagefolder
from contrastkit.data.mix import MixDataset
from contrastkit.data.pairs import PairDataset, PairSet
from contrastkit.data.relations import RELATION_KEY, Relations
from contrastkit.data.samplers import build_sampler, check_sampler, context_of
from contrastkit.data.shards import ShardSource, ShardStream, make_webdataset
from contrastkit.data.signals import with_missing
from contrastkit.data.speech import SpeechConfig, distinct_speech_features
from contrastkit.data.table import PAIR_KEY, PairTable, TableDataset
from contrastkit.data.tabular import make_csv, make_parquet, make_tsv
from contrastkit.data.text_views import TextViews, view_keys

__all__ = [
    "SOURCES",
    "Mixture",
    "Source",
    "check_data",
    "load_split",
    "open_split",
    "source_captions",
    "task_classnames",
    "train_loader",
]


@dataclass(frozen=True)
class Mixture:
    """The training split of every ``data.sources`` entry, with its weight (:mod:`contrastkit.data.mix`)."""

    parts: tuple[PairSet | PairTable, ...]
    weights: tuple[float, ...]
    name: str = "mixture"

    @property
    def captions(self) -> tuple[tuple[str, ...], ...]:
        return tuple(c for p in self.parts for c in p.captions)


Source = PairSet | PairTable | ShardSource | Mixture

SOURCES: Registry[PairTable | ShardSource] = Registry("data source")
SOURCES.register("csv")(make_csv)
SOURCES.register("tsv")(make_tsv)
SOURCES.register("parquet")(make_parquet)
SOURCES.register("imagefolder")(make_imagefolder)
SOURCES.register("hf")(make_hf)
SOURCES.register("webdataset")(make_webdataset)


# the local file or folder each file source reads (webdataset urls may be remote or brace patterns)
_SOURCE_PATHS = {
    "csv": ("path", "file"),
    "tsv": ("path", "file"),
    "parquet": ("path", "file"),
    "imagefolder": ("root", "folder"),
    "hf": ("path", "datasets folder"),
}


def check_data(cfg: DataConfig, splits: Sequence[str]) -> None:
    """Refuse, before anything is generated or read, what ``cfg`` alone gets wrong for ``splits``:
    an undeclared split, an unknown data set or source, a parameter its builder does not take (or
    out of range), a missing data file or folder, a split a built-in set does not have."""
    from contrastkit.data import DATASET_SPLITS, DATASETS

    check_sampler(cfg)
    for split in dict.fromkeys(splits):
        if cfg.sources and split == cfg.train_split:  # a mixture: each source for the train split
            named = [(src.name, {**src.params}, f"data.sources {src.name!r}") for src in cfg.sources]
        else:
            named = [(cfg.name, cfg.split_params(split), f"data split {split!r}")]
        for name, given, where in named:
            if name in SOURCES:
                check_params(SOURCES.get(name), {"split": split, **given}, f"data source {name!r} ({where})")
                key, kind = _SOURCE_PATHS.get(name, (None, ""))
                path = Path(str(given[key])).expanduser() if key in given else None
                if path is not None and not (path.is_dir() if kind.endswith("folder") else path.is_file()):
                    raise MissingFileError(f"{name} source: no {kind} at {path} (data params {key}, {where})")
                continue
            builder = DATASETS.get(name)
            check_params(builder, {"split": split, **given}, f"data set {name!r} ({where})")
            known = DATASET_SPLITS.get(name)
            if known is not None and split not in known:
                raise ConfigError(f"data set {name!r} has no split {split!r}; available: {list(known)}")


def open_split(cfg: DataConfig, split: str, progress: bool = False) -> Source:
    """The ``split`` of ``cfg``'s data, undecoded for file sources."""
    from contrastkit.data import DATASETS

    if cfg.sources and split == cfg.train_split:
        parts = []
        for src in cfg.sources:
            one = dataclasses.replace(
                cfg, name=src.name, params=src.params, splits={split: {}}, eval_splits=(), sources=()
            )
            part = open_split(one, split, progress)
            if isinstance(part, (ShardSource, Mixture)):
                raise ConfigError(f"data.sources: {src.name!r} streams shards and cannot be mixed here")
            parts.append(part)
        return Mixture(tuple(parts), tuple(s.weight for s in cfg.sources))
    params = cfg.split_params(split)
    if cfg.name in SOURCES:
        source = SOURCES.build(cfg.name, split=split, **params)
    else:
        if "progress" in inspect.signature(DATASETS.get(cfg.name)).parameters:
            params.setdefault("progress", progress)
        source = DATASETS.build(cfg.name, split=split, **params)
    if cfg.speech is not None:  # data.speech: each sample's first caption, spoken (a shared table)
        source = _with_speech(source, cfg.speech, progress)
    if cfg.missing and split == cfg.train_split:  # data.missing: training samples without a modality
        if not isinstance(source, PairSet):
            raise ConfigError(
                f"data.missing needs a data set held in memory; {cfg.name!r} is read from files"
            )
        seed = int(params.get("seed", 0))
        present = with_missing(source.present, cfg.missing, len(source), seed)
        source = dataclasses.replace(source, present=present)
    return source


def _with_speech(source: Source, speech: SpeechConfig, progress: bool) -> PairSet:
    """``source`` with the signal ``audio``: log-mel features of each sample's first caption in
    every variant of ``speech``, held once per distinct caption (``PairSet.signal_index``)."""
    if not isinstance(source, PairSet):
        raise ConfigError("data.speech needs a data set held in memory (a built-in set), not files")
    table, index = distinct_speech_features([c[0] for c in source.captions], speech, progress=progress)
    return dataclasses.replace(
        source,
        signals={**source.signals, "audio": table},
        signal_index={**source.signal_index, "audio": index},
    )


def load_split(cfg: DataConfig, split: str, progress: bool = False) -> PairSet:
    """The ``split`` of ``cfg``'s data as an in-memory PairSet (file sources decoded with the
    evaluation transform; unusable rows are dropped with a warning that counts them)."""
    source = open_split(cfg, split, progress)
    if isinstance(source, PairSet):
        return source
    if isinstance(source, Mixture):
        raise ConfigError("a mixture of sources is for training; evaluate each source on its own")
    pairs, skips = source.pairset(cfg.image, progress)
    if skips:
        warnings.warn(f"{source.name}: skipped {dict(skips)}", stacklevel=2)
    return pairs


def source_captions(source: Source) -> list[str]:
    """Training captions to build a word tokenizer from (a shard source: the first 50,000)."""
    if isinstance(source, ShardSource):
        return source.captions()
    parts = source.parts if isinstance(source, Mixture) else (source,)
    pairs = [
        str(v)
        for p in parts
        if isinstance(p, PairTable) and PAIR_KEY in p.extras
        for v in p.extras[PAIR_KEY].values
    ]
    return [c for caps in source.captions for c in caps] + pairs


def train_loader(
    source: Source,
    cfg: DataConfig,
    tokenize: Callable[[list[str]], torch.Tensor] | None,
    batch_size: int,
    seed: int,
    start: int = 0,
    shard: tuple[int, int] = (0, 1),
    stream_state: Mapping[int, Sequence[int]] | None = None,
    truncated: Callable[[list[str]], int] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """The infinite stream of training batches starting after ``start`` consumed batches (this
    rank's shard of each global batch). ``stream_state``: a shard source's saved slot places;
    ``truncated``: counts captions beyond the text context; ``pin_memory``: for a CUDA device."""
    if "text" in cfg.modalities and tokenize is None:
        raise ConfigError("batches with text need a tokenize function")
    sampler = None
    if not isinstance(source, ShardSource):  # indexed sources: batches from data.sampler
        sampler = _sampler(source, cfg, batch_size, seed, start, shard)
    collate = _collate(source, cfg, tokenize, truncated, getattr(sampler, "transform", None))
    workers = cfg.num_workers
    common: dict[str, Any] = {
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "collate_fn": collate,
        "pin_memory": pin_memory,  # page-locked batches: the copy to a GPU overlaps the step
    }
    if isinstance(source, ShardSource):
        _refuse_for_shards(cfg)
        stream = ShardStream(
            source,
            cfg.image,
            batch_size,
            seed,
            shard,
            workers,
            stream_state,
            start,
            cfg.views,
            cfg.augment,
            cfg.label_task,
            cfg.extras,
        )
        return DataLoader(stream, batch_size=None, **common)
    if isinstance(source, Mixture):
        dataset = MixDataset([_indexed(p, cfg, seed) for p in source.parts])
        return DataLoader(dataset, batch_sampler=sampler, **common)
    return DataLoader(_indexed(source, cfg, seed), batch_sampler=sampler, **common)


def _sampler(
    source: PairSet | PairTable | Mixture,
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    start: int,
    shard: tuple[int, int],
) -> Sampler:
    """``data.sampler`` over an indexed source (one, or a mixture's parts with their weights)."""
    parts = source.parts if isinstance(source, Mixture) else (source,)
    weights = source.weights if isinstance(source, Mixture) else None
    tasks = {} if isinstance(source, Mixture) else dict(source.tasks)
    n_caps = [[len(c) for c in p.captions] for p in parts]
    captions = [p.captions for p in parts]
    per_source = [dict(p.tasks) for p in parts] if isinstance(source, Mixture) else []
    ctx = context_of(n_caps, cfg, batch_size, seed, start, shard, weights, tasks, captions, per_source)
    return build_sampler(cfg.sampler, ctx)


def _collate(
    source: Source,
    cfg: DataConfig,
    tokenize: Callable[[list[str]], torch.Tensor] | None,
    truncated: Callable[[list[str]], int] | None,
    transform: Any,
) -> Collate:
    """The batch collator: which keys are tokenised as text, text augmentation, the sampler's
    batch transform (e.g. mixup), hard negatives, long captions and text views."""
    augment_text = None
    if cfg.text_augment is not None:
        from contrastkit.data.textaug import TextAugmenter

        augment_text = TextAugmenter(cfg.text_augment)
    text_extras = _text_extras(source, cfg.extras)
    negatives = cfg.text_negatives  # a column becomes batch key text_neg (tokenised as text)
    text_keys = (
        "text",
        *(e for e in text_extras if e != negatives),
        *(() if negatives is None else ("text_neg",)),
        *(() if cfg.long_captions is None else ("text_pos",)),  # data.long_captions: [B, M-1, L]
        *((RELATION_KEY,) if cfg.relations else ()),  # data.relations: tokenised like captions
        *(() if cfg.text_views is None else view_keys(cfg.text_views)),  # data.text_views: text@k
    )
    collate = Collate(tokenize, text_keys, truncated, augment_text, transform, negatives, cfg.long_captions)
    collate.text_views = _text_views(source, cfg)
    return collate


def _refuse_for_shards(cfg: DataConfig) -> None:
    """What webdataset shards, streamed in order without an index, cannot do."""
    if cfg.sampler.name != "random":
        raise ConfigError(
            f"data.sampler {cfg.sampler.name!r} needs an indexed source; webdataset shards stream "
            "in order and take the default sampler (random)"
        )
    if cfg.concepts:
        raise ConfigError("data.concepts needs the whole caption vocabulary: not available for webdataset")
    if cfg.relations:
        raise ConfigError("data.relations needs the class tasks of an indexed source: not for webdataset")
    if cfg.jigsaw is not None:
        raise ConfigError("data.jigsaw needs an indexed source (built-in set or file table), not webdataset")


def _indexed(source: PairSet | PairTable, cfg: DataConfig, seed: int) -> PairDataset:
    args = (cfg.label_task, cfg.modalities, cfg.views, cfg.augment, seed, cfg.concepts)
    if isinstance(source, PairTable):
        dataset: PairDataset = TableDataset(source, cfg.image, *args, extras=cfg.extras)
    elif cfg.extras:
        raise ConfigError(f"data.extras {list(cfg.extras)}: built-in set {source.name!r} has no extra column")
    else:
        dataset = PairDataset(source, *args)
    dataset.unknown_share = cfg.concepts_unknown
    if cfg.relations:
        dataset.relations = Relations.of(source.tasks, cfg.relations, source.name)
    dataset.jigsaw = cfg.jigsaw  # None: the images as they are
    return dataset


def task_classnames(source: Source, label_task: str | None, what: str) -> tuple[str, ...]:
    """The class names of task ``label_task`` of ``source``; a :class:`ConfigError` naming ``what``
    (the option that needs them) when the source has no such task (a mixture has none)."""
    task = getattr(source, "tasks", {}).get(label_task) if not isinstance(source, Mixture) else None
    if task is None:
        raise ConfigError(
            f"{what} needs the class names of data.label_task {label_task!r}: a single indexed source "
            "(built-in set or file table) with that task"
        )
    return tuple(task.classnames)


def _text_views(source: Source, cfg: DataConfig) -> TextViews | None:
    """``data.text_views``' collate step, with the class names of ``data.label_task``."""
    if cfg.text_views is None:
        return None
    return TextViews(cfg.text_views, task_classnames(source, cfg.label_task, "data.text_views"))


def _text_extras(source: Source, extras: Sequence[str]) -> tuple[str, ...]:
    if isinstance(source, ShardSource):
        return tuple(e for e in extras if e in source.text_fields)
    parts = source.parts if isinstance(source, Mixture) else (source,)
    tables = [p for p in parts if isinstance(p, PairTable)]
    pair = (PAIR_KEY,) if any(PAIR_KEY in t.extras for t in tables) else ()
    return pair + tuple(
        e for e in extras if any(e in t.extras and t.extras[e].kind == "text" for t in tables)
    )
