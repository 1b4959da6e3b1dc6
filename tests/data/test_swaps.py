"""Shapes swap sets and the attribute-labelled set: determinism, captions that match the pixels."""

import hashlib
import re
from collections import Counter

import numpy as np
import pytest

from contrastkit.core.errors import InputError
from contrastkit.data.shapes import _POSITIONS, COLORS, SHAPES, render_scene
from contrastkit.data.swaps import KINDS, RELATIONS, make_attribute_set, make_swap_sets

PALETTE = {n: np.array(c, float) for n, c in COLORS.items()}


def digest(swaps) -> str:
    h = hashlib.sha256(swaps.images.numpy().tobytes())
    h.update("|".join("/".join(c) for c in swaps.captions).encode())
    return h.hexdigest()


def near(img: np.ndarray, colour: str) -> np.ndarray:
    """Pixels within 40 of a palette colour (object jitter is ±15 per channel)."""
    return ((img - PALETTE[colour][:, None, None]) ** 2).sum(0) < 40**2


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


def plain(caption: str) -> str:
    return re.sub(r"\ban\b", "a", caption)


def parse(caption: str) -> tuple[str, str, str, str, str]:
    """(colour 1, shape 1, relation, colour 2, shape 2) of "a c1 s1 REL a c2 s2" (or "an")."""
    caption = plain(caption)
    rel = next(r for r in RELATIONS if f" {r} " in caption)
    first, second = caption.split(f" {rel} ")
    (c1, s1), (c2, s2) = first.split()[1:], second.split()[1:]
    return c1, s1, rel, c2, s2


def holds(rel: str, p1: tuple[float, float], p2: tuple[float, float]) -> bool:
    (x1, y1), (x2, y2) = p1, p2
    return {"to the left of": x1 < x2, "to the right of": x1 > x2, "above": y1 < y2, "below": y1 > y2}[rel]


def test_same_seed_same_bytes_and_groups_do_not_depend_on_n():
    a, b = make_swap_sets(12, "attribute", seed=3), make_swap_sets(12, "attribute", seed=3)
    assert digest(a) == digest(b)
    assert digest(make_swap_sets(12, "attribute", seed=4)) != digest(a)
    assert digest(make_swap_sets(12, "relation", seed=3)) != digest(a)
    head = make_swap_sets(5, "attribute", seed=3)
    assert np.array_equal(head.images.numpy(), a.images.numpy()[:5]) and head.captions == a.captions[:5]
    assert a.images.shape == (12, 2, 3, 32, 32) and len(a) == 12


@pytest.mark.parametrize("kind", KINDS)
def test_captions_use_the_same_words_and_match_the_objects(kind):
    sw = make_swap_sets(40, kind, seed=1)
    for g in range(len(sw)):
        c0, c1 = sw.captions[g]
        assert c0 != c1 and Counter(c0.split()) == Counter(c1.split())
        for j in range(2):
            a, b = sw.objects[g][j]
            assert parse(sw.captions[g][j]) == (
                a.color,
                a.shape,
                sw.relations[g],
                b.color,
                b.shape,
            )
            assert a.color != b.color and a.shape != b.shape
        (a0, b0), (a1, b1) = sw.objects[g]
        if kind == "attribute":  # shapes and places stay, colours exchange
            assert (a1.shape, a1.color, a1.cx, b1.shape, b1.color) == (
                a0.shape,
                b0.color,
                a0.cx,
                b0.shape,
                a0.color,
            )
        else:  # the objects exchange places
            assert (a1.shape, a1.color, a1.cx, a1.cy) == (b0.shape, b0.color, a0.cx, a0.cy)
            assert (b1.shape, b1.color, b1.cx, b1.cy) == (a0.shape, a0.color, b0.cx, b0.cy)


