"""Composed-retrieval queries on Shapes: "this image, but blue" → the same scene, recoloured.

A *composed set* holds ``n`` triples (reference image, modification text, target image): a
one-object Shapes scene, a text naming one changed attribute, and the scene with exactly that
attribute changed —

* ``change="color"``: "this image, but blue" (same shape, size, position, background, jitter);
* ``change="shape"``: "this image, but a square" (same colour, size, position…).

Reference and target are rendered from one generator seed, so their background noise and colour
jitter are the same bytes: they differ only in the changed attribute. Triples alternate over
``changes`` (``i mod len(changes)``). Neither image uses a held-out colour–shape combination
(``HOLDOUT``) unless ``allow_holdout``. Geometry (radii 0.13/0.21 of the side, the five named
positions, ±0.05 jitter) is that of one-object Shapes images, so a model trained on Shapes sees
familiar pictures.

Determinism: triple ``i`` depends only on ``(seed, i)`` — ``default_rng([seed, 3, i])`` for the
scene and ``default_rng([seed, 3, i, 1])`` for rendering — so the first ``m`` triples of a set of
``n > m`` are the set of ``m``. Used by the ``composed`` evaluation task
(:mod:`contrastkit.evaluation.composed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from contrastkit.core.errors import InputError
from contrastkit.data.pairs import english_articles
from contrastkit.data.shapes import _POSITIONS, COLORS, HOLDOUT, SHAPES, SIZES, ShapeObject, render_scene

__all__ = ["CHANGES", "ComposedSet", "make_composed_shapes", "modification_text"]

CHANGES = ("color", "shape")


@dataclass(frozen=True)
class ComposedSet:
    """``references`` and ``targets``: ``uint8 [n, 3, S, S]``; ``texts[i]`` turns reference ``i``
    into target ``i``; ``changes[i]`` names the attribute it changes; ``objects[i]`` the
    ``((colour, shape) of the reference, (colour, shape) of the target)``."""

    references: torch.Tensor
    texts: tuple[str, ...]
    targets: torch.Tensor
    changes: tuple[str, ...]
    objects: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = ()

    def __len__(self) -> int:
        return len(self.texts)


def modification_text(change: str, value: str) -> str:
    """ "this image, but blue" / "this image, but a square"."""
    if change == "color":
        return f"this image, but {value}"
    if change == "shape":
        return english_articles(f"this image, but a {value}")
    raise InputError(f"unknown change {change!r}; available: {CHANGES}")


def _triple(i: int, seed: int, size: int, change: str, allowed: set[tuple[str, str]]):
    rng = np.random.default_rng([seed, 3, i])
    pairs = sorted(allowed)
    color, shape = pairs[int(rng.integers(0, len(pairs)))]
    if change == "color":
        options = [c for c in COLORS if c != color and (c, shape) in allowed]
    else:
        options = [s for s in SHAPES if s != shape and (color, s) in allowed]
    new = options[int(rng.integers(0, len(options)))]
    zname = SIZES[int(rng.integers(0, 2))]
    fx, fy = list(_POSITIONS.values())[int(rng.integers(0, len(_POSITIONS)))]
    jx, jy = rng.uniform(-0.05, 0.05, size=2) * size
    radius = size * (0.13 if zname == "small" else 0.21)
    ref = ShapeObject(shape, color, zname, fx * size + jx, fy * size + jy, radius)
    tgt = replace(ref, color=new) if change == "color" else replace(ref, shape=new)
    images = [render_scene([obj], size, np.random.default_rng([seed, 3, i, 1])) for obj in (ref, tgt)]
    return images, modification_text(change, new), ((ref.color, ref.shape), (tgt.color, tgt.shape))


def make_composed_shapes(
    n: int = 500,
    image_size: int = 32,
    seed: int = 0,
    changes: Sequence[str] = CHANGES,
    allow_holdout: bool = False,
) -> ComposedSet:
    """``n`` composed-retrieval triples (see the module docstring)."""
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if not 16 <= image_size <= 256:
        raise InputError(f"image_size must be in [16, 256], got {image_size}")
    changes = tuple(changes)
    if not changes or set(changes) - set(CHANGES):
        raise InputError(f"changes must be a non-empty selection of {CHANGES}, got {list(changes)}")
    allowed = {(c, s) for c in COLORS for s in SHAPES} - (set() if allow_holdout else set(HOLDOUT))
    refs = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    tgts = np.empty_like(refs)
    texts, kinds, objects = [], [], []
    for i in range(n):
        change = changes[i % len(changes)]
        (refs[i], tgts[i]), text, objs = _triple(i, seed, image_size, change, allowed)
        texts.append(text)
        kinds.append(change)
        objects.append(objs)
    return ComposedSet(
        torch.from_numpy(refs), tuple(texts), torch.from_numpy(tgts), tuple(kinds), tuple(objects)
    )
