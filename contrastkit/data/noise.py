"""Injected caption noise: a known fraction of images get another image's captions.

For measuring what noisy-pair methods detect and how much they help, a data set needs pairs that
are known to be wrong. :func:`caption_swaps` picks ``round(fraction·n)`` images with a seeded
generator and passes their caption lists round a random cycle — image ``p[t]`` gets the captions of
image ``p[t+1]`` (the last gets the first's) — so every chosen image ends with captions of a
different image (no fixed points; fewer than two chosen images swap nothing). Images, attributes
and class labels are untouched: only the text side of those pairs is wrong.

Which images were swapped is a pure function of ``(n, fraction, seed)``: call
:func:`caption_swaps` again to get the truth (Shapes: :func:`contrastkit.data.shapes.swapped_images`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contrastkit.core.errors import InputError
from contrastkit.data.pairs import PairSet

__all__ = ["caption_swaps", "swap_captions"]


def caption_swaps(n: int, fraction: float, seed: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(swapped, donor)``: the swapped image indices (sorted) and, for each, the image whose
    captions it gets (``donor[t] != swapped[t]``)."""
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"caption noise must be a fraction in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    k = round(fraction * n)
    if k < 2:  # one image cannot get another's captions without a second one
        return np.empty(0, np.int64), np.empty(0, np.int64)
    cycle = rng.choice(n, size=k, replace=False)
    donor = dict(zip(cycle.tolist(), np.roll(cycle, -1).tolist()))
    swapped = np.sort(cycle)
    return swapped, np.asarray([donor[i] for i in swapped.tolist()], dtype=np.int64)


def swap_captions(pairs: PairSet, fraction: float, seed: int | Sequence[int]) -> PairSet:
    """``pairs`` with the captions of :func:`caption_swaps` ``(len(pairs), fraction, seed)`` swapped."""
    swapped, donor = caption_swaps(len(pairs), fraction, seed)
    captions = list(pairs.captions)
    for i, d in zip(swapped.tolist(), donor.tolist()):
        captions[i] = pairs.captions[d]
    return PairSet(
        pairs.images,
        tuple(captions),
        pairs.tasks,
        pairs.name,
        pairs.attributes,
        pairs.attribute_names,
    )
