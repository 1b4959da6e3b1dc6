"""Same-object views: one object under one changed condition, among other objects of its class.

A *same-object set* holds, for each example, a **query** view of an object, the **match** (the
same object with exactly one condition changed) and ``m`` **distractors**: other objects of the
query's class under the same conditions as the match (``distractors="matched"``: only the object
tells the gallery apart) or as the query (``"query"``: an embedding that follows the conditions
prefers them). The ``same_object`` evaluation task ranks match + distractors for each query
(:mod:`contrastkit.evaluation.same_object`).

* **Shapes** (:func:`make_same_object_shapes`): one object drawn with the Shapes rasteriser
  (``shapes._mask``, 2 × 2 supersampling, integer blending — the bytes of ``render_scene``). An
  object's identity is its shape, colour name and exact RGB (the colour plus a jitter in [−15, 15]
  per channel, as Shapes draws it); its class is its shape. Conditions: ``position`` (another of
  the five named positions, new ±0.05 jitter), ``size`` (the other size: radius 0.13 ↔ 0.21 of the
  side, same centre), ``background`` (another level in [0, 50) at least 15 away, new noise).
  Distractors: the query's shape in another colour (drawn with replacement from the non-held-out
  colours of that shape), own jitter. No held-out colour–shape pair (``HOLDOUT``) is used.
* **Fashion-MNIST** (:func:`make_same_object_views`, any labelled images): the query is an item's
  image as stored; the match is an augmentation of it by :func:`contrastkit.data.augment.apply_augment`
  with one change: ``crop`` (a square box of area fraction U[0.5, 0.8] at a random place inside the
  image, resampled to the full size: zoom and shift), ``flip`` (horizontal mirror) or
  ``brightness`` (factor U[0.5, 0.75] or U[1.25, 1.5], each with probability 1/2). Distractors: m
  other items of the query's class (without replacement), transformed like the match
  (``matched``) or as stored (``query``).

Every view has an attribute record (``dict``; see ``IDENTITY`` and ``CONDITION_FIELDS``) so a
test can check that a match differs from its query in the named condition only. Determinism:
example i of condition c depends only on ``(seed, c, i)`` (``default_rng([seed, 5 or 6, c, i])``),
so the first n examples of a larger set are the set of n.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import InputError
from contrastkit.data.augment import AugmentParams, apply_augment
from contrastkit.data.shapes import _POSITIONS, COLORS, HOLDOUT, SHAPES, SIZES, _mask

__all__ = [
    "CONDITION_FIELDS",
    "FASHION_CONDITIONS",
    "IDENTITY",
    "SHAPES_CONDITIONS",
    "SameObjectSet",
    "make_same_object_shapes",
    "make_same_object_views",
    "paint_object",
]

SHAPES_CONDITIONS = ("position", "size", "background")
FASHION_CONDITIONS = ("crop", "flip", "brightness")
IDENTITY = {"shapes": ("shape", "color", "rgb"), "views": ("item", "label")}
CONDITION_FIELDS = {  # the attribute fields a condition changes
    "position": ("position", "cx", "cy"),
    "size": ("size", "radius"),
    "background": ("level", "noise"),
    "crop": ("crop",),
    "flip": ("flip",),
    "brightness": ("brightness",),
}
_RADIUS = {"small": 0.13, "large": 0.21}  # fraction of the side, as one-object Shapes images


@dataclass(frozen=True)
class SameObjectSet:
    """``queries``/``matches``: ``uint8 [Q, 3, S, S]``; ``distractors``: ``uint8 [Q, m, 3, S, S]``;
    ``conditions[i]``: the condition match i changes; ``attributes[i]``: the records ``(query,
    match, (distractor, …))`` of example i."""

    queries: torch.Tensor
    matches: torch.Tensor
    distractors: torch.Tensor
    conditions: tuple[str, ...]
    attributes: tuple[tuple[dict[str, Any], dict[str, Any], tuple[dict[str, Any], ...]], ...]

    def __len__(self) -> int:
        return len(self.conditions)


def paint_object(background: np.ndarray, view: dict[str, Any]) -> np.ndarray:
    """``background`` (``uint8 [3, S, S]``) with the object of ``view`` (shape, rgb, cx, cy,
    radius in pixels) drawn as ``render_scene`` draws it: same mask, supersampling and blending."""
    size = background.shape[-1]
    sub = (np.arange(2 * size) + 0.5) / 2.0  # sub-pixel centres in pixel units
    u = (sub[None, :] - view["cx"]) / view["radius"]
    v = (sub[:, None] - view["cy"]) / view["radius"]
    full = (2 * size, 2 * size)
    m = _mask(view["shape"], np.broadcast_to(u, full), np.broadcast_to(v, full))
    cover = m.reshape(size, 2, size, 2).sum(axis=(1, 3))  # 0..4 sub-pixels covered
    col = np.asarray(view["rgb"], dtype=np.int64)
    img = (background.astype(np.int64) * (4 - cover) + col[:, None, None] * cover) // 4
    return img.astype(np.uint8)


def _check_common(
    n: int, m: int, conditions: Sequence[str], known: tuple[str, ...], distractors: str
) -> None:
    if n < 1 or m < 1:
        raise InputError(f"n and m must be >= 1, got n={n}, m={m}")
    if not conditions or set(conditions) - set(known):
        raise InputError(f"conditions must be a non-empty selection of {known}, got {list(conditions)}")
    if distractors not in ("matched", "query"):
        raise InputError(f"distractors must be 'matched' or 'query', got {distractors!r}")


def _rgb(color: str, rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(c) for c in np.clip(np.array(COLORS[color]) + rng.integers(-15, 16, size=3), 0, 255))


def _place(view: dict[str, Any], pos: int, rng: np.random.Generator, size: int) -> None:
    fx, fy = list(_POSITIONS.values())[pos]
    jx, jy = rng.uniform(-0.05, 0.05, size=2) * size
    view.update(position=list(_POSITIONS)[pos], cx=float(fx * size + jx), cy=float(fy * size + jy))


def _shapes_example(ci: int, i: int, seed: int, size: int, m: int, mode: str) -> tuple:
    rng = np.random.default_rng([seed, 5, ci, i])
    allowed = sorted({(c, s) for c in COLORS for s in SHAPES} - set(HOLDOUT))
    color, shape = allowed[int(rng.integers(0, len(allowed)))]
    zname = SIZES[int(rng.integers(0, 2))]
    query: dict[str, Any] = {"shape": shape, "color": color, "rgb": _rgb(color, rng), "size": zname}
    query["radius"] = _RADIUS[zname] * size
    pos = int(rng.integers(0, len(_POSITIONS)))
    _place(query, pos, rng, size)
    query.update(level=int(rng.integers(0, 50)), noise=0)
    match = dict(query)
    condition = SHAPES_CONDITIONS[ci]
    if condition == "position":
        _place(match, [p for p in range(len(_POSITIONS)) if p != pos][int(rng.integers(0, 4))], rng, size)
    elif condition == "size":
        match["size"] = SIZES[1 - SIZES.index(zname)]
        match["radius"] = _RADIUS[match["size"]] * size
    else:
        levels = [lv for lv in range(50) if abs(lv - query["level"]) >= 15]
        match.update(level=levels[int(rng.integers(0, len(levels)))], noise=1)
    others = [c for c in COLORS if c != color and (c, shape) in allowed]
    base = match if mode == "matched" else query
    picks = [others[int(j)] for j in rng.integers(0, len(others), size=m)]
    distractors = tuple({**base, "color": c, "rgb": _rgb(c, rng)} for c in picks)
    backgrounds = {}
    for v in (query, match):  # background noise from its own stream: shared bytes when not changed
        noise = np.random.default_rng([seed, 5, ci, i, 1 + v["noise"]]).integers(-8, 9, size=(3, size, size))
        backgrounds[v["noise"]] = np.clip(v["level"] + noise, 0, 255).astype(np.uint8)
    images = [paint_object(backgrounds[v["noise"]], v) for v in (query, match, *distractors)]
    return images, (query, match, distractors)


def make_same_object_shapes(
    n: int = 200,
    image_size: int = 32,
    seed: int = 0,
    conditions: Sequence[str] = SHAPES_CONDITIONS,
    m: int = 9,
    distractors: str = "matched",
) -> SameObjectSet:
    """``n`` Shapes examples per condition, ``m`` distractors each (module docstring)."""
    _check_common(n, m, conditions, SHAPES_CONDITIONS, distractors)
    if not 16 <= image_size <= 256:
        raise InputError(f"image_size must be in [16, 256], got {image_size}")
    views, records, kinds = [], [], []
    for c in conditions:
        for i in range(n):
            images, rec = _shapes_example(SHAPES_CONDITIONS.index(c), i, seed, image_size, m, distractors)
            views.append(np.stack(images))
            records.append(rec)
            kinds.append(c)
    allv = torch.from_numpy(np.stack(views))  # [Q, 2 + m, 3, S, S]
    return SameObjectSet(allv[:, 0], allv[:, 1], allv[:, 2:], tuple(kinds), tuple(records))


def _change(condition: str, rng: np.random.Generator) -> dict[str, Any]:
    """One change's augmentation: identity box, no flip, factor 1 except the changed one."""
    cx, cy, w, flip, bright = 0.5, 0.5, 1.0, False, 1.0
    if condition == "crop":
        w = float(np.sqrt(rng.uniform(0.5, 0.8)))
        cx, cy = (float(w / 2 + (1 - w) * u) for u in rng.uniform(0, 1, size=2))
    elif condition == "flip":
        flip = True
    else:
        lo, hi = (0.5, 0.75) if rng.random() < 0.5 else (1.25, 1.5)
        bright = float(rng.uniform(lo, hi))
    return {"crop": (cx, cy, w, w), "flip": flip, "brightness": bright}


