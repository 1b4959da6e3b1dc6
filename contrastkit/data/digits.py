"""Digits: scikit-learn's bundled ``load_digits`` (1,797 real 8×8 handwritten digits) as pairs.

A second built-in data set of *real* images, no download: each digit image gets captions from
templates ("a handwritten seven", "the digit 7"). Splits are a deterministic stratified-by-seed
permutation: 70% train, 10% val, 20% test.
"""

from __future__ import annotations

import numpy as np
import torch

from contrastkit.core.errors import InputError
from contrastkit.core.registry import NonNegInt, PositiveInt
from contrastkit.data.pairs import ClassTask, PairSet

__all__ = ["DIGIT_WORDS", "make_digits"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEMPLATES = ("a handwritten {word}", "the digit {num}", "a picture of the number {word}")
_FRACTIONS = {"train": (0.0, 0.7), "val": (0.7, 0.8), "test": (0.8, 1.0)}


def make_digits(split: str = "train", image_size: PositiveInt = 32, seed: NonNegInt = 0) -> PairSet:
    """The ``split`` part of sklearn's digits, upscaled (nearest) to ``image_size`` RGB."""
    from sklearn.datasets import load_digits  # heavy import, only when this data set is used

    if split not in _FRACTIONS:
        raise InputError(f"unknown digits split {split!r}; available: {sorted(_FRACTIONS)}")
    if image_size % 8:
        raise InputError(f"image_size must be a multiple of 8, got {image_size}")
    bunch = load_digits()
    images, targets = bunch.images, bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(targets))
    lo, hi = _FRACTIONS[split]
    idx = order[int(lo * len(order)) : int(hi * len(order))]
    pix = np.round(images[idx] * (255.0 / 16.0)).astype(np.uint8)
    k = image_size // 8
    pix = np.kron(pix, np.ones((1, k, k), dtype=np.uint8))
    rgb = np.repeat(pix[:, None], 3, axis=1)
    captions = tuple(tuple(t.format(word=DIGIT_WORDS[d], num=d) for t in _TEMPLATES) for d in targets[idx])
    task = ClassTask(DIGIT_WORDS, ("a handwritten {}", "a picture of the number {}"), targets[idx])
    return PairSet(torch.from_numpy(rgb.copy()), captions, {"digit": task}, name=f"digits/{split}")
