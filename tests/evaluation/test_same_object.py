"""Same-object matching: the view generators change only the named condition, render as Shapes
renders, are deterministic; the task scores an identity oracle 1, an identity-blind embedding
exactly chance 1/(m + 1) (random tie order), a random one near chance, and refuses other data."""

import math

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import make_shapes
from contrastkit.data.pairs import ClassTask, PairSet
from contrastkit.data.same_object import (
    CONDITION_FIELDS,
    IDENTITY,
    make_same_object_shapes,
    make_same_object_views,
    paint_object,
)
from contrastkit.data.shapes import COLORS, ShapeObject, render_scene
from contrastkit.evaluation import EVAL_TASKS, EvalContext
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.same_object import gallery_ranks, same_object_set, same_object_task
from contrastkit.evaluation.tasks import SPLIT_INDEPENDENT


def _changed(a, b):
    return {k for k in a if a[k] != b[k]}


def _views(data):
    """(image bytes, record) of every view of a same-object set."""
    for i, (q, mt, ds) in enumerate(data.attributes):
        yield data.queries[i], q
        yield data.matches[i], mt
        yield from zip(data.distractors[i], ds)


def _lookup_encoder(data, fields):
    """Embeds an image as the one-hot of the values of ``fields`` in its record (by its bytes)."""
    key = {im.numpy().tobytes(): tuple(rec[f] for f in fields) for im, rec in _views(data)}
    codes = {v: i for i, v in enumerate(sorted(set(key.values()), key=repr))}

    def images(x):
        out = torch.zeros(len(x), len(codes))
        for i, im in enumerate(x):
            out[i, codes[key[im.numpy().tobytes()]]] = 1.0
        return out

    return Encoders(images, lambda t: torch.zeros(len(t), len(codes)))


def test_paint_object_draws_as_render_scene():
    rng = np.random.default_rng(7)
    level, noise, jitter = (
        rng.integers(0, 50),
        rng.integers(-8, 9, size=(3, 32, 32)),
        rng.integers(-15, 16, 3),
    )
    obj = ShapeObject("star", "red", "large", 10.3, 17.9, 6.7)
    view = {"shape": "star", "rgb": np.clip(np.array(COLORS["red"]) + jitter, 0, 255), "cx": 10.3, "cy": 17.9}
    mine = paint_object(np.clip(level + noise, 0, 255).astype(np.uint8), {**view, "radius": 6.7})
    assert np.array_equal(mine, render_scene([obj], 32, np.random.default_rng(7)))


@pytest.mark.parametrize("mode", ["matched", "query"])
def test_shapes_pairs_change_only_the_named_condition(mode):
    data = make_same_object_shapes(12, 32, seed=3, m=5, distractors=mode)
    assert len(data) == 36 and data.distractors.shape == (36, 5, 3, 32, 32)
    for c, (q, mt, ds) in zip(data.conditions, data.attributes):
        assert _changed(q, mt) == set(CONDITION_FIELDS[c])  # exactly the condition's fields
        base = mt if mode == "matched" else q
        for d in ds:
            assert d["shape"] == q["shape"] and d["color"] != q["color"]  # same class, other object
            assert _changed(base, d) == set(IDENTITY["shapes"]) - {"shape"}  # its colour, nothing else
        if c == "background":
            assert abs(q["level"] - mt["level"]) >= 15
    i = data.conditions.index("size")  # position and size: the same background noise bytes
    corner = (slice(None), slice(0, 2), slice(0, 2))
    assert torch.equal(data.queries[i][corner], data.matches[i][corner])
    again = make_same_object_shapes(5, 32, seed=3, m=5, distractors=mode)  # prefix-deterministic
    for c in ("position", "size", "background"):
        a, b = data.conditions.index(c), again.conditions.index(c)
        assert torch.equal(data.distractors[a : a + 5], again.distractors[b : b + 5])
        assert data.attributes[a : a + 5] == again.attributes[b : b + 5]


def _labelled_images(n_per=12, classes=3, size=28):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_per * classes, 3, size, size), generator=g, dtype=torch.uint8)
    return images, np.repeat(np.arange(classes), n_per)


@pytest.mark.parametrize("mode", ["matched", "query"])
def test_fashion_views_change_only_the_named_condition(mode):
    images, labels = _labelled_images()
    data = make_same_object_views(images, labels, n=8, seed=1, m=4, distractors=mode)
    for i, (c, (q, mt, ds)) in enumerate(zip(data.conditions, data.attributes)):
        assert _changed(q, mt) == set(CONDITION_FIELDS[c])
        assert torch.equal(data.queries[i], images[q["item"]])
        assert len({d["item"] for d in ds} | {q["item"]}) == 5 and all(d["label"] == q["label"] for d in ds)
        base = mt if mode == "matched" else q
        assert all(_changed(base, d) == {"item"} for d in ds)
        if c == "flip":
            assert torch.equal(data.matches[i], images[q["item"]].flip(-1))
        if mode == "query":
            assert all(torch.equal(data.distractors[i][j], images[d["item"]]) for j, d in enumerate(ds))
    with pytest.raises(InputError, match="at least m \\+ 1"):
        make_same_object_views(images, labels, m=12)


