"""Shapes swap sets: Winoground-style 2×2 groups, and a single-object set labelled by attribute.

A *swap set* holds ``n`` groups of two images and two captions made of the **same words in a
different order**; caption ``j`` describes image ``j`` and not image ``1 − j``:

* ``kind="attribute"`` — two objects whose colours are swapped:
  "a red circle to the left of a blue square" / "a blue circle to the left of a red square";
* ``kind="relation"`` — the same two objects with their places swapped:
  "a red circle above a blue square" / "a blue square above a red circle".

Within a group the two colours differ and the two shapes differ (each caption names one image
only); sizes (not named) stay with their objects. Both images of a group are rendered with the same
background noise and colour jitter (one generator seed), so they differ only by the swap. Geometry
matches the two-object Shapes images (radii 0.11/0.16 of the side, centres 0.24 of the side either
side of the middle, shared jitter ±0.04), with the relation phrases of :mod:`contrastkit.data.shapes`.
Unless ``allow_holdout``, no image of a group contains a held-out colour–shape combination
(``HOLDOUT``), so the test measures binding, not generalisation to unseen combinations.

:func:`make_attribute_set` makes single-object images (Shapes geometry) labelled by all four
attributes — shape, colour, size, position — as the class tasks of a :class:`PairSet` (for probes of
what an image embedding still encodes).

Determinism: group ``g`` depends only on ``(seed, kind, g)`` — ``default_rng([seed, k, g])`` for the
scene and ``default_rng([seed, k, g, 1])`` for rendering (``k`` = index of the kind) — so the first
``m`` groups of a set of ``n > m`` are the set of ``m``; the attribute set uses
``default_rng([seed, 2, split])``. Same seed, same bytes (rendering is the Shapes renderer's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from contrastkit.core.errors import InputError
from contrastkit.data.pairs import ClassTask, PairSet, english_articles
from contrastkit.data.shapes import (
    _POSITIONS,
    _RELATIONS,
    COLORS,
    HOLDOUT,
    SHAPES,
    SIZES,
    ShapeObject,
    render_scene,
)

__all__ = ["KINDS", "POSITIONS", "RELATIONS", "SwapSet", "make_attribute_set", "make_swap_sets"]

KINDS = ("attribute", "relation")
RELATIONS = tuple(_RELATIONS)
POSITIONS = tuple(_POSITIONS)
_COLOR_NAMES = tuple(COLORS)


@dataclass(frozen=True)
class SwapSet:
    """``images`` uint8 ``[n, 2, 3, H, W]``; ``captions[g][j]`` describes ``images[g, j]``;
    ``objects[g][j]`` = the two objects of image ``j`` in the order caption ``j`` names them (the
    first stands ``relations[g]`` the second)."""

    images: torch.Tensor
    captions: tuple[tuple[str, str], ...]
    kind: str
    relations: tuple[str, ...]
    objects: tuple[tuple[tuple[ShapeObject, ShapeObject], tuple[ShapeObject, ShapeObject]], ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _check_common(n: int, image_size: int) -> None:
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if not 16 <= image_size <= 256:
        raise InputError(f"image_size must be in [16, 256], got {image_size}")


def _draw_pair(rng: np.random.Generator, allow_holdout: bool) -> tuple[str, str, str, str]:
    """Two distinct colours and two distinct shapes whose four combinations are all allowed."""
    while True:
        c1, c2 = (_COLOR_NAMES[i] for i in rng.choice(len(_COLOR_NAMES), size=2, replace=False))
        s1, s2 = (SHAPES[i] for i in rng.choice(len(SHAPES), size=2, replace=False))
        combos = {(c1, s1), (c2, s2), (c2, s1), (c1, s2)}
        if allow_holdout or not combos & set(HOLDOUT):
            return c1, s1, c2, s2


def _caption(a: ShapeObject, rel: str, b: ShapeObject) -> str:
    return english_articles(f"a {a.color} {a.shape} {rel} a {b.color} {b.shape}")


def _group(rng: np.random.Generator, kind: str, size: int, allow_holdout: bool):
    """(image-0 objects, image-1 objects, relation) of one group, objects in caption order."""
    c1, s1, c2, s2 = _draw_pair(rng, allow_holdout)
    rel = RELATIONS[int(rng.integers(0, len(RELATIONS)))]
    z1, z2 = (SIZES[int(i)] for i in rng.integers(0, 2, size=2))
    jx, jy = rng.uniform(-0.04, 0.04, size=2) * size
    dx, dy = _RELATIONS[rel]
    off, mid, r = 0.24 * size, size / 2, {"small": 0.11 * size, "large": 0.16 * size}
    p1 = (mid + dx * off + jx, mid + dy * off + jy)  # the first-named object's place
    p2 = (mid - dx * off + jx, mid - dy * off + jy)
    a = ShapeObject(s1, c1, z1, *p1, r[z1])
    b = ShapeObject(s2, c2, z2, *p2, r[z2])
    if kind == "attribute":  # same shapes and places, colours exchanged
        a1, b1 = ShapeObject(s1, c2, z1, *p1, r[z1]), ShapeObject(s2, c1, z2, *p2, r[z2])
    else:  # same objects, places exchanged: b is now where a was
        a1, b1 = ShapeObject(s2, c2, z2, *p1, r[z2]), ShapeObject(s1, c1, z1, *p2, r[z1])
    return (a, b), (a1, b1), rel


def make_swap_sets(
    n: int, kind: str, image_size: int = 32, seed: int = 0, allow_holdout: bool = False
) -> SwapSet:
    """``n`` Winoground-style groups of ``kind`` (``"attribute"`` or ``"relation"``)."""
    if kind not in KINDS:
        raise InputError(f"unknown swap kind {kind!r}; available: {KINDS}")
    _check_common(n, image_size)
    k = KINDS.index(kind)
    images = np.empty((n, 2, 3, image_size, image_size), dtype=np.uint8)
    captions, relations, objects = [], [], []
    for g in range(n):
        obj0, obj1, rel = _group(np.random.default_rng([seed, k, g]), kind, image_size, allow_holdout)
        for j, objs in enumerate((obj0, obj1)):
            images[g, j] = render_scene(list(objs), image_size, np.random.default_rng([seed, k, g, 1]))
        captions.append((_caption(obj0[0], rel, obj0[1]), _caption(obj1[0], rel, obj1[1])))
        relations.append(rel)
        objects.append((obj0, obj1))
    return SwapSet(torch.from_numpy(images), tuple(captions), kind, tuple(relations), tuple(objects))


def make_attribute_set(
    n: int, image_size: int = 32, seed: int = 0, split: int = 0, allow_holdout: bool = False
) -> PairSet:
    """``n`` single-object Shapes images with class tasks ``shape``, ``color``, ``size``, ``position``
    (every image labelled in every task). ``split`` selects an independent stream (e.g. 0 = fit,
    1 = test). Geometry as single-object Shapes: radius 0.13/0.21 of the side, jitter ±0.05."""
    _check_common(n, image_size)
    rng = np.random.default_rng([seed, 2, split])
    combos = [(c, s) for c in _COLOR_NAMES for s in SHAPES if allow_holdout or (c, s) not in HOLDOUT]
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    labels = np.empty((n, 4), dtype=np.int64)
    captions = []
    for i in range(n):
        color, shape = combos[int(rng.integers(0, len(combos)))]
        z, p = int(rng.integers(0, len(SIZES))), int(rng.integers(0, len(POSITIONS)))
        fx, fy = _POSITIONS[POSITIONS[p]]
        jx, jy = rng.uniform(-0.05, 0.05, size=2) * image_size
        radius = image_size * (0.13 if SIZES[z] == "small" else 0.21)
        obj = ShapeObject(shape, color, SIZES[z], fx * image_size + jx, fy * image_size + jy, radius)
        images[i] = render_scene([obj], image_size, rng)
        labels[i] = (SHAPES.index(shape), _COLOR_NAMES.index(color), z, p)
        captions.append((english_articles(f"a {SIZES[z]} {color} {shape} {POSITIONS[p]}"),))
    by_shape = tuple(f"a {{}} {s}" for s in SHAPES)  # prompts of colour and size range over shapes
    tasks = {
        "shape": ClassTask(SHAPES, tuple(f"a {c} {{}}" for c in _COLOR_NAMES), labels[:, 0], True),
        "color": ClassTask(_COLOR_NAMES, by_shape, labels[:, 1], True),
        "size": ClassTask(SIZES, by_shape, labels[:, 2]),
        "position": ClassTask(POSITIONS, tuple(f"a {s} {{}}" for s in SHAPES), labels[:, 3]),
    }
    return PairSet(torch.from_numpy(images), tuple(captions), tasks, name=f"shapes-attributes/{split}")
