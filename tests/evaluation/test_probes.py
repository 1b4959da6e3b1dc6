"""E-LINPROBE oracles: the λ search, separable data, the documented objective, kNN, few-shot, task."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.pairs import ClassTask, PairSet
from contrastkit.evaluation import EVAL_TASKS, EvalContext
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.probes import (
    COARSE_INDICES,
    LAMBDA_GRID,
    fewshot_indices,
    fewshot_probe,
    generative_probes,
    knn_predict,
    linear_probe,
    search_peak,
)


def clusters(n_per, centers, noise, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(centers)), n_per)
    x = np.asarray(centers, dtype=np.float64)[y] + noise * rng.normal(size=(len(y), len(centers[0])))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


# ---- the λ search (CLIP_benchmark's coarse + refine) -------------------------------------------


def test_grid_is_the_documented_one():
    np.testing.assert_allclose(LAMBDA_GRID, 10.0 ** np.linspace(-6, 2, 97))
    np.testing.assert_allclose(LAMBDA_GRID[list(COARSE_INDICES)], np.logspace(-6, 2, 7), rtol=1e-12)


@pytest.mark.parametrize("peak", [0, 5, 16, 37, 58, 95, 96])
def test_search_finds_the_argmax_of_a_unimodal_curve_and_visits_the_documented_points(peak):
    calls = []

    def score(i):
        calls.append(i)
        return -abs(i - peak) - 0.01 * (i - peak) ** 2

    best, visited = search_peak(score)
    assert best == peak
    assert visited[:7] == [0, 16, 32, 48, 64, 80, 96]  # coarse pass first, in order
    assert calls == visited and len(set(visited)) == len(visited) <= 7 + 8  # each point scored once
    # every refinement point is p ± 8, 4, 2, 1 around the running peak
    assert set(visited[7:]) <= {i for i in range(97) if any(abs(i - v) in (8, 4, 2, 1) for v in visited)}


def test_search_on_every_peak_position_and_tie_rule():
    assert all(search_peak(lambda i, m=m: -((i - m) ** 2))[0] == m for m in range(97))
    # flat curve: the first candidate in visiting order wins (CLIP_benchmark's strict "<")
    assert search_peak(lambda i: 0.5)[0] == 0
    # a plateau over [40, 60]: coarse picks 48 (first best), refine keeps ties at the left candidate
    best, _ = search_peak(lambda i: 1.0 if 40 <= i <= 60 else 0.0)
    assert best == 40


# ---- the linear probe ----------------------------------------------------------------------------


def test_linearly_separable_data_gives_100_percent():
    centers = np.eye(6)[:, :6] * 3
    x, y = clusters(40, centers, 0.2, 0)
    xt, yt = clusters(15, centers, 0.2, 1)
    r = linear_probe(x, y, xt, yt, n_classes=6)
    assert r["top1"] == 1.0 and r["top5"] == 1.0 and r["balanced_accuracy"] == 1.0
    assert r["lambda"] in LAMBDA_GRID and 7 <= r["n_visited"] <= 15
    assert r["correct"].shape == (90,) and r["correct"].mean() == r["top1"]


def test_fixed_lambda_minimises_the_documented_objective():
    """``min Σ_i CE_i + (λ/2)‖W‖²`` (intercept free), minimised independently in float64."""
    x, y = clusters(20, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], 0.9, 2)
    n, d, c, lam = len(y), 3, 3, 0.7

    def objective(theta):
        w, b = theta[: d * c].reshape(d, c), theta[d * c :]
        z = x @ w + b
        lse = logsumexp(z, axis=1)
        p = np.exp(z - lse[:, None])
        onehot = np.eye(c)[y]
        loss = (lse - z[np.arange(n), y]).sum() + lam / 2 * (w**2).sum()
        g = p - onehot
        return loss, np.concatenate([(x.T @ g + lam * w).ravel(), g.sum(0)])

    res = minimize(objective, np.zeros(d * c + c), jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
    w, b = res.x[: d * c].reshape(d, c), res.x[d * c :]
    p_ref = np.exp((x @ w + b) - logsumexp(x @ w + b, axis=1)[:, None])
    clf = LogisticRegression(C=1 / lam, solver="lbfgs", tol=1e-10, max_iter=5000).fit(x, y)
    np.testing.assert_allclose(clf.predict_proba(x), p_ref, atol=1e-5)
    r = linear_probe(x, y, x, y, n_classes=3, lam=lam)
    assert r["lambda"] == lam and r["n_visited"] == 0
    np.testing.assert_allclose(r["classifier"].predict_proba(x), p_ref, atol=1e-3)  # default tol 1e-4
    assert r["top1"] == pytest.approx(float((p_ref.argmax(1) == y).mean()))
    assert np.isnan(r["top5"])  # fewer than 5 classes


def test_swept_probe_equals_sklearn_refit_on_train_plus_val_with_the_chosen_lambda():
    x, y = clusters(30, np.eye(5) * 2, 1.2, 3)
    xt, yt = clusters(20, np.eye(5) * 2, 1.2, 4)
    r = linear_probe(x, y, xt, yt, n_classes=5)
    clf = LogisticRegression(C=1 / r["lambda"], solver="lbfgs", max_iter=1000).fit(x, y)
    pred = clf.predict(xt)
    np.testing.assert_array_equal(r["correct"], (pred == yt).astype(float))
    recalls = [(pred[yt == c] == c).mean() for c in range(5)]
    assert r["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    top5 = np.argsort(-clf.predict_proba(xt), axis=1)[:, :5]
    assert r["top5"] == pytest.approx((top5 == yt[:, None]).any(1).mean())  # 5 of 5 classes: 1.0
    assert 0.4 < r["top1"] < 1.0  # overlapping classes: a real, non-trivial number


def test_linear_probe_errors():
    x, y = clusters(5, np.eye(2), 0.1, 0)
    with pytest.raises(InputError, match="at least 2 classes"):
        linear_probe(x, np.zeros(10, int), x, y, n_classes=2, lam=1.0)
    with pytest.raises(InputError, match="non-empty test set"):
        linear_probe(x, y, x[:0], y[:0], n_classes=2, lam=1.0)


# ---- kNN -------------------------------------------------------------------------------------------


def test_knn_hand_computed_with_neighbour_and_vote_ties():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = np.array([2, 2, 0, 0, 1])
    query = np.array([[1.0, 0.05], [0.05, 1.0], [0.7, 0.7]])
    # [.7, .7] is exactly as similar to t1 as to t3 (and to t0 as to t2): the lower index ranks first
    assert knn_predict(train, labels, query, k=1).tolist() == [2, 0, 2]
    # k = 3 on [.7, .7]: t1 (2), t3 (0), t0 (2) → class 2
    assert knn_predict(train, labels, query, k=3).tolist() == [2, 0, 2]
    # k = 4: two votes each for classes 0 and 2 on every query → the lower class index, 0
    assert knn_predict(train, labels, query, k=4).tolist() == [0, 0, 0]
    # k larger than the training set: all 5 vote → 2, 2, 1 votes → class 0 (tie 0/2 → 0)
    assert knn_predict(train, labels, query, k=50).tolist() == [0, 0, 0]


def test_knn_matches_sklearn_cosine_uniform_and_chunking_changes_nothing():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 8)), rng.integers(0, 7, 300)
    q = rng.normal(size=(120, 8))
    ref = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute").fit(x, y).predict(q)
    ours = knn_predict(x, y, q, k=20)
    assert (ours == ref).mean() >= 0.99  # float32 vs float64 near-ties may differ on one query
    np.testing.assert_array_equal(knn_predict(x, y, q, k=20, chunk=7), ours)
    with pytest.raises(InputError, match="k and chunk"):
        knn_predict(x, y, q, k=0)


# ---- few-shot and generative ---------------------------------------------------------------------


def test_fewshot_indices_draw_k_per_class_deterministically():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, -1])
    a = fewshot_indices(labels, 2, np.random.default_rng([0, 2]))
    b = fewshot_indices(labels, 2, np.random.default_rng([0, 2]))
    np.testing.assert_array_equal(a, b)
    assert np.bincount(labels[a]).tolist() == [2, 2, 2]
    draws = {tuple(fewshot_indices(labels, 2, np.random.default_rng([s, 2]))) for s in range(10)}
    assert len(draws) > 1
    with pytest.raises(InputError, match="fewer than 4 shots"):
        fewshot_indices(labels, 4, np.random.default_rng(0))


def test_fewshot_probe_on_separable_data_and_nan_when_too_few():
    x, y = clusters(6, np.eye(4) * 3, 0.1, 5)
    xt, yt = clusters(5, np.eye(4) * 3, 0.1, 6)
    out = fewshot_probe(x, y, xt, yt, shots=(1, 5, 10), seeds=(0, 1), lam=1e-2)
    assert out[1] == 1.0 and out[5] == 1.0 and np.isnan(out[10])
    # the mean over seeds of sklearn fits on the documented draws
    accs = []
    for s in (0, 1):
        idx = fewshot_indices(y, 1, np.random.default_rng([s, 1]))
        accs.append((LogisticRegression(C=100.0).fit(x[idx], y[idx]).predict(xt) == yt).mean())
    assert out[1] == pytest.approx(np.mean(accs))


def test_generative_probes_equal_sklearn_defaults():
    x, y = clusters(25, np.eye(4) * 1.5, 0.8, 7)
    xt, yt = clusters(25, np.eye(4) * 1.5, 0.8, 8)
    out = generative_probes(x, y, xt, yt)
    assert out["gnb"] == pytest.approx((GaussianNB().fit(x, y).predict(xt) == yt).mean())
    assert out["lda"] == pytest.approx((LinearDiscriminantAnalysis().fit(x, y).predict(xt) == yt).mean())
    assert 0.5 < out["gnb"] < 1.0
    assert np.isnan(generative_probes(x[::25], y[::25], xt, yt)["lda"])  # 1 sample per class


# ---- the registered task -------------------------------------------------------------------------


def colour_pairs(n, seed, name):
    """Images whose mean colour is one of 3 classes (+ noise); class -1 for every 5th image."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, n)
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])[cls]
    img = np.clip(base[:, :, None, None] + rng.normal(0, 20, (n, 3, 4, 4)), 0, 255).astype(np.uint8)
    labels = np.where(np.arange(n) % 5 == 4, -1, cls)
    task = ClassTask(("red", "green", "blue"), ("a {} image",), labels)
    caps = tuple((f"image {i}",) for i in range(n))
    return PairSet(torch.from_numpy(img), caps, {"colour": task}, name=name)


