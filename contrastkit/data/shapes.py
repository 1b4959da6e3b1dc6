"""Shapes: a deterministic, seeded image–caption data set made by the project.

Each image holds one object (a shape of a colour and size at a position) or two objects in a
spatial relation, on a dark noisy background, with natural captions from several templates:
"a small red circle on the left", "a blue square above a green triangle".

Determinism: rasterisation uses only additions, multiplications and comparisons on float64
coordinates (shape outlines are literal polygon tables, no sin/cos/atan at draw time) and integer
blending, and randomness comes from NumPy's PCG64 ``Generator`` seeded by ``[seed, split]``. The same
seed gives the same bytes on every platform (pinned NumPy; a test hashes the output).

Attributes (a third modality): every image also gets a float32 vector of ``ATTRIBUTE_DIM`` = 45
entries, named by ``ATTRIBUTE_NAMES``, made from the scene description without drawing any random
number (the image and caption bytes do not change)::

    [ 0:18]  object 1: one-hot shape (8) | one-hot colour (8) | one-hot size (2)
    [18:36]  object 2: the same, all zero for a one-object image
    [36:41]  one-hot position of a one-object image ("on the left" … "in the center"), else zero
    [41:45]  one-hot relation of object 1 to object 2 ("to the left of" … "below"), else zero

Two-object images concatenate their objects (not a sum, so colour–shape binding survives) in
the order of their captions ("a {c1} {s1} {rel} a {c2} {s2}"). A one-object image has exactly 4
ones, a two-object image 7.

Compositional hold-out: ``HOLDOUT`` colour–shape combinations (one per colour and per shape, so
every colour and shape is still seen) never appear in the ``train``/``val``/``test`` splits; the
``unseen`` split contains only them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from annotated_types import Ge, Le

from contrastkit.core.errors import InputError
from contrastkit.core.progress import progress_bar
from contrastkit.core.registry import NonNegInt, PositiveInt, Probability
from contrastkit.data.noise import caption_swaps, swap_captions
from contrastkit.data.pairs import ClassTask, PairSet, english_articles

__all__ = [
    "ATTRIBUTE_DIM",
    "ATTRIBUTE_NAMES",
    "COLORS",
    "HOLDOUT",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "ShapeObject",
    "long_caption",
    "make_shapes",
    "render_scene",
    "swapped_images",
]

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "hexagon", "ring")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "white": (240, 240, 240),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
SPLITS = ("train", "val", "test", "unseen")
# Held-out (colour, shape) pairs: colour i with shape (3·i + 1) mod 8 — a Latin diagonal.
HOLDOUT = tuple((COLOR_NAMES[i], SHAPES[(3 * i + 1) % len(SHAPES)]) for i in range(len(COLOR_NAMES)))

# Unit outlines (y grows downwards), literal so drawing needs no trigonometry.
_STAR = np.array(
    [
        (0.0, -1.0),
        (0.2245, -0.309),
        (0.9511, -0.309),
        (0.3633, 0.118),
        (0.5878, 0.809),
        (0.0, 0.382),
        (-0.5878, 0.809),
        (-0.3633, 0.118),
        (-0.9511, -0.309),
        (-0.2245, -0.309),
    ]
)
_HEXAGON = np.array([(1.0, 0.0), (0.5, 0.866), (-0.5, 0.866), (-1.0, 0.0), (-0.5, -0.866), (0.5, -0.866)])
_TRIANGLE = np.array([(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)])

_POSITIONS = {  # name → (x, y) centre as a fraction of the image side
    "on the left": (0.27, 0.5),
    "on the right": (0.73, 0.5),
    "at the top": (0.5, 0.27),
    "at the bottom": (0.5, 0.73),
    "in the center": (0.5, 0.5),
}
_RELATIONS = {  # relation of object 1 to object 2 → (dx, dy) of object 1 from the middle
    "to the left of": (-1, 0),
    "to the right of": (1, 0),
    "above": (0, -1),
    "below": (0, 1),
}
_SINGLE_TEMPLATES = (
    "a {size} {color} {shape}",
    "a {color} {shape} {pos}",
    "a {size} {color} {shape} {pos}",
    "there is a {color} {shape} {pos}",
    "a picture of a {size} {color} {shape}",
    "a {color} {shape}",
)
_PAIR_TEMPLATES = (
    "a {c1} {s1} {rel} a {c2} {s2}",
    "a {z1} {c1} {s1} {rel} a {z2} {c2} {s2}",
    "there is a {c1} {s1} {rel} a {c2} {s2}",
)
ZS_TEMPLATES = ("a {}", "a small {}", "a large {}", "there is a {}")

_OBJECT_NAMES = (
    *(f"shape={s}" for s in SHAPES),
    *(f"color={c}" for c in COLOR_NAMES),
    *(f"size={z}" for z in SIZES),
)
ATTRIBUTE_NAMES = (
    *(f"object1/{n}" for n in _OBJECT_NAMES),
    *(f"object2/{n}" for n in _OBJECT_NAMES),
    *(f"position={p}" for p in _POSITIONS),
    *(f"relation={r}" for r in _RELATIONS),
)
ATTRIBUTE_DIM = len(ATTRIBUTE_NAMES)  # 45


def _attributes(objects: list[ShapeObject], where: str) -> np.ndarray:
    """The attribute vector of a scene (see the module docstring); ``where`` is the position
    name of a one-object scene or the relation of a two-object scene."""
    vec = np.zeros(ATTRIBUTE_DIM, dtype=np.float32)
    n_obj = len(_OBJECT_NAMES)
    for k, obj in enumerate(objects):
        base = k * n_obj
        vec[base + SHAPES.index(obj.shape)] = 1.0
        vec[base + len(SHAPES) + COLOR_NAMES.index(obj.color)] = 1.0
        vec[base + len(SHAPES) + len(COLOR_NAMES) + SIZES.index(obj.size)] = 1.0
    if len(objects) == 1:
        vec[2 * n_obj + list(_POSITIONS).index(where)] = 1.0
    else:
        vec[2 * n_obj + len(_POSITIONS) + list(_RELATIONS).index(where)] = 1.0
    return vec


def _in_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test with only +, ×, / and comparisons (deterministic)."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(poly)
    for k in range(n):
        (x0, y0), (x1, y1) = poly[k], poly[(k + 1) % n]
        if y0 == y1:
            continue
        crosses = (y0 > v) != (y1 > v)
        x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of unit coordinates ``(u, v)`` (object radius = 1) in ``shape``."""
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 1.0
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.36)
    if shape == "square":
        return (np.abs(u) <= 0.82) & (np.abs(v) <= 0.82)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))
    if shape == "star":
        return _in_polygon(u, v, _STAR)
    if shape == "hexagon":
        return _in_polygon(u, v, _HEXAGON)
    if shape == "triangle":
        return _in_polygon(u, v, _TRIANGLE)
    raise InputError(f"unknown shape {shape!r}; available: {SHAPES}")


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    cx: float  # centre in pixels
    cy: float
    radius: float