_UNCHANGED = {"crop": (0.5, 0.5, 1.0, 1.0), "flip": False, "brightness": 1.0}


def _augment(images: torch.Tensor, changes: list[dict[str, Any]]) -> torch.Tensor:
    """Row i of ``images`` transformed by ``changes[i]`` (one ``apply_augment`` call)."""
    box = torch.tensor([c["crop"] for c in changes], dtype=torch.float64).reshape(-1, 4)
    one = torch.ones(len(changes), dtype=torch.float64)
    bright = torch.tensor([c["brightness"] for c in changes], dtype=torch.float64)
    flip = torch.tensor([c["flip"] for c in changes], dtype=torch.bool)
    return apply_augment(images, AugmentParams(*box.unbind(1), flip, bright, one, one))


def make_same_object_views(
    images: torch.Tensor,
    labels: np.ndarray,
    n: int = 200,
    seed: int = 0,
    conditions: Sequence[str] = FASHION_CONDITIONS,
    m: int = 9,
    distractors: str = "matched",
) -> SameObjectSet:
    """Up to ``n`` items per condition of labelled ``uint8 [N, 3, S, S]`` images (label < 0: not
    used), each against ``m`` other items of its class (module docstring)."""
    _check_common(n, m, conditions, FASHION_CONDITIONS, distractors)
    labels = np.asarray(labels)
    if images.dtype != torch.uint8 or images.ndim != 4 or len(labels) != len(images):
        raise InputError(
            f"need uint8 [N, 3, S, S] images and N labels, got {tuple(images.shape)}, {labels.shape}"
        )
    valid = labels >= 0
    enough = np.zeros(len(labels), dtype=bool)
    enough[valid] = np.bincount(labels[valid])[labels[valid]] > m  # the class has m other items
    eligible = np.flatnonzero(enough)
    if len(eligible) == 0:
        raise InputError(f"same-object views need a class with at least m + 1 = {m + 1} items")
    rows, changes, records, kinds = [], [], [], []
    for c in conditions:
        ci = FASHION_CONDITIONS.index(c)
        order = np.random.default_rng([seed, 6, ci]).permutation(eligible)[:n]
        for i, item in enumerate(order):
            rng = np.random.default_rng([seed, 6, ci, i])
            label = int(labels[item])
            pool = np.flatnonzero(labels == label)
            others = [int(o) for o in rng.choice(pool[pool != item], size=m, replace=False)]
            change = _change(c, rng)
            rest = change if distractors == "matched" else _UNCHANGED
            rows += [int(item), int(item), *others]
            changes += [_UNCHANGED, change, *[rest] * m]
            view = {"item": int(item), "label": label}
            dis = tuple({"item": o, "label": label, **rest} for o in others)
            records.append(({**view, **_UNCHANGED}, {**view, **change}, dis))
            kinds.append(c)
    views = images[torch.tensor(rows)]
    moved = torch.tensor([c is not _UNCHANGED for c in changes])  # unchanged views: the stored bytes
    views[moved] = _augment(views[moved], [c for c in changes if c is not _UNCHANGED])
    views = views.reshape(len(kinds), 2 + m, *images.shape[1:])
    return SameObjectSet(views[:, 0], views[:, 1], views[:, 2:], tuple(kinds), tuple(records))