def mean_colour_encoders():
    def images(x):
        return F.normalize(x.float().mean((2, 3)) - 115.0, dim=-1)

    return Encoders(images, lambda t: torch.ones(len(t), 3))


def test_task_fits_on_train_pairs_and_reports_on_the_evaluated_set():
    import contrastkit.evaluation.probes  # noqa: F401  (registration)

    train, test = colour_pairs(120, 0, "train"), colour_pairs(50, 1, "test")
    opts = {"probe": {"shots": (1, 5), "seeds": (0, 1), "knn_k": 5}}
    m, ex = EVAL_TASKS.get("probe")(EvalContext(mean_colour_encoders(), test, train, opts))
    p = "probe/colour"
    for key in ("linear_top1", "knn_top1", "fewshot_1_top1", "fewshot_5_top1", "gnb_top1", "lda_top1"):
        assert m[f"{p}/{key}"] == 1.0, key
    assert np.isnan(m[f"{p}/linear_top5"]) and m[f"{p}/self_split"] == 0.0
    assert m[f"{p}/n_train"] == 96 and m[f"{p}/n_test"] == 40  # every 5th image is unlabelled
    assert ex[f"{p}/linear_top1"].shape == (40,) and ex[f"{p}/knn_top1"].mean() == m[f"{p}/knn_top1"]
    capped = {"probe": {**opts["probe"], "max_train": 30}}
    m2, _ = EVAL_TASKS.get("probe")(EvalContext(mean_colour_encoders(), test, train, capped))
    assert m2[f"{p}/n_train"] == 30