def render_scene(objects: list[ShapeObject], size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw objects on a noisy dark background; returns ``uint8 [3, size, size]``.

    2×2 supersampling gives anti-aliased edges; blending is integer arithmetic on coverage counts.
    """
    bg = int(rng.integers(0, 50))
    img = np.clip(bg + rng.integers(-8, 9, size=(3, size, size)), 0, 255).astype(np.int64)
    sub = (np.arange(2 * size) + 0.5) / 2.0  # sub-pixel centres in pixel units
    for obj in objects:
        jitter = rng.integers(-15, 16, size=3)
        col = np.clip(np.array(COLORS[obj.color]) + jitter, 0, 255)
        u = (sub[None, :] - obj.cx) / obj.radius
        v = (sub[:, None] - obj.cy) / obj.radius
        m = _mask(
            obj.shape, np.broadcast_to(u, (2 * size, 2 * size)), np.broadcast_to(v, (2 * size, 2 * size))
        )
        cover = m.reshape(size, 2, size, 2).sum(axis=(1, 3))  # 0..4 sub-pixels covered
        img = (img * (4 - cover) + col[:, None, None] * cover) // 4
    return img.astype(np.uint8)


def _pick_combo(rng: np.random.Generator, allowed: list[tuple[str, str]]) -> tuple[str, str]:
    return allowed[int(rng.integers(0, len(allowed)))]


def _single(rng: np.random.Generator, size: int, allowed: list[tuple[str, str]], n_caps: int):
    color, shape = _pick_combo(rng, allowed)
    zname = SIZES[int(rng.integers(0, 2))]
    pos = list(_POSITIONS)[int(rng.integers(0, len(_POSITIONS)))]
    fx, fy = _POSITIONS[pos]
    radius = size * (0.13 if zname == "small" else 0.21)
    jx, jy = rng.uniform(-0.05, 0.05, size=2) * size
    obj = ShapeObject(shape, color, zname, fx * size + jx, fy * size + jy, radius)
    tmpl = rng.choice(len(_SINGLE_TEMPLATES), size=n_caps, replace=False)
    caps = tuple(
        english_articles(_SINGLE_TEMPLATES[t].format(size=zname, color=color, shape=shape, pos=pos))
        for t in tmpl
    )
    return [obj], caps, pos


def _pair(rng: np.random.Generator, size: int, allowed: list[tuple[str, str]], n_caps: int):
    (c1, s1) = _pick_combo(rng, allowed)
    (c2, s2) = _pick_combo(rng, [a for a in allowed if a != (c1, s1)])
    rel = list(_RELATIONS)[int(rng.integers(0, len(_RELATIONS)))]
    dx, dy = _RELATIONS[rel]
    z1, z2 = (SIZES[int(i)] for i in rng.integers(0, 2, size=2))
    r = {"small": 0.11 * size, "large": 0.16 * size}
    off = 0.24 * size
    jx, jy = rng.uniform(-0.04, 0.04, size=2) * size
    mid = size / 2
    o1 = ShapeObject(s1, c1, z1, mid + dx * off + jx, mid + dy * off + jy, r[z1])
    o2 = ShapeObject(s2, c2, z2, mid - dx * off + jx, mid - dy * off + jy, r[z2])
    tmpl = rng.choice(len(_PAIR_TEMPLATES), size=min(n_caps, len(_PAIR_TEMPLATES)), replace=False)
    caps = tuple(
        english_articles(_PAIR_TEMPLATES[t].format(c1=c1, s1=s1, z1=z1, rel=rel, c2=c2, s2=s2, z2=z2))
        for t in tmpl
    )
    return [o1, o2], caps, rel


def make_shapes(
    split: str = "train",
    n: PositiveInt = 1000,
    image_size: Annotated[int, Ge(16), Le(256)] = 32,
    seed: NonNegInt = 0,
    two_object_fraction: Probability = 0.3,
    captions_per_image: Annotated[int, Ge(1), Le(3)] = 2,
    progress: bool = False,
    noise: Probability = 0.0,
    long_captions: bool = False,
) -> PairSet:
    """Generate ``n`` Shapes images of ``split`` (one of ``SPLITS``) deterministically.

    Returns a :class:`PairSet` with tasks ``shape``, ``color`` and ``shape+color`` (labels ``-1``
    for two-object images) and ``attributes`` (``float32 [n, 45]``, see the module docstring).
    Class names of ``shape+color`` cover all 64 combinations, so the held-out ones compete in
    zero-shot classification on every split.

    ``noise``: the fraction of images whose captions are swapped with other images' captions
    (:mod:`contrastkit.data.noise`; images, labels and attributes stay right). Which ones:
    :func:`swapped_images` with the same arguments. The images and the other captions are the
    same bytes as without noise.

    ``long_captions``: each image gets one long caption instead (:func:`long_caption`: one
    sentence per object, plus its position or the relation), for ``data.long_captions``
    (DreamLIP); the images, labels and attributes are the same bytes as without it.
    """
    if split not in SPLITS:
        raise InputError(f"unknown Shapes split {split!r}; available: {SPLITS}")
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if not 16 <= image_size <= 256:
        raise InputError(f"image_size must be in [16, 256], got {image_size}")
    if not 0.0 <= two_object_fraction <= 1.0:
        raise InputError(f"two_object_fraction must be in [0, 1], got {two_object_fraction}")
    if not 1 <= captions_per_image <= 3:
        raise InputError(f"captions_per_image must be in [1, 3], got {captions_per_image}")
    combos = [(c, s) for c in COLOR_NAMES for s in SHAPES]
    allowed = list(HOLDOUT) if split == "unseen" else [a for a in combos if a not in HOLDOUT]
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    captions, labels = [], np.full((n, 3), -1, dtype=np.int64)
    attributes = np.zeros((n, ATTRIBUTE_DIM), dtype=np.float32)
    for i in progress_bar(range(n), f"shapes/{split}", progress, unit="img", leave=False):
        if rng.random() < two_object_fraction:
            objs, caps, where = _pair(rng, image_size, allowed, captions_per_image)
        else:
            objs, caps, where = _single(rng, image_size, allowed, captions_per_image)
            si, ci = SHAPES.index(objs[0].shape), COLOR_NAMES.index(objs[0].color)
            labels[i] = (si, ci, ci * len(SHAPES) + si)
        images[i] = render_scene(objs, image_size, rng)
        captions.append((long_caption(objs, where),) if long_captions else caps)
        attributes[i] = _attributes(objs, where)
    tasks = {
        # prompt ensembles: a shape's prompts range over colours, a colour's over shapes
        "shape": ClassTask(SHAPES, tuple(f"a {c} {{}}" for c in COLOR_NAMES), labels[:, 0], True),
        "color": ClassTask(COLOR_NAMES, tuple(f"a {{}} {s}" for s in SHAPES), labels[:, 1], True),
        "shape+color": ClassTask(tuple(f"{c} {s}" for c, s in combos), ZS_TEMPLATES, labels[:, 2], True),
    }
    pairs = PairSet(
        torch.from_numpy(images),
        tuple(captions),
        tasks,
        name=f"shapes/{split}",
        attributes=torch.from_numpy(attributes),
        attribute_names=ATTRIBUTE_NAMES,
    )
    return swap_captions(pairs, noise, _noise_seed(split, seed)) if noise else pairs


def long_caption(objects: Sequence[ShapeObject], where: str) -> str:
    """A multi-sentence caption of a scene, no random draw. One object: "a small red circle. the
    circle is on the left. the red circle is small."; two: "a small red circle. a large blue
    square. the red circle is to the left of the blue square." (articles fixed, "a orange" →
    "an orange")."""
    if len(objects) == 1:
        o = objects[0]
        sents = [
            f"a {o.size} {o.color} {o.shape}",
            f"the {o.shape} is {where}",
            f"the {o.color} {o.shape} is {o.size}",
        ]
    else:
        a, b = objects
        sents = [
            f"a {a.size} {a.color} {a.shape}",
            f"a {b.size} {b.color} {b.shape}",
            f"the {a.color} {a.shape} is {where} the {b.color} {b.shape}",
        ]
    return english_articles(". ".join(sents) + ".")


def _noise_seed(split: str, seed: int) -> list[int]:
    return [seed, SPLITS.index(split), 0x5EED]  # a stream apart from the scene generator's


def swapped_images(split: str = "train", n: int = 1000, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """The sorted indices of the images whose captions ``make_shapes(split, n, seed=seed,
    noise=noise)`` swapped (the truth for measuring noisy-pair detection)."""
    if split not in SPLITS:
        raise InputError(f"unknown Shapes split {split!r}; available: {SPLITS}")
    return caption_swaps(n, noise, _noise_seed(split, seed))[0]
