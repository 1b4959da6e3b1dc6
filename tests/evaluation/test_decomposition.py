"""R-SPLICE concept decomposition: exact recovery, the KKT zero threshold, a brute-force solver of
the same objective, precision/recall by hand, Shapes ground truth and the registered task."""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import make_shapes
from contrastkit.data.shapes import COLOR_NAMES, SHAPES
from contrastkit.evaluation import EVAL_TASKS, Encoders, EvalContext
from contrastkit.evaluation.decomposition import (
    attribute_truth,
    center_normalize,
    concept_scores,
    concepts_task,
    reconstruction_cosine,
    splice_weights,
)


def dictionary(k=12, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=-1)


def test_exact_sparse_codes_are_recovered_at_small_lambda():
    c = dictionary()
    w_true = torch.zeros(5, 12, dtype=torch.float64)
    w_true[0, [1, 4]] = torch.tensor([0.7, 0.3], dtype=torch.float64)
    w_true[1, 0] = 1.0
    w_true[2, [2, 5, 9]] = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    w_true[3, [11, 3]] = torch.tensor([1.2, 0.4], dtype=torch.float64)
    w_true[4, 7] = 0.05
    z = w_true @ c
    w = splice_weights(z, c, lam=1e-9, max_iter=100_000, tol=1e-12)
    assert np.array_equal(w > 1e-6, w_true.numpy() > 0)  # the support
    assert np.abs(w - w_true.numpy()).max() < 1e-6
    assert reconstruction_cosine(z, w, c) == pytest.approx(np.ones(5), abs=1e-9)


def test_zero_exactly_when_lambda_reaches_the_largest_correlation():
    # KKT of min_{w>=0} ||z - Cw||^2 + 2 lam ||w||_1 at w = 0: c_k . z <= lam for every k
    c = dictionary()
    z = F.normalize(torch.tensor([[0.5, 0.2, 0.1]], dtype=torch.float64) @ c[:3], dim=-1)
    top = float((c @ z[0]).max())
    assert np.count_nonzero(splice_weights(z, c, top * 1.001, tol=1e-12)) == 0
    assert np.count_nonzero(splice_weights(z, c, top * 0.99, tol=1e-12)) >= 1
    many = F.normalize(
        torch.randn(20, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=-1
    )
    w = splice_weights(many, c, lam=10.0)
    assert not w.any() and np.array_equal(reconstruction_cosine(many, w, c), np.zeros(20))


def brute_force(z, c, lam):
    """min_{w>=0} ||z - Cw||^2 + 2 lam ||w||_1 over every support S: on S the optimum solves
    C_S^T C_S w = C_S^T z - lam 1; a candidate must be > 0 there and satisfy the KKT off S."""
    k = c.shape[0]
    best, best_w = np.inf, None
    for r in range(k + 1):
        for s in itertools.combinations(range(k), r):
            w = np.zeros(k)
            if s:
                cs = c[list(s)]
                w[list(s)] = np.linalg.solve(cs @ cs.T, cs @ z - lam)
                if (w[list(s)] <= 0).any():
                    continue
            if (c @ (z - c.T @ w) > lam + 1e-12).any():
                continue
            obj = ((z - c.T @ w) ** 2).sum() + 2 * lam * w.sum()
            if obj < best:
                best, best_w = obj, w
    return best_w


@pytest.mark.parametrize("lam", [0.02, 0.1, 0.3])
def test_matches_a_brute_force_solver_of_the_same_objective(lam):
    c = dictionary(k=6, d=10, seed=2)
    z = F.normalize(
        torch.randn(4, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64), dim=-1
    )
    w = splice_weights(z, c, lam, max_iter=100_000, tol=1e-12)
    for i in range(4):
        assert w[i] == pytest.approx(brute_force(z[i].numpy(), c.numpy(), lam), abs=1e-6)


def test_precision_recall_and_r_precision_by_hand():
    weights = np.array(
        [
            [0.5, 0.2, 0.0, 0.0],  # S = {0, 1}, T = {0, 2}: P 1/2, R 1/2, top-2 {0, 1} -> 1/2
            [0.0, 0.0, 0.0, 0.0],  # S empty: no precision; R 0; R-precision 0
            [0.1, 0.0, 0.9, 0.3],  # S = {0, 2, 3}, T = {2}: P 1/3, R 1, top-1 {2} -> 1
            [0.0, 0.4, 0.0, 0.0],  # T empty: precision 0 (S = {1}), no recall
        ]
    )
    truth = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=bool)
    s = concept_scores(weights, truth)
    assert s["precision"].tolist() == [0.5, 1 / 3, 0.0]
    assert s["recall"].tolist() == [0.5, 0.0, 1.0]
    assert s["r_precision"].tolist() == [0.5, 0.0, 1.0]
    # a true concept among the top-k only if its weight is non-zero (fewer non-zeros: misses)
    one = concept_scores(np.array([[0.3, 0.0, 0.0]]), np.array([[True, True, False]]))
    assert one["r_precision"].tolist() == [0.5] and one["precision"].tolist() == [1.0]
    with pytest.raises(InputError, match="same shape"):
        concept_scores(weights, truth[:, :3])


