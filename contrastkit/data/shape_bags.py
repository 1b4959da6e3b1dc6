"""Shapes bags: each sample is a bag of K pictures of one scene description, with its captions.

The set-pooling counterpart of :mod:`contrastkit.data.shapes` (several photos of one product): a
scene description is drawn exactly as Shapes draws one — one object (shape, colour, size,
position) or two objects in a relation, with the same caption templates, hold-out split, class
tasks and 45-entry ``attributes`` — and then drawn ``bag_size`` times, each instance with fresh
variation that keeps every caption true: centre jitter (±5 % of the side for one object, ±4 % for
two), radius scaled by ``U(1 − size_jitter, 1 + size_jitter)`` (small and large stay apart: 0.13
vs 0.21 of the side for one object, 0.11 vs 0.16 for two, so up to ±0.2 keeps them separate),
and render noise (background level and noise, colour jitter ±15).

A bag is stored as one image ``uint8 [3, S, K·S]``: its K ``S × S`` instances side by side, so
every loader, evaluation and export treats it as an ordinary image; the ``set_pool`` tower with
``layout: strip`` splits it back into instances (:mod:`contrastkit.models.set_pool`).

Determinism: NumPy's PCG64 seeded by ``[seed, split, 0xBA6]`` (a stream apart from Shapes'), the
same integer rasteriser (:func:`~contrastkit.data.shapes.render_scene`): the same arguments give
the same bytes.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from annotated_types import Ge, Le

from contrastkit.core.errors import InputError
from contrastkit.core.progress import progress_bar
from contrastkit.core.registry import NonNegInt, PositiveInt, Probability
from contrastkit.data.pairs import ClassTask, PairSet, english_articles
from contrastkit.data.shapes import (
    _PAIR_TEMPLATES,
    _POSITIONS,
    _RELATIONS,
    _SINGLE_TEMPLATES,
    ATTRIBUTE_NAMES,
    COLORS,
    HOLDOUT,
    SHAPES,
    SIZES,
    SPLITS,
    ZS_TEMPLATES,
    ShapeObject,
    _attributes,
    render_scene,
)

__all__ = ["make_shape_bags"]

_COLOR_NAMES = tuple(COLORS)


def _describe(rng: np.random.Generator, allowed: list[tuple[str, str]], two: bool, n_caps: int):
    """A scene description (objects as ``(shape, colour, size)``), its captions and position or
    relation — the draws of Shapes' ``_single``/``_pair`` without the per-picture jitter."""
    if not two:
        color, shape = allowed[int(rng.integers(0, len(allowed)))]
        size = SIZES[int(rng.integers(0, 2))]
        pos = list(_POSITIONS)[int(rng.integers(0, len(_POSITIONS)))]
        tmpl = rng.choice(len(_SINGLE_TEMPLATES), size=n_caps, replace=False)
        caps = tuple(
            english_articles(_SINGLE_TEMPLATES[t].format(size=size, color=color, shape=shape, pos=pos))
            for t in tmpl
        )
        return [(shape, color, size)], caps, pos
    c1, s1 = allowed[int(rng.integers(0, len(allowed)))]
    rest = [a for a in allowed if a != (c1, s1)]
    c2, s2 = rest[int(rng.integers(0, len(rest)))]
    rel = list(_RELATIONS)[int(rng.integers(0, len(_RELATIONS)))]
    z1, z2 = (SIZES[int(i)] for i in rng.integers(0, 2, size=2))
    tmpl = rng.choice(len(_PAIR_TEMPLATES), size=min(n_caps, len(_PAIR_TEMPLATES)), replace=False)
    caps = tuple(
        english_articles(_PAIR_TEMPLATES[t].format(c1=c1, s1=s1, z1=z1, rel=rel, c2=c2, s2=s2, z2=z2))
        for t in tmpl
    )
    return [(s1, c1, z1), (s2, c2, z2)], caps, rel


