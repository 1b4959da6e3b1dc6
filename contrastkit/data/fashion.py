"""Fashion-MNIST (real 28×28 clothing photos, 10 classes) from the Debian package as pairs.

Installed by ``make setup`` (``apt-get install dataset-fashion-mnist``): IDX ``.gz`` files under
``/usr/share/datasets/fashion-mnist`` (override with ``$CONTRASTKIT_FASHION_MNIST``). Captions are
class names in *training* templates; the zero-shot task uses *different* templates
(:data:`EVAL_TEMPLATES`), so zero-shot accuracy measures transfer to unseen prompts.

Splits: ``train`` = the first 55,000 of the official training set, ``val`` = its last 5,000,
``test`` = the official 10,000. ``exclude`` drops the images of the named classes (held-out
classes for zero-shot transfer to classes never trained); ``n`` keeps a seeded random subset.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from annotated_types import Ge

from contrastkit.core.errors import InputError
from contrastkit.core.registry import NonNegInt, PositiveInt
from contrastkit.data.locate import locate_data
from contrastkit.data.pairs import ClassTask, PairSet, english_articles

__all__ = ["CLASSES", "EVAL_TEMPLATES", "TRAIN_TEMPLATES", "fashion_dir", "make_fashion_mnist", "read_idx"]

CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
TRAIN_TEMPLATES = ("a photo of a {}", "a {}", "a picture of the {}", "a black and white photo of a {}")
EVAL_TEMPLATES = (
    "an image of a {}",
    "a product photo of a {}",
    "this is a {}",
    "a low resolution photo of the {}",
)
_FILES = {"train": "train", "val": "train", "test": "t10k"}
_TRAIN_SIZE = 55_000
_INSTALL = "apt-get install -y dataset-fashion-mnist"


def fashion_dir() -> Path:
    """The Fashion-MNIST folder (``$CONTRASTKIT_FASHION_MNIST`` or the Debian package's)."""
    return locate_data(
        "CONTRASTKIT_FASHION_MNIST",
        [Path("/usr/share/datasets/fashion-mnist")],
        "t10k-images-idx3-ubyte.gz",
        "Fashion-MNIST",
        _INSTALL,
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (``.gz`` or raw): magic ``00 00 08 ndim``, big-endian int32 dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise InputError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">i4"))
    data = np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise InputError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def make_fashion_mnist(
    split: str = "train",
    image_size: Annotated[int, Ge(28)] = 28,
    n: PositiveInt | None = None,
    exclude: tuple[str, ...] | list[str] = (),
    seed: NonNegInt = 0,
) -> PairSet:
    """The ``split`` of Fashion-MNIST as RGB ``uint8 [N, 3, image_size, image_size]`` pairs with
    one caption per training template, and the 10-way task ``"class"`` (eval templates)."""
    if split not in _FILES:
        raise InputError(f"unknown Fashion-MNIST split {split!r}; available: {sorted(_FILES)}")
    unknown = [c for c in exclude if c not in CLASSES]
    if unknown:
        raise InputError(f"unknown Fashion-MNIST class(es) {unknown}; classes: {list(CLASSES)}")
    if image_size < 28:
        raise InputError(f"image_size must be >= 28 (images are 28x28), got {image_size}")
    folder = fashion_dir()
    images = read_idx(folder / f"{_FILES[split]}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{_FILES[split]}-labels-idx1-ubyte.gz").astype(np.int64)
    if split != "test":
        part = slice(0, _TRAIN_SIZE) if split == "train" else slice(_TRAIN_SIZE, None)
        images, labels = images[part], labels[part]
    keep = ~np.isin(labels, [CLASSES.index(c) for c in exclude])
    idx = np.flatnonzero(keep)
    if n is not None:
        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        idx = np.sort(np.random.default_rng(seed).permutation(idx)[:n])
    pix = torch.from_numpy(images[idx].copy())
    pad = image_size - 28
    if pad:
        pix = torch.nn.functional.pad(pix, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    rgb = pix[:, None].expand(-1, 3, -1, -1).contiguous()
    y = labels[idx]
    captions = tuple(tuple(english_articles(t.format(CLASSES[c])) for t in TRAIN_TEMPLATES) for c in y)
    task = ClassTask(CLASSES, EVAL_TEMPLATES, y, fix_articles=True)
    return PairSet(rgb, captions, {"class": task}, name=f"fashion_mnist/{split}")
