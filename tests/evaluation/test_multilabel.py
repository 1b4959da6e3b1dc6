"""Multi-label retrieval: P@k / R@k, AP and mAP (empty classes count as 0), E-AUC vs scikit-learn."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.evaluation.multilabel import (
    average_precision,
    multilabel_metrics,
    multilabel_retrieval_metrics,
    per_query_auc,
    precision_recall_at_k,
    relevance_matrix,
    roc_auc,
    roc_curve,
)


def sk_ap(y, s) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No positive class found in y_true"
        return float(average_precision_score(y, s))


def test_precision_and_recall_at_k_by_hand_with_ties_to_the_lower_index():
    scores = np.array(
        [
            [0.9, 0.5, 0.5, 0.1],  # top 2 = {0, 1} (1 and 2 tie: the lower index wins)
            [0.2, 0.8, 0.3, 0.8],  # top 1 = {1}, top 2 = {1, 3}
            [0.4, 0.4, 0.4, 0.4],  # all tie: top k = the first k labels
        ]
    )
    rel = np.array([[1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    m = precision_recall_at_k(scores, rel, ks=(1, 2, 4))
    np.testing.assert_allclose(m["precision@1"], [1, 0, 0])
    np.testing.assert_allclose(m["precision@2"], [0.5, 0.5, 0])
    np.testing.assert_allclose(m["precision@4"], [0.5, 0.5, 0])
    np.testing.assert_allclose(m["recall@1"], [0.5, 0, np.nan])
    np.testing.assert_allclose(m["recall@2"], [0.5, 0.5, np.nan])
    np.testing.assert_allclose(m["recall@4"], [1, 1, np.nan])
    swapped = scores.copy()
    swapped[0, [1, 2]] = [0.5, 0.5 + 1e-9]  # break the tie the other way: label 2 enters the top 2
    assert precision_recall_at_k(swapped, rel, ks=(2,))["precision@2"][0] == 1.0


def test_precision_at_k_equals_a_full_sort():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=(50, 30)).astype(float)  # many ties
    r = rng.random((50, 30)) < 0.2
    order = np.argsort(-s, axis=1, kind="stable")  # ties: lower index first
    for k in (1, 5, 17, 30):
        hits = np.take_along_axis(r, order[:, :k], 1).sum(1)
        got = precision_recall_at_k(s, r, ks=(k,))
        np.testing.assert_allclose(got[f"precision@{k}"], hits / k)
        ok = r.sum(1) > 0
        np.testing.assert_allclose(got[f"recall@{k}"][ok], hits[ok] / r.sum(1)[ok])


def test_average_precision_by_hand_and_against_sklearn():
    # tied scores form one threshold step: both orders of the tied pair give 1/2·1 + 1/2·2/3
    s = np.array([[0.9, 0.8, 0.8, 0.1], [0.9, 0.8, 0.8, 0.1]])
    r = np.array([[1, 0, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(average_precision(s, r), [5 / 6, 5 / 6])
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, size=(40, 25)).astype(float)
    r = rng.random((40, 25)) < 0.15
    r[[3, 9]] = False  # rows without positives: AP 0 (sklearn too)
    ap = average_precision(s, r)
    np.testing.assert_allclose(ap, [sk_ap(r[i], s[i]) for i in range(40)], atol=1e-12)
    assert ap[3] == ap[9] == 0.0


def test_map_counts_a_class_without_positives_as_zero():
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.5, 0.3]])  # 3 queries × 2 classes
    rel = np.array([[1, 0], [0, 0], [1, 0]])  # class 1 has no positive query
    m, ex = multilabel_metrics(scores, rel, ks=(1,))
    # class 0 ranks queries 0 (.9, +), 2 (.5, +), 1 (.1): AP 1; class 1: AP 0 → mAP 1/2
    np.testing.assert_allclose(ex["AP"], [1.0, 0.0])
    assert m["mAP"] == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = average_precision_score(rel, scores, average=None)
    np.testing.assert_allclose(ex["AP"], sk)


def test_roc_auc_oracles_and_sklearn():
    y = np.array([1, 1, 0, 0])
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 1.0  # separated
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 0.0  # reversed
    assert roc_auc(np.full(4, 0.3), y) == 0.5  # all ties
    assert roc_auc(np.array([0.9, 0.5, 0.5, 0.1]), y) == 0.875  # 3 wins + ½ tie of 4 pairs
    rng = np.random.default_rng(2)
    s = rng.integers(0, 6, size=(30, 20)).astype(float)
    r = rng.random((30, 20)) < 0.3
    assert roc_auc(s, r) == pytest.approx(roc_auc_score(r.ravel(), s.ravel()), abs=1e-12)
    assert roc_auc(torch.tensor(s), torch.tensor(r)) == roc_auc(s, r)
    with pytest.raises(InputError, match="needs positives and negatives"):
        roc_auc(np.ones(3), np.zeros(3))


def test_roc_curve_and_per_query_auc_match_sklearn():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 7, size=(25, 15)).astype(float)
    r = rng.random((25, 15)) < 0.3
    r[4], r[7] = False, True  # no positives / no negatives: per-query AUC undefined
    fpr, tpr, thr = roc_curve(s, r)
    f2, t2, th2 = sk_roc_curve(r.ravel(), s.ravel(), drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_array_equal(thr, th2)
    pq = per_query_auc(s, r)
    assert np.isnan(pq[4]) and np.isnan(pq[7])
    ok = [i for i in range(25) if i not in (4, 7)]
    np.testing.assert_allclose(pq[ok], [roc_auc_score(r[i], s[i]) for i in ok], atol=1e-12)


def test_chunking_embeddings_and_sparse_relevance_change_nothing():
    g = torch.Generator().manual_seed(4)
    q, lab = torch.randn(45, 8, generator=g), torch.randn(20, 8, generator=g)
    rel = (torch.rand(45, 20, generator=g) < 0.15).numpy()
    rel[5] = False
    s = (F.normalize(q, dim=-1) @ F.normalize(lab, dim=-1).T).double().numpy()
    dense, dense_ex = multilabel_metrics(s, rel)
    assert dense["roc_auc"] == pytest.approx(roc_auc_score(rel.ravel(), s.ravel()), abs=1e-12)
    assert dense["query_mAP"] == pytest.approx(np.mean([sk_ap(rel[i], s[i]) for i in range(45)]))
    assert dense["mAP"] == pytest.approx(np.mean([sk_ap(rel[:, j], s[:, j]) for j in range(20)]))
    assert dense["n_positives"] == rel.sum() and dense["n_queries"] == 45
    assert len(dense_ex["recall@1"]) == (rel.sum(1) > 0).sum() < 45  # queries without positives: no recall
    positives = [np.flatnonzero(row) for row in rel]
    for chunk in (1, 7, 1000):
        for relevance in (rel, sp.csr_matrix(rel), relevance_matrix(positives, 20)):
            m, _ = multilabel_metrics(s, relevance, chunk=chunk)
            assert m == pytest.approx(dense, abs=1e-12)
        m, _ = multilabel_retrieval_metrics(q, lab, relevance_matrix(positives, 20), chunk=chunk)
        assert m == pytest.approx(dense, abs=1e-6)


def test_random_scores_give_chance_rates():
    rng = np.random.default_rng(5)
    s = rng.random((2000, 50))
    r = rng.random((2000, 50)) < 0.1
    m, _ = multilabel_metrics(s, r, ks=(1, 5), chunk=512)
    assert m["precision@1"] == pytest.approx(0.1, abs=0.015)
    assert m["precision@5"] == pytest.approx(0.1, abs=0.01)
    assert m["recall@5"] == pytest.approx(5 / 50, abs=0.015)
    assert m["roc_auc"] == pytest.approx(0.5, abs=0.01)
    assert m["mAP"] == pytest.approx(0.1, abs=0.02)


def test_bad_inputs():
    s, r = np.zeros((2, 3)), np.zeros((2, 3))
    with pytest.raises(InputError, match="k must be in"):
        precision_recall_at_k(s, r, ks=(4,))
    with pytest.raises(InputError, match="graded relevance"):
        multilabel_metrics(s, np.full((2, 3), 2.0))
    with pytest.raises(InputError, match="graded relevance"):
        multilabel_metrics(s, sp.csr_matrix(np.full((2, 3), 0.5)))
    with pytest.raises(InputError, match="expected"):
        multilabel_metrics(s, np.zeros((3, 3)))
    with pytest.raises(InputError, match="must be equal"):
        average_precision(s, np.zeros((2, 4)))
    with pytest.raises(InputError, match="non-finite"):
        roc_auc(np.array([np.nan, 1.0]), np.array([0, 1]))
    with pytest.raises(InputError, match="outside"):
        relevance_matrix([[0, 5]], 3)
    with pytest.raises(InputError, match="dimension mismatch"):
        multilabel_retrieval_metrics(torch.ones(2, 3), torch.ones(2, 4), r[:, :2])


def test_attribute_concepts_merge_object_slots_and_keep_the_groups():
    from contrastkit.evaluation.multilabel import attribute_concepts

    names = [
        "object1/shape=circle",
        "object1/color=red",
        "object2/shape=circle",
        "object2/color=blue",
        "position=left",
    ]
    values, mapping = attribute_concepts(names, ("shape", "color"))
    assert values == ["blue", "circle", "red"]
    np.testing.assert_array_equal(mapping, [[0, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    with pytest.raises(InputError, match="no attribute of the groups"):
        attribute_concepts(names, ("texture",))


def test_multilabel_task_on_shapes_with_an_oracle_encoder_is_perfect_and_matches_sklearn():
    """Images embed as their concept indicator vector, prompts as the one-hot of their concept:
    the ranking is then exact, so every metric has a known value; a noisy encoder matches sklearn."""
    from contrastkit.data import make_shapes
    from contrastkit.evaluation import Encoders, EvalContext
    from contrastkit.evaluation.multilabel import attribute_concepts, multilabel_task

    pairs = make_shapes("test", 60)
    values, mapping = attribute_concepts(pairs.attribute_names, ("shape", "color"))
    rel = (pairs.attributes.double().numpy() @ mapping) > 0
    noise = torch.randn(len(pairs), len(values), generator=torch.Generator().manual_seed(0))

    def encoders(sigma):
        def images(x):
            assert len(x) == len(pairs)  # the context embeds the whole set in one call
            return torch.tensor(rel, dtype=torch.float32) + sigma * noise

        def texts(t):
            return torch.stack(
                [F.one_hot(torch.tensor(values.index(s.split()[-1])), len(values)).float() for s in t]
            )

        return Encoders(images, texts)

    out, ex = multilabel_task(EvalContext(encoders(0.0), pairs))
    assert out["multilabel/mAP"] == pytest.approx(1.0) and out["multilabel/roc_auc"] == pytest.approx(1.0)
    assert out["multilabel/precision@1"] == 1.0 and out["multilabel/n_labels"] == 16
    n_rel = rel.sum(1)
    assert out["multilabel/recall@5"] == pytest.approx(np.mean(np.minimum(n_rel, 5) / n_rel))
    assert ex["multilabel/precision@1"].shape == (60,)

    out, _ = multilabel_task(EvalContext(encoders(0.7), pairs))
    scores = F.normalize(encoders(0.7).images(pairs.images), dim=-1).double().numpy()  # prompts: one-hot
    want = np.mean([average_precision_score(rel[:, c], scores[:, c]) for c in range(len(values))])
    assert 0.3 < out["multilabel/mAP"] < 1.0 and out["multilabel/mAP"] == pytest.approx(want, abs=1e-6)


def test_multilabel_task_needs_attributes_and_known_options():
    from contrastkit.data import make_shapes
    from contrastkit.evaluation import Encoders, EvalContext
    from contrastkit.evaluation.multilabel import multilabel_task

    pairs = make_shapes("test", 10)
    enc = Encoders(lambda x: torch.ones(len(x), 2), lambda t: torch.ones(len(t), 2))
    with pytest.raises(ConfigError, match="unknown multilabel option"):
        multilabel_task(EvalContext(enc, pairs, options={"multilabel": {"group": ["shape"]}}))
    bare = type(pairs)(pairs.images, pairs.captions, name="bare")
    with pytest.raises(InputError, match="named attributes"):
        multilabel_task(EvalContext(enc, bare))
