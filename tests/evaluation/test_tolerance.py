"""R-UNIF-TOL metrics: tolerance against a direct double loop, the spec's hand values, and the
registered ``uniformity_tolerance`` task against the functions."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.pairs import ClassTask, PairSet
from contrastkit.evaluation import EVAL_TASKS, EvalContext
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.geometry import uniformity
from contrastkit.evaluation.tolerance import tolerance, uniformity_tolerance_task


def naive_tolerance(f, labels):
    f = F.normalize(f.double(), dim=-1)
    sims = [
        float(f[i] @ f[j])
        for i, j in itertools.permutations(range(len(f)), 2)
        if labels[i] >= 0 and labels[i] == labels[j]
    ]
    return sum(sims) / len(sims)


def naive_uniformity(z, t=2.0):
    z = F.normalize(z.double(), dim=-1)
    terms = [
        math.exp(-t * float((z[i] - z[j]).pow(2).sum())) for i, j in itertools.combinations(range(len(z)), 2)
    ]
    return math.log(sum(terms) / len(terms))


def test_tolerance_equals_the_double_loop():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(17, 5, generator=g, dtype=torch.float64)
    labels = np.array([0, 1, 1, 2, 0, 3, 1, -1, 2, 2, 0, 0, 1, -1, 4, 2, 1])  # 3 and 4 alone
    t, n, c = tolerance(f, labels)
    assert t == pytest.approx(naive_tolerance(f, labels), rel=1e-12)
    assert n == 15 and c == 5


def test_spec_hand_values():
    centres = torch.eye(4, dtype=torch.float64)[:3]  # every class collapsed to a point: T = 1
    f = centres[[0, 0, 1, 1, 1, 2, 2]]
    assert tolerance(f, np.array([0, 0, 1, 1, 1, 2, 2]))[0] == pytest.approx(1.0, abs=1e-12)
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert uniformity(antipodal) == pytest.approx(-8.0, abs=1e-12)  # the paper's U with t = 2
    assert tolerance(antipodal, np.array([0, 0]))[0] == pytest.approx(-1.0)
    with pytest.raises(InputError, match="at least 2 labelled items"):
        tolerance(antipodal, np.array([0, 1]))
    with pytest.raises(InputError, match="labels must have shape"):
        tolerance(antipodal, np.array([0]))


def toy_context(n, options, seed=0):
    rng = np.random.default_rng(seed)
    emb = F.normalize(torch.from_numpy(rng.normal(size=(n, 6))), dim=-1).float()
    img = torch.arange(n, dtype=torch.int64).reshape(n, 1, 1, 1).expand(n, 3, 1, 1).to(torch.uint8)
    caps = tuple((f"{i} a", f"{i} b") for i in range(n))
    table = {c: F.normalize(emb[i] + 0.3 * torch.randn(6), dim=0) for i in range(n) for c in caps[i]}
    labels = np.where(np.arange(n) % 7 == 6, -1, np.arange(n) % 3)
    task = ClassTask(("a", "b", "c"), ("{}",), labels)
    enc = Encoders(lambda x: emb[x[:, 0, 0, 0].long()], lambda t: torch.stack([table[s] for s in t]))
    return EvalContext(enc, PairSet(img, caps, {"k": task}, name="toy/test"), None, options), labels


def test_registered_task_matches_the_functions():
    torch.manual_seed(0)
    assert EVAL_TASKS.get("uniformity_tolerance") is uniformity_tolerance_task
    ctx, labels = toy_context(30, {"uniformity_tolerance": {"max_uniformity": 20}})
    out, examples = uniformity_tolerance_task(ctx)
    x, y, owner = ctx.image_emb, ctx.text_emb, ctx.captions[1]
    assert examples == {}
    xi = np.sort(np.random.default_rng(0).choice(30, 20, replace=False))  # seeded subsamples
    yi = np.sort(np.random.default_rng(1).choice(60, 20, replace=False))
    assert out["uniformity_tolerance/image_uniformity"] == pytest.approx(naive_uniformity(x[xi]), rel=1e-6)
    assert out["uniformity_tolerance/text_uniformity"] == pytest.approx(naive_uniformity(y[yi]), rel=1e-6)
    assert out["uniformity_tolerance/n_image"] == 20 and out["uniformity_tolerance/n_text"] == 20
    assert out["uniformity_tolerance/k/image_tolerance"] == pytest.approx(
        naive_tolerance(x, labels), rel=1e-6
    )
    text_labels = labels[owner]
    assert out["uniformity_tolerance/k/text_tolerance"] == pytest.approx(
        naive_tolerance(y, text_labels), rel=1e-6
    )
    assert (
        out["uniformity_tolerance/k/n"] == float((labels >= 0).sum())
        and out["uniformity_tolerance/k/n_classes"] == 3
    )
    bad, _ = toy_context(5, {"uniformity_tolerance": {"tt": 1}})
    with pytest.raises(ConfigError, match=r"unknown uniformity_tolerance option\(s\) \['tt'\]"):
        uniformity_tolerance_task(bad)