def test_shapes_ground_truth_is_the_shape_and_colour_words():
    pairs = make_shapes("test", n=40)
    words = [*SHAPES, *COLOR_NAMES, "small"]
    truth = attribute_truth(pairs, words, ("shape", "color"))
    for i in range(40):
        si, ci = pairs.tasks["shape"].labels[i], pairs.tasks["color"].labels[i]
        if si >= 0:  # one object: exactly its shape and colour
            assert np.flatnonzero(truth[i]).tolist() == [si, len(SHAPES) + ci]
        else:  # two objects: 2 to 4 words, all named in the caption
            named = {w for w in words if w in pairs.captions[i][0].split()}
            assert {words[k] for k in np.flatnonzero(truth[i])} == named - {"small"}
    assert not truth[:, -1].any()  # size is not among the keys
    sized = attribute_truth(pairs, words, ("size",))
    assert sized[:, :-1].sum() == 0 and sized[:, -1].any()


def oracle(pairs):
    """Image -> the multi-hot of its objects' shapes and colours; a text -> the multi-hot of the
    shape and colour words it contains (+1e-3): the decomposition can be exact."""
    words = [*SHAPES, *COLOR_NAMES]
    row = {pairs.images[i].numpy().tobytes(): i for i in range(len(pairs))}
    a = pairs.attributes

    def images(x):
        r = [row[im.numpy().tobytes()] for im in x]
        return a[r, :16] + a[r, 18:34]

    def texts(t):
        return torch.tensor([[float(w in s.split()) + 1e-3 for w in words] for s in t])

    return Encoders(images, texts)


def test_task_recovers_the_truth_of_an_oracle_and_writes_its_files(tmp_path):
    assert EVAL_TASKS.get("concepts") is concepts_task
    pairs = make_shapes("test", n=120)
    ctx = EvalContext(oracle(pairs), pairs, None, {"plot_dir": tmp_path, "concepts": {"n_examples": 5}})
    out, ex = concepts_task(ctx)
    truth = attribute_truth(pairs, [*SHAPES, *COLOR_NAMES], ("shape", "color"))
    assert out["concepts/precision"] == out["concepts/recall"] == out["concepts/r_precision"] == 1.0
    assert out["concepts/n_nonzero"] == pytest.approx(truth.sum(1).mean())  # exactly the true words
    assert out["concepts/n_concepts"] == 16.0 and out["concepts/empty"] == 0.0
    for k, v in ex.items():
        assert out[k] == pytest.approx(v.mean())
    # the task against the functions
    x = ctx.image_emb.double()
    raw = F.normalize(ctx.enc.texts([*SHAPES, *COLOR_NAMES]).float(), dim=-1)
    z, c = center_normalize(x, x.mean(0)), center_normalize(raw, raw.double().mean(0))
    w = splice_weights(z, c, 0.1)
    assert ex["concepts/reconstruction_cosine"] == pytest.approx(reconstruction_cosine(z, w, c), abs=1e-12)
    record = json.loads((tmp_path / "concepts.json").read_text())
    assert record["vocabulary"] == [*SHAPES, *COLOR_NAMES] and len(record["images"]) == 5
    first = record["images"][0]
    assert {c["concept"] for c in first["concepts"]} == set(first["truth"])
    assert (tmp_path / "concepts.png").stat().st_size > 1000


def test_vocabulary_option_template_and_errors(tmp_path):
    pairs = make_shapes("test", n=30)
    seen = []

    def texts(t):
        seen.extend(t)
        return oracle(pairs).texts(t)

    enc = Encoders(oracle(pairs).images, texts)
    vocab = tmp_path / "words.txt"
    vocab.write_text("# shapes only\ncircle\nsquare\n\ntriangle\n")
    opts = {"concepts": {"vocabulary": str(vocab), "template": "a photo of a {}"}}
    out, _ = concepts_task(EvalContext(enc, pairs, None, opts))
    assert out["concepts/n_concepts"] == 3.0
    assert seen[:3] == ["a photo of a circle", "a photo of a square", "a photo of a triangle"]
    for bad, match in [
        ({"lam": 0}, "out of range"),
        ({"template": "word"}, "placeholder"),
        ({"text_mean": "images"}, "text_mean"),
        ({"nope": 1}, "unknown concepts option"),
        ({"vocabulary": ["red", "Red"]}, "twice"),
    ]:
        with pytest.raises(ConfigError, match=match):
            concepts_task(EvalContext(enc, pairs, None, {"concepts": bad}))
    with pytest.raises(InputError, match="d=3 but the concept dictionary d=4"):
        splice_weights(torch.ones(2, 3), torch.ones(5, 4), 0.1)
