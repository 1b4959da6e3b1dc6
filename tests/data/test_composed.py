"""Composed-retrieval triples on Shapes: the target is the reference with one attribute changed."""

import numpy as np
import pytest
import torch

from contrastkit.core.errors import InputError
from contrastkit.data.composed import make_composed_shapes, modification_text
from contrastkit.data.shapes import COLORS, HOLDOUT, SHAPES


def test_reference_and_target_differ_only_where_the_object_is():
    data = make_composed_shapes(n=40, image_size=32, seed=0)
    assert len(data) == 40 and data.references.shape == data.targets.shape == (40, 3, 32, 32)
    assert data.changes[:4] == ("color", "shape", "color", "shape")
    for i in range(40):
        ref, tgt = data.references[i].int(), data.targets[i].int()
        diff = (ref != tgt).any(0)
        assert 0 < int(diff.sum()) < 32 * 32 // 2  # the object's pixels only: same background bytes
        corners = [ref[:, 0, 0], ref[:, 0, -1], ref[:, -1, 0], ref[:, -1, -1]]
        assert all(
            torch.equal(c, t)
            for c, t in zip(corners, [tgt[:, 0, 0], tgt[:, 0, -1], tgt[:, -1, 0], tgt[:, -1, -1]])
        )


def test_texts_name_a_new_value_and_avoid_held_out_combinations():
    data = make_composed_shapes(n=60, seed=1)
    for text, change in zip(data.texts, data.changes):
        assert text.startswith("this image, but ")
        value = text.removeprefix("this image, but ").removeprefix("a ").removeprefix("an ")
        assert value in (COLORS if change == "color" else SHAPES)
    assert modification_text("color", "blue") == "this image, but blue"
    assert modification_text("shape", "square") == "this image, but a square"
    for (ref, tgt), change in zip(data.objects, data.changes):
        assert ref not in HOLDOUT and tgt not in HOLDOUT
        assert (ref[0] != tgt[0], ref[1] != tgt[1]) == ((True, False) if change == "color" else (False, True))
    free = make_composed_shapes(n=200, allow_holdout=True)
    assert any(o in HOLDOUT for pair in free.objects for o in pair)


def test_deterministic_and_prefix_stable():
    a, b = make_composed_shapes(n=12, seed=3), make_composed_shapes(n=5, seed=3)
    assert torch.equal(a.references[:5], b.references) and torch.equal(a.targets[:5], b.targets)
    assert a.texts[:5] == b.texts
    c = make_composed_shapes(n=12, seed=4)
    assert not torch.equal(a.references, c.references)
    only = make_composed_shapes(n=6, changes=("shape",))
    assert set(only.changes) == {"shape"}
    with pytest.raises(InputError, match="changes"):
        make_composed_shapes(n=3, changes=("size",))
    with pytest.raises(InputError, match="n must be"):
        make_composed_shapes(n=0)
    assert np.asarray(a.texts).dtype.kind == "U"