def _place(rng: np.random.Generator, desc, where: str, size: int, size_jitter: float) -> list[ShapeObject]:
    """One picture's objects: the description at jittered centres and scaled radii."""
    scale = rng.uniform(1 - size_jitter, 1 + size_jitter, size=len(desc))
    if len(desc) == 1:
        (shape, color, z), (fx, fy) = desc[0], _POSITIONS[where]
        jx, jy = rng.uniform(-0.05, 0.05, size=2) * size
        radius = size * (0.13 if z == "small" else 0.21) * scale[0]
        return [ShapeObject(shape, color, z, fx * size + jx, fy * size + jy, radius)]
    dx, dy = _RELATIONS[where]
    r = {"small": 0.11 * size, "large": 0.16 * size}
    off, mid = 0.24 * size, size / 2
    jx, jy = rng.uniform(-0.04, 0.04, size=2) * size
    (s1, c1, z1), (s2, c2, z2) = desc
    return [
        ShapeObject(s1, c1, z1, mid + dx * off + jx, mid + dy * off + jy, r[z1] * scale[0]),
        ShapeObject(s2, c2, z2, mid - dx * off + jx, mid - dy * off + jy, r[z2] * scale[1]),
    ]


def make_shape_bags(
    split: str = "train",
    n: PositiveInt = 1000,
    image_size: Annotated[int, Ge(16), Le(256)] = 32,
    seed: NonNegInt = 0,
    bag_size: Annotated[int, Ge(1), Le(16)] = 4,
    size_jitter: Annotated[float, Ge(0), Le(0.2)] = 0.1,
    two_object_fraction: Probability = 0.3,
    captions_per_image: Annotated[int, Ge(1), Le(3)] = 2,
    progress: bool = False,
) -> PairSet:
    """``n`` bags of ``split``: images ``uint8 [n, 3, image_size, bag_size·image_size]`` (the
    instances side by side), Shapes' captions, tasks ``shape``/``color``/``shape+color`` and
    ``attributes`` of each bag's description (module docstring)."""
    if split not in SPLITS:
        raise InputError(f"unknown Shapes split {split!r}; available: {SPLITS}")
    if n < 1 or not 1 <= bag_size <= 16:
        raise InputError(f"n must be >= 1 and bag_size in [1, 16], got n={n}, bag_size={bag_size}")
    if not 16 <= image_size <= 256 or not 0 <= size_jitter <= 0.2:
        raise InputError(
            f"image_size must be in [16, 256], size_jitter in [0, 0.2]; got {image_size}, {size_jitter}"
        )
    if not 0.0 <= two_object_fraction <= 1.0 or not 1 <= captions_per_image <= 3:
        raise InputError("two_object_fraction must be in [0, 1] and captions_per_image in [1, 3]")
    combos = [(c, s) for c in _COLOR_NAMES for s in SHAPES]
    allowed = list(HOLDOUT) if split == "unseen" else [a for a in combos if a not in HOLDOUT]
    rng = np.random.default_rng([seed, SPLITS.index(split), 0xBA6])
    s = image_size
    images = np.empty((n, 3, s, bag_size * s), dtype=np.uint8)
    captions, labels = [], np.full((n, 3), -1, dtype=np.int64)
    attributes = np.zeros((n, len(ATTRIBUTE_NAMES)), dtype=np.float32)
    for i in progress_bar(range(n), f"shape_bags/{split}", progress, unit="bag", leave=False):
        desc, caps, where = _describe(rng, allowed, rng.random() < two_object_fraction, captions_per_image)
        objs = []
        for k in range(bag_size):
            objs = _place(rng, desc, where, s, size_jitter)
            images[i, :, :, k * s : (k + 1) * s] = render_scene(objs, s, rng)
        if len(desc) == 1:
            si, ci = SHAPES.index(desc[0][0]), _COLOR_NAMES.index(desc[0][1])
            labels[i] = (si, ci, ci * len(SHAPES) + si)
        captions.append(caps)
        attributes[i] = _attributes(objs, where)  # the description: the same for every instance
    tasks = {
        "shape": ClassTask(SHAPES, tuple(f"a {c} {{}}" for c in _COLOR_NAMES), labels[:, 0], True),
        "color": ClassTask(_COLOR_NAMES, tuple(f"a {{}} {s}" for s in SHAPES), labels[:, 1], True),
        "shape+color": ClassTask(tuple(f"{c} {s}" for c, s in combos), ZS_TEMPLATES, labels[:, 2], True),
    }
    return PairSet(
        torch.from_numpy(images),
        tuple(captions),
        tasks,
        name=f"shape_bags/{split}",
        attributes=torch.from_numpy(attributes),
        attribute_names=ATTRIBUTE_NAMES,
    )
