"""Typed configuration of a data source and its splits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from contrastkit.core.errors import ConfigError
from contrastkit.data.augment import AugmentConfig
from contrastkit.data.images import ImageConfig
from contrastkit.data.jigsaw import JigsawConfig
from contrastkit.data.long_captions import LongCaptionConfig, check_long_caption_data
from contrastkit.data.relations import check_relations
from contrastkit.data.speech import SpeechConfig
from contrastkit.data.text_views import TextViewsConfig
from contrastkit.data.textaug import TextAugConfig

__all__ = ["DataConfig", "SamplerConfig", "SourceConfig"]

_SIGNAL = re.compile(r"^[a-z][a-z0-9_]*$")  # a signal's name (contrastkit.data.signals)
_KEYS = {"labels", "targets", "text_neg", "text_pos"}  # batch keys no modality may take


@dataclass(frozen=True)
class SourceConfig:
    """One source of a training mixture (``data.sources``): a data set or file source by name,
    its parameters, and its weight (normalised over the mixture)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ConfigError(f"data.sources: weight of {self.name!r} must be >= 0, got {self.weight}")


@dataclass(frozen=True)
class SamplerConfig:
    """Which batch sampler builds the training batches (``data.sampler``): a name of
    :data:`contrastkit.data.samplers.SAMPLERS` and its parameters (docs/data.md, "Batch samplers")."""

    name: str = "random"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """Which data set, with which parameters, split how.

    ``params`` go to every split's builder; ``splits[split]`` adds per-split parameters
    (e.g. Shapes' ``n``). ``train_split`` is trained on; ``eval_splits`` are evaluated.
    ``label_task``: put this class task's labels in every batch as ``labels`` (for losses that
    use them, e.g. SupCon); images the task does not cover get unique labels (no positives).
    ``modalities``: the batch keys a source provides, from ``image``, ``text``, ``attributes``
    (a float vector per image; Shapes has one); ``views``: ``0`` for none, ``V ≥ 1`` adds
    ``"image@0" … "image@{V-1}"`` — augmentations of the images configured by ``augment``, seeded
    by ``(train.seed, step, view)`` so resume is exact (docs/architecture.md).
    ``concepts``: put multi-hot caption concepts in every batch as ``targets [B, C]`` (CatLIP,
    TagAlign) of training batches: the words of the sampled caption over the training split's
    sorted non-stop-word vocabulary (plain lower-cased words, no lemmas: "dog" ≠ "dogs";
    :mod:`contrastkit.core.concepts`). Evaluation does not use them. ``concepts_unknown``: the
    share in [0, 1) of each image's concept labels marked −1 = unknown (partial labels for
    ``multi_focal``), the same entries of an image in every batch (a hash of seed, image, concept).
    ``relations``: class task → relation description (``{color: "the same colour"}``); each
    training row draws one and the batch carries ``relation`` (its text, embedded by the text
    tower) and ``labels`` (relation and class: rows related under it share one), the ``rcml``
    inputs (:mod:`contrastkit.data.relations`).

    File sources (``csv``, ``tsv``, ``parquet``, ``imagefolder``, ``hf``, ``webdataset``;
    docs/data.md): ``image`` is how their images are decoded and transformed (size, training
    crop/flip/jitter); ``extras``: extra columns (or shard json fields) to put in batches;
    ``text_augment``: caption augmentation of training batches (CLIP🚀's EDA recipe, null = off);
    ``text_negatives``: one hard-negative caption per training pair as batch key ``text_neg`` (for
    losses that take ``negatives``, e.g. ``clip_in``): ``swap`` generates it from the sampled
    caption (:func:`contrastkit.data.negatives.swap_negative`), a column name (listed in ``extras``)
    reads it from the data;
    ``max_skip_fraction``: stop when more than this fraction of the samples read were unusable
    (counted from ``skip_grace`` samples on). ``sources``: train on a weighted mixture of sources
    instead (each built for ``train_split``; ``mix``: ``rows`` = every batch in proportion,
    ``batch`` = one source per batch, ZeroVL); evaluation splits still come from ``name``.
    ``sampler``: which examples meet in a training batch (default ``random``: today's shuffled
    epochs; ``class_mix``, ``batch_binding``, ``single_source``, ``source_mix``).
    ``long_captions``: split each sampled caption into sentences and put ``k`` of them (plus the
    whole caption with ``full``) in the batch as positives of the image (DreamLIP,
    :mod:`contrastkit.data.long_captions`; null = off).
    Besides ``image``/``text``/``attributes``, ``modalities`` may name a data set's **signals**
    (``audio``, ``series``, ``vectors``…; :mod:`contrastkit.data.signals`). ``missing``:
    ``{modality: fraction}`` of the training split's samples that lack that modality (the same
    samples every epoch, drawn from the data's ``params.seed``; batches then carry
    ``present:<modality>``). ``speech``: speak each sample's first caption with espeak-ng in the
    configured voices, speeds and pitches and add the log-mel features as the signal ``audio``
    (list ``audio`` in ``modalities``; :mod:`contrastkit.data.speech`, docs/modalities.md).
    ``text_views``: K text views ``text@0 … text@{K−1}`` of each row's class (``label_task``), one per
    prompt template, with optional demonstration prefixes, for ``supcon_text_views``
    (:mod:`contrastkit.data.text_views`; null = off).
    ``jigsaw``: ``{grid: g}`` turns every training batch's images into Jigsaw Clustering montages
    and adds ``labels`` / ``positions`` ``[B·g²]`` (for the ``jigsaw`` loss; :mod:`contrastkit.data.jigsaw`).
    """

    name: str = "shapes"
    params: dict[str, Any] = field(default_factory=lambda: {"image_size": 32, "seed": 0})
    splits: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "train": {"n": 30000},
            "val": {"n": 1000},
            "test": {"n": 2000},
            "unseen": {"n": 1000},
        }
    )
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("test", "unseen")
    num_workers: int = 0
    label_task: str | None = None
    modalities: tuple[str, ...] = ("image", "text")
    views: int = 0
    concepts: bool = False
    concepts_unknown: float = 0.0
    relations: dict[str, str] = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    extras: tuple[str, ...] = ()
    text_augment: TextAugConfig | None = None
    max_skip_fraction: float = 0.01
    skip_grace: int = 1000
    sources: tuple[SourceConfig, ...] = ()
    mix: Literal["rows", "batch"] = "rows"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    text_negatives: str | None = None
    long_captions: LongCaptionConfig | None = None
    missing: dict[str, float] = field(default_factory=dict)
    speech: SpeechConfig | None = None
    text_views: TextViewsConfig | None = None
    jigsaw: JigsawConfig | None = None

    def __post_init__(self) -> None:
        known = ("image", "text", "attributes")
        unknown = [m for m in self.modalities if m not in known and not _SIGNAL.match(m)]
        if unknown or len(set(self.modalities)) != len(self.modalities) or set(self.modalities) & _KEYS:
            raise ConfigError(
                f"data.modalities must be distinct names: {list(known)} or a signal of the data set "
                f"(a lower-case identifier such as audio, series, vectors), got {list(self.modalities)}"
            )
        for m, f in self.missing.items():
            if m not in self.modalities:
                raise ConfigError(
                    f"data.missing names {m!r}, which is not in data.modalities {list(self.modalities)}"
                )
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
                raise ConfigError(f"data.missing.{m} must be a fraction in [0, 1), got {f!r}")
        if not self.modalities and self.views == 0:
            raise ConfigError("data.modalities is empty and data.views is 0: batches would be empty")
        if self.views < 0:
            raise ConfigError(f"data.views must be >= 0 (0 = no augmented views), got {self.views}")
        if self.sources and not sum(src.weight for src in self.sources) > 0:
            raise ConfigError("data.sources: the weights sum to 0")
        for s in (*(() if self.sources else (self.train_split,)), *self.eval_splits):
            if s not in self.splits:
                raise ConfigError(f"data split {s!r} is not declared in data.splits {sorted(self.splits)}")
        check_relations(self.relations, self.label_task)
        if not 0 <= self.concepts_unknown < 1:
            raise ConfigError(f"data.concepts_unknown must be in [0, 1), got {self.concepts_unknown}")
        if self.concepts_unknown and not self.concepts:
            raise ConfigError("data.concepts_unknown marks concept labels unknown: needs data.concepts: true")
        if not 0 <= self.max_skip_fraction <= 1:
            raise ConfigError(f"data.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")
        if self.skip_grace < 0:
            raise ConfigError(f"data.skip_grace must be >= 0, got {self.skip_grace}")
        clash = [e for e in self.extras if e in (*known, "labels", "targets") or e.startswith("_")]
        if clash:
            raise ConfigError(f"data.extras {clash} clash with batch keys; rename those columns")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        neg = self.text_negatives
        if neg is not None and neg != "swap" and neg not in self.extras:
            raise ConfigError(
                f"data.text_negatives must be 'swap' (generated) or a text column listed in data.extras "
                f"{list(self.extras)}, got {neg!r}"
            )
        check_long_caption_data(self.long_captions, self.modalities, neg, self.text_augment)
        if self.text_views is not None and (self.label_task is None or "text" not in self.modalities):
            raise ConfigError("data.text_views renders each row's class: it needs data.label_task and text")
        if self.text_views is not None and self.relations:  # both would set the batch labels
            raise ConfigError("data.text_views and data.relations cannot be combined (unset one)")
        if self.jigsaw is not None:
            _check_jigsaw_data(self)
        if self.speech is not None and "audio" not in self.modalities:
            raise ConfigError(
                f"data.speech makes the modality 'audio': add it to data.modalities {list(self.modalities)}"
            )

    def split_params(self, split: str) -> dict[str, Any]:
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; declared: {sorted(self.splits)}")
        return {**self.params, **self.splits[split]}

    @classmethod
    def tiny(cls) -> DataConfig:
        return cls(
            params={"image_size": 32, "seed": 0},
            splits={"train": {"n": 512}, "test": {"n": 128}, "unseen": {"n": 64}},
        )


def _check_jigsaw_data(cfg: DataConfig) -> None:
    """``data.jigsaw`` replaces the images by montages and sets ``labels``: it needs images and no
    other source of labels, views or image masks."""
    clash = [
        k
        for k, on in (
            ("data.views", cfg.views),
            ("data.label_task", cfg.label_task),
            ("data.relations", cfg.relations),
            ("data.missing.image", "image" in cfg.missing),
        )
        if on
    ]
    if "image" not in cfg.modalities or clash:
        raise ConfigError(
            "data.jigsaw makes montages of the images and sets the batch labels: it needs 'image' in "
            f"data.modalities {list(cfg.modalities)}"
            + (f" and cannot be combined with {clash}" if clash else "")
        )