def test_task_without_train_pairs_splits_the_evaluated_set_50_50():
    from contrastkit.evaluation.probes import probe_task

    test = colour_pairs(61, 2, "test")  # 49 labelled → 24 fit, 25 reported
    opts = {"probe": {"shots": (1,), "seeds": (0,), "knn_k": 3}}
    m, ex = probe_task(EvalContext(mean_colour_encoders(), test, None, opts))
    assert m["probe/colour/self_split"] == 1.0
    assert m["probe/colour/n_train"] == 24 and m["probe/colour/n_test"] == 25
    assert len(ex["probe/colour/linear_top1"]) == 25 and m["probe/colour/linear_top1"] == 1.0
    m_again, _ = probe_task(EvalContext(mean_colour_encoders(), test, None, opts))
    np.testing.assert_equal(m_again, m)  # deterministic (NaN top-5 included)


def test_task_option_errors():
    from contrastkit.evaluation.probes import probe_task

    ctx = EvalContext(mean_colour_encoders(), colour_pairs(20, 0, "t"), None, {"probe": {"max_trian": 5}})
    with pytest.raises(ConfigError, match="max_trian"):
        probe_task(ctx)
    ctx = EvalContext(mean_colour_encoders(), colour_pairs(20, 0, "t"), None, {"probe": {"val_fraction": 1}})
    with pytest.raises(ConfigError, match="out of range"):
        probe_task(ctx)
