"""Data: pair sets keyed by modality, built-in sources, a resumable loader.

Sources are registered by name; ``build(name, split, **params)`` returns a :class:`PairSet`.
"""

from __future__ import annotations

from typing import Any

from contrastkit.core.registry import Registry
from contrastkit.data.collate import make_loader
from contrastkit.data.config import DataConfig, SamplerConfig
from contrastkit.data.digits import make_digits
from contrastkit.data.emoji import make_emoji
from contrastkit.data.fashion import make_fashion_mnist
from contrastkit.data.pairs import (
    ClassTask,
    PairBatchSampler,
    PairDataset,
    PairSet,
    english_articles,
)
from contrastkit.data.sensors import SPLITS as SERIES_SPLITS
from contrastkit.data.sensors import make_series
from contrastkit.data.shape_bags import make_shape_bags
from contrastkit.data.shapes import SPLITS as SHAPES_SPLITS
from contrastkit.data.shapes import make_shapes
from contrastkit.data.vectors import make_vectors

__all__ = [
    "DATASETS",
    "DATASET_SPLITS",
    "SAMPLERS",
    "SOURCES",
    "ClassTask",
    "DataConfig",
    "ImageConfig",
    "PairBatchSampler",
    "PairDataset",
    "PairSet",
    "PairTable",
    "SamplerConfig",
    "SamplerContext",
    "ShardSource",
    "Source",
    "build",
    "check_data",
    "english_articles",
    "load_split",
    "make_digits",
    "make_emoji",
    "make_fashion_mnist",
    "make_loader",
    "make_series",
    "make_shape_bags",
    "make_shapes",
    "make_vectors",
    "open_split",
    "source_captions",
    "train_loader",
]

DATASETS: Registry[PairSet] = Registry("data set")
DATASETS.register("shapes")(make_shapes)
DATASETS.register("digits")(make_digits)
DATASETS.register("fashion_mnist")(make_fashion_mnist)
DATASETS.register("emoji")(make_emoji)
DATASETS.register("shape_bags")(make_shape_bags)
DATASETS.register("vectors")(make_vectors)
DATASETS.register("series")(make_series)

# the splits of each built-in set (its builder refuses others): checked before anything is generated
DATASET_SPLITS: dict[str, tuple[str, ...]] = {
    "shapes": SHAPES_SPLITS,
    "digits": ("train", "val", "test"),
    "fashion_mnist": ("train", "val", "test"),
    "emoji": ("train", "val", "test"),
    "shape_bags": SHAPES_SPLITS,
    "series": SERIES_SPLITS,
}


def build(name: str, split: str, **params: Any) -> PairSet:
    """The ``split`` of data set ``name``; ``params`` are checked against its builder."""
    return DATASETS.build(name, split=split, **params)


# file sources build on the registry above, so they are imported after it
from contrastkit.data.images import ImageConfig  # noqa: E402
from contrastkit.data.loading import (  # noqa: E402
    SOURCES,
    Source,
    check_data,
    load_split,
    open_split,
    source_captions,
    train_loader,
)
from contrastkit.data.samplers import SAMPLERS, SamplerContext  # noqa: E402
from contrastkit.data.shards import ShardSource  # noqa: E402
from contrastkit.data.table import PairTable  # noqa: E402