def test_gallery_ranks_with_ties():
    s = torch.tensor(
        [[0.5, 0.1, 0.2], [0.5, 0.5, 0.5], [0.3, 0.5, 0.3], [0.5, 0.5, 0.1]], dtype=torch.float64
    )
    top1, rank = gallery_ranks(s)
    assert top1.tolist() == [1.0, 1 / 3, 0.0, 0.5] and rank.tolist() == [1.0, 2.0, 2.5, 1.5]


def _ctx(pairs, enc, **opts):
    return EvalContext(enc, pairs, None, {"same_object": opts})


def test_task_oracle_blind_and_random_encoders_on_shapes():
    assert EVAL_TASKS.get("same_object") is same_object_task
    pairs = make_shapes("test", n=4, image_size=32)
    ctx = _ctx(pairs, Encoders(lambda x: x, lambda t: t), n=60, m=9)
    assert SPLIT_INDEPENDENT["same_object"](ctx)
    data = same_object_set(ctx)
    out, ex = same_object_task(_ctx(pairs, _lookup_encoder(data, ("shape", "color", "rgb")), n=60, m=9))
    for c in ("position", "size", "background"):
        assert out[f"same_object/{c}/top1"] == 1.0 and out[f"same_object/{c}/mean_rank"] == 1.0
        assert out[f"same_object/{c}/n"] == 60 and ex[f"same_object/{c}/top1"].shape == (60,)
    # identity-blind (position, size, background only): the whole gallery ties, exactly chance
    blind = _lookup_encoder(data, ("position", "cx", "cy", "size", "level", "noise"))
    out, ex = same_object_task(_ctx(pairs, blind, n=60, m=9))
    assert out["same_object/top1"] == pytest.approx(0.1, abs=1e-12) == out["same_object/chance"]
    assert out["same_object/mean_rank"] == pytest.approx(5.5, abs=1e-12)
    # the same encoder with distractors under the query's conditions: they always win
    qdata = same_object_set(_ctx(pairs, blind, n=60, m=9, distractors="query"))
    qblind = _lookup_encoder(qdata, ("position", "cx", "cy", "size", "level", "noise"))
    out, _ = same_object_task(_ctx(pairs, qblind, n=60, m=9, distractors="query"))
    assert out["same_object/top1"] == 0.0 and out["same_object/mean_rank"] == 10.0
    # a random embedding of each image: top-1 ~ Binomial(180, 1/10)/180, 4 sd
    g = torch.Generator().manual_seed(0)
    rand = Encoders(lambda x: torch.randn(len(x), 64, generator=g), lambda t: torch.zeros(len(t), 64))
    out, _ = same_object_task(_ctx(pairs, rand, n=60, m=9))
    assert abs(out["same_object/top1"] - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 180)


def test_task_on_fashion_like_sets_and_refusals():
    images, labels = _labelled_images()
    task = ClassTask(tuple("abc"), ("{}",), labels)
    pairs = PairSet(
        images, tuple((f"x{i}",) for i in range(len(images))), {"class": task}, name="fashion_mnist/test"
    )
    ctx = _ctx(pairs, Encoders(lambda x: x, lambda t: t), n=10, m=4, conditions=["flip", "crop"])
    assert not SPLIT_INDEPENDENT["same_object"](ctx)
    oracle = _lookup_encoder(same_object_set(ctx), ("item",))
    out, _ = same_object_task(_ctx(pairs, oracle, n=10, m=4, conditions=["flip", "crop"]))
    assert out["same_object/flip/top1"] == 1.0 and out["same_object/crop/top1"] == 1.0
    assert "same_object/brightness/top1" not in out and out["same_object/chance"] == 0.2
    other = PairSet(images, pairs.captions, {"class": task}, name="digits/test")
    with pytest.raises(InputError, match="supports Shapes .* and Fashion-MNIST"):
        same_object_task(_ctx(other, oracle))
    with pytest.raises(ConfigError, match="conditions for fashion_mnist"):
        same_object_task(_ctx(pairs, oracle, conditions=["size"]))
    with pytest.raises(ConfigError, match="unknown same_object option"):
        same_object_task(_ctx(pairs, oracle, k=3))