@pytest.mark.parametrize("kind", KINDS)
def test_captions_describe_the_pixels(kind):
    sw = make_swap_sets(60, kind, image_size=48, seed=2)
    imgs = sw.images.numpy().astype(float)
    for g in range(len(sw)):
        for j in range(2):
            c1, _, rel, c2, _ = parse(sw.captions[g][j])
            m1, m2 = near(imgs[g, j], c1), near(imgs[g, j], c2)
            assert m1.sum() > 15 and m2.sum() > 15  # both named colours are drawn
            others = [c for c in COLORS if c not in (c1, c2)]
            assert all(near(imgs[g, j], c).sum() < 8 for c in others)  # and no other colour
            assert holds(rel, centroid(m1), centroid(m2))
        # caption j is false of image 1 − j: read from the pixels, its relation fails there
        c1, _, rel, c2, _ = parse(sw.captions[g][0])
        assert not holds(rel, centroid(near(imgs[g, 1], c1)), centroid(near(imgs[g, 1], c2)))


def test_attribute_swap_keeps_the_footprints_and_shares_the_background():
    sw = make_swap_sets(30, "attribute", image_size=48, seed=5)
    imgs = sw.images.numpy().astype(float)
    for g in range(len(sw)):
        # the background is the same in both images: pixels away from both objects are equal
        empty = render_scene([], 48, np.random.default_rng([5, 0, g, 1])).astype(float)
        fp0, fp1 = (np.abs(imgs[g, j] - empty).sum(0) > 0 for j in range(2))
        assert (fp0 ^ fp1).sum() <= 2  # same shapes in the same places
        c1 = sw.objects[g][0][0].color
        # colour c1 sits on object 1's place in image 0 and on object 2's place in image 1
        (a0, b0) = sw.objects[g][0]
        x, _ = centroid(near(imgs[g, 0], c1))
        x1, _ = centroid(near(imgs[g, 1], c1))
        if a0.cx != b0.cx:
            assert abs(x - a0.cx) < 2 and abs(x1 - b0.cx) < 2


def test_attribute_set_labels_match_the_pixels():
    pairs = make_attribute_set(200, image_size=48, seed=1)
    lab = {k: t.labels for k, t in pairs.tasks.items()}
    names, palette = list(COLORS), np.array(list(COLORS.values()), float)
    areas: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(pairs.images.numpy().astype(float)):
        total = img.sum(0)
        mean = img[:, total >= 0.9 * total.max()].mean(1)
        assert names[int(np.argmin(((palette - mean) ** 2).sum(1)))] == names[lab["color"][i]]
        mask = near(img, names[lab["color"][i]])
        x, y = centroid(mask)
        pos = min(
            _POSITIONS, key=lambda p: (_POSITIONS[p][0] * 48 - x) ** 2 + (_POSITIONS[p][1] * 48 - y) ** 2
        )
        assert list(_POSITIONS).index(pos) == lab["position"][i]
        areas.setdefault((lab["shape"][i], lab["size"][i]), []).append(int(mask.sum()))
        assert SHAPES[lab["shape"][i]] in pairs.captions[i][0]
    for s in range(len(SHAPES)):  # a large shape covers more pixels than any small one of its kind
        if (s, 0) in areas and (s, 1) in areas:
            assert min(areas[(s, 1)]) > max(areas[(s, 0)])
    assert set(lab["position"]) == set(range(5)) and set(lab["size"]) == {0, 1}
    other = make_attribute_set(200, image_size=48, seed=1, split=1)
    assert not np.array_equal(other.images.numpy(), pairs.images.numpy())


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda: make_swap_sets(3, "colour"), "unknown swap kind"),
        (lambda: make_swap_sets(0, "relation"), "n must be >= 1"),
        (lambda: make_swap_sets(3, "relation", image_size=8), "image_size must be in"),
        (lambda: make_attribute_set(0), "n must be >= 1"),
    ],
)
def test_bad_parameters(call, msg):
    with pytest.raises(InputError, match=msg):
        call()
