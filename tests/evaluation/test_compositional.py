"""E-WINOGROUND, E-BIVLC, E-GROUPMATCH, E-TTM selection, E-MMVP, blind pairs, suppression probes."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import make_shapes
from contrastkit.data.swaps import make_swap_sets
from contrastkit.evaluation.compositional import (
    attribute_probe,
    bivlc_scores,
    caption_selection_scores,
    global_match_accuracy,
    group_match_scores,
    mine_blind_pairs,
    mmvp_pair_scores,
    swap_scores,
    ttm_margins,
    ttm_select,
    ttm_thresholds,
    winoground_scores,
)
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext

# s[i, j] = score(image i, caption j); the four outcomes of (text, image):
BOTH = [[0.9, 0.1], [0.2, 0.8]]  # each image prefers its caption, each caption its image
TEXT_ONLY = [[0.5, 0.4], [0.6, 0.7]]  # image 0: c0 .5 > c1 .4; image 1: c1 .7 > c0 .6 — but c0 prefers i1
IMAGE_ONLY = [[0.5, 0.6], [0.4, 0.7]]  # c0: i0 .5 > i1 .4; c1: i1 .7 > i0 .6 — but image 0 prefers c1
NEITHER = [[0.1, 0.9], [0.8, 0.2]]  # everything swapped


def test_winoground_four_outcomes_by_hand():
    s = torch.tensor([BOTH, TEXT_ONLY, IMAGE_ONLY, NEITHER])
    w = winoground_scores(s)
    np.testing.assert_array_equal(w["text"], [1, 1, 0, 0])
    np.testing.assert_array_equal(w["image"], [1, 0, 1, 0])
    np.testing.assert_array_equal(w["group"], [1, 0, 0, 0])
    # group matching: identity sum vs swapped sum — 1.7 > .3, 1.2 > 1.0, 1.2 > 1.0, .3 < 1.7
    np.testing.assert_array_equal(group_match_scores(s), [1, 1, 1, 0])
    np.testing.assert_allclose(ttm_margins(s), [1.4, 0.2, 0.2, -1.4], atol=1e-6)


def test_ties_count_as_failures():
    tie_text = [[0.5, 0.5], [0.1, 0.9]]  # image 0 cannot choose between its captions
    tie_image = [[0.5, 0.1], [0.5, 0.9]]  # caption 0 cannot choose between the images
    all_equal = [[0.3, 0.3], [0.3, 0.3]]
    w = winoground_scores(np.array([tie_text, tie_image, all_equal]))
    np.testing.assert_array_equal(w["text"], [0, 1, 0])
    np.testing.assert_array_equal(w["image"], [1, 0, 0])
    np.testing.assert_array_equal(w["group"], [0, 0, 0])
    tie_sum = [[0.5, 0.4], [0.3, 0.2]]  # 0.5 + 0.2 == 0.4 + 0.3
    for method in ("auto", "enumerate", "hungarian"):
        assert group_match_scores(np.array([all_equal, tie_sum]), method).tolist() == [0, 0]
        assert group_match_scores(np.full((1, 4, 4), 0.25), method).tolist() == [0]


def test_bivlc_equals_winoground_and_its_sub_scores():
    b = bivlc_scores(np.array([BOTH, TEXT_ONLY, IMAGE_ONLY, NEITHER]))
    np.testing.assert_array_equal(b["ipos2t"], [1, 1, 0, 0])  # s00 > s01
    np.testing.assert_array_equal(b["ineg2t"], [1, 1, 1, 0])  # s11 > s10
    np.testing.assert_array_equal(b["tpos2i"], [1, 0, 1, 0])  # s00 > s10
    np.testing.assert_array_equal(b["tneg2i"], [1, 1, 1, 0])  # s11 > s01
    s = np.random.default_rng(0).integers(0, 3, size=(500, 2, 2)).astype(float)  # many ties
    w, b = winoground_scores(s), bivlc_scores(s)
    for mine, theirs in (("text", "i2t"), ("image", "t2i"), ("group", "group")):
        np.testing.assert_array_equal(w[mine], b[theirs])


def test_caption_selection_general_form():
    s = np.random.default_rng(1).integers(0, 3, size=(500, 2, 2)).astype(float)
    w, c = winoground_scores(s), caption_selection_scores(s)
    for key in ("text", "image", "group"):  # N = M = 2 equals the 2×2 formulas, ties included
        np.testing.assert_array_equal(w[key], c[key])
    three = np.array(
        [
            [[0.9, 0.1, 0.2], [0.0, 0.8, 0.1], [0.3, 0.2, 0.7]],  # all diagonal entries win both ways
            [[0.5, 0.1, 0.2], [0.0, 0.8, 0.1], [0.6, 0.2, 0.7]],  # caption 0 prefers image 2 (.6 > .5)
            [[0.9, 0.1, 0.2], [0.0, 0.8, 0.8], [0.3, 0.2, 0.9]],  # image 1 ties its caption with caption 2
        ]
    )
    c = caption_selection_scores(three)
    np.testing.assert_array_equal(c["text"], [1, 1, 0])
    np.testing.assert_array_equal(c["image"], [1, 0, 1])
    one_image = np.array([[[0.7, 0.2, 0.6]], [[0.5, 0.6, 0.1]]])  # 1×M: caption 0 must win
    np.testing.assert_array_equal(caption_selection_scores(one_image)["text"], [1, 0])


def test_chance_rates_by_monte_carlo():
    s = torch.rand(100_000, 2, 2, generator=torch.Generator().manual_seed(0))
    w, gm = winoground_scores(s), group_match_scores(s)
    assert w["text"].mean() == pytest.approx(0.25, abs=0.01)
    assert w["image"].mean() == pytest.approx(0.25, abs=0.01)
    assert w["group"].mean() == pytest.approx(1 / 6, abs=0.01)
    assert gm.mean() == pytest.approx(0.5, abs=0.01)
    assert (gm[w["group"] == 1] == 1).all()  # group ⇒ group-match


def test_group_match_methods_agree_and_match_brute_force():
    rng = np.random.default_rng(2)
    s2 = rng.normal(size=(300, 2, 2))
    closed = group_match_scores(s2)
    np.testing.assert_array_equal(closed, group_match_scores(s2, "hungarian"))
    np.testing.assert_array_equal(closed, group_match_scores(s2, "enumerate"))
    for k in (3, 4, 5):
        s = rng.normal(size=(60, k, k)) + 1.2 * np.eye(k)  # a mix of correct and wrong groups
        e, h = group_match_scores(s, "enumerate"), group_match_scores(s, "hungarian")
        np.testing.assert_array_equal(e, h)
        ident = s[:, np.arange(k), np.arange(k)].sum(1)
        best_other = [
            max(
                m[np.arange(k), list(p)].sum()
                for p in itertools.permutations(range(k))
                if list(p) != list(range(k))
            )
            for m in s
        ]
        np.testing.assert_array_equal(e, (ident > np.array(best_other)).astype(float))
        assert 0 < e.mean() < 1
    big = rng.normal(size=(3, 8, 8)) + 3 * np.eye(8)
    big[2, [0, 1]] = big[2, [1, 0]]  # swapping two rows makes the identity lose
    np.testing.assert_array_equal(group_match_scores(big), [1, 1, 0])


def test_global_matching():
    s = np.eye(4) * 0.5 + 0.1
    s[[2, 3]] = s[[3, 2]]  # rows 2 and 3 match each other's columns
    np.testing.assert_array_equal(global_match_accuracy(s), [1, 1, 0, 0])
    np.testing.assert_array_equal(global_match_accuracy(torch.eye(3)[:2]), [1, 1])  # N < M
    with pytest.raises(InputError, match="rows <= columns"):
        global_match_accuracy(np.ones((3, 2)))


def test_ttm_selection_and_thresholds():
    np.testing.assert_allclose(ttm_thresholds(5), [2.0, 1.5, 1.0, 0.5, 0.0])
    m = np.array([3.0, -3.0, 0.5, -0.5, 0.0, 1.0, -1.0])
    idx, orient = ttm_select(m, 1.0)
    np.testing.assert_array_equal(idx, [0, 1, 5, 6])
    np.testing.assert_array_equal(orient, [1, -1, 1, -1])
    idx, orient = ttm_select(m, 0.0)
    np.testing.assert_array_equal(idx, np.arange(7))
    np.testing.assert_array_equal(orient, [1, -1, 1, -1, 1, 1, -1])  # a zero margin: identity
    idx, orient = ttm_select(m, float("inf"))
    assert len(idx) == 0 and len(orient) == 0
    with pytest.raises(InputError, match="tau must be >= 0"):
        ttm_select(m, -1.0)


def test_mmvp_gives_exact_ties_to_the_second_image():
    s = np.array(
        [
            [[0.6, 0.2], [0.3, 0.7]],  # both statements pick their image
            [[0.6, 0.5], [0.3, 0.5]],  # statement 1 ties: image 2 (its own) is predicted → correct
            [[0.4, 0.2], [0.4, 0.7]],  # statement 0 ties: image 2 predicted → wrong
            [[0.6, 0.8], [0.3, 0.7]],  # statement 1 prefers image 1 → wrong
        ]
    )
    np.testing.assert_array_equal(mmvp_pair_scores(s), [1, 1, 0, 0])


def brute_blind(x, labels, hi, xb=None, lo=0.6):
    x = F.normalize(torch.as_tensor(x).float(), dim=-1)
    sims = (x @ x.T).numpy()
    simb = (
        None
        if xb is None
        else (lambda y: (y @ y.T).numpy())(F.normalize(torch.as_tensor(xb).float(), dim=-1))
    )
    found, n_diff = [], 0
    per_diff, per_blind = np.zeros(labels.shape[1]), np.zeros(labels.shape[1])
    for i, j in itertools.combinations(range(len(x)), 2):
        d = (labels[i] != labels[j]) & (labels[i] >= 0) & (labels[j] >= 0)
        if not d.any() or (simb is not None and not simb[i, j] < lo):
            continue
        n_diff += 1
        per_diff += d
        if sims[i, j] > hi:
            found.append((i, j))
            per_blind += d
    return found, n_diff, per_blind / per_diff


def test_mining_returns_exactly_the_planted_pairs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 64, generator=g)
    x[7] = x[2] + 0.01 * torch.randn(64, generator=g)  # planted: 2~7, 11~20, 4~25 embed alike
    x[20] = x[11] + 0.01 * torch.randn(64, generator=g)
    x[25] = x[4] + 0.01 * torch.randn(64, generator=g)
    labels = np.stack([np.arange(30) % 3, np.arange(30) % 5], 1)  # (colour, shape)-like attributes
    labels[25] = labels[4]  # 4~25 look alike *and* are alike: not blind
    labels[20, 1] = -1  # 11~20: shape unknown for 20, colour 11 % 3 = 2 == 20 % 3 = 2 → not known to differ
    res = mine_blind_pairs(x, 0.95, labels=labels, chunk=7)
    np.testing.assert_array_equal(res.pairs, [[2, 7]])
    assert res.differs.tolist() == [[True, False]]  # 2 and 7 differ in colour only and res.cosine[0] > 0.95
    found, n_diff, rates = brute_blind(x, labels, 0.95)
    assert found == [(2, 7)] and res.n_differing == n_diff and res.rate == pytest.approx(1 / n_diff)
    np.testing.assert_allclose(res.attribute_rates, rates)
    # a second encoder as the reference (the paper's DINOv2 role): 2~7 and 4~25 differ there
    xb = torch.randn(30, 64, generator=g)
    xb[20] = xb[11]
    res_b = mine_blind_pairs(x, 0.95, emb_b=xb)
    np.testing.assert_array_equal(res_b.pairs, [[2, 7], [4, 25]])
    assert res_b.differs is None
    both = mine_blind_pairs(x, 0.95, emb_b=xb, labels=labels)
    found, n_diff, _ = brute_blind(x, labels, 0.95, xb)
    np.testing.assert_array_equal(both.pairs, found)
    assert both.n_differing == n_diff


def test_mining_on_random_embeddings_matches_brute_force_at_any_chunk():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 3))  # low dimension: many pairs above 0.9
    labels = rng.integers(-1, 3, size=(40, 2))
    found, n_diff, rates = brute_blind(x, labels, 0.9)
    for chunk in (1, 6, 100):
        res = mine_blind_pairs(x, 0.9, labels=labels, chunk=chunk)
        assert [tuple(p) for p in res.pairs] == found and res.n_differing == n_diff
        np.testing.assert_allclose(res.attribute_rates, rates)
    with pytest.raises(InputError, match="needs a reference"):
        mine_blind_pairs(x)
    with pytest.raises(InputError, match="labels must have shape"):
        mine_blind_pairs(x, labels=labels[:5])


def test_attribute_probe_reads_encoded_attributes_and_not_absent_ones():
    rng = np.random.default_rng(5)
    y_read, y_absent = rng.integers(0, 4, 600), rng.integers(0, 3, 600)
    x = np.eye(4)[y_read] + 0.1 * rng.normal(size=(600, 4))  # encodes y_read only
    r = attribute_probe(x[:400], y_read[:400], x[400:], y_read[400:])
    assert r["accuracy"] == 1.0 and r["gain"] == 1.0
    assert r["chance"] == pytest.approx(np.bincount(y_read[400:]).max() / 200)
    r = attribute_probe(x[:400], y_absent[:400], x[400:], y_absent[400:], lam=1e-3)
    assert r["accuracy"] < r["chance"] + 0.1 and abs(r["gain"]) < 0.15
    assert r["correct"].mean() == r["accuracy"]


def table_encoders(table_images: dict[bytes, torch.Tensor], table_texts: dict[str, torch.Tensor]) -> Encoders:
    return Encoders(
        lambda x: torch.stack([table_images[im.numpy().tobytes()] for im in x]),
        lambda t: torch.stack([table_texts[c] for c in t]),
    )


def test_swap_scores_are_image_by_caption():
    sw = make_swap_sets(5, "relation", seed=1)
    g = torch.Generator().manual_seed(6)
    imgs = {
        sw.images[i, j].numpy().tobytes(): torch.randn(6, generator=g) for i in range(5) for j in range(2)
    }
    txts = {c: torch.randn(6, generator=g) for cs in sw.captions for c in cs}
    s = swap_scores(table_encoders(imgs, txts), sw)
    for i in range(5):
        for a, b in itertools.product(range(2), range(2)):  # s[g, image a, caption b]
            x, t = imgs[sw.images[i, a].numpy().tobytes()], txts[sw.captions[i][b]]
            assert s[i, a, b].item() == pytest.approx(F.cosine_similarity(x, t, dim=0).item(), abs=1e-6)


def test_winoground_task_with_a_perfect_and_a_blind_encoder():
    n = 12
    pairs = make_shapes("test", 4, image_size=24)  # the swap sets take the evaluated size
    imgs, txts = {}, {}
    for k, kind in enumerate(("attribute", "relation")):
        sw = make_swap_sets(n, kind, image_size=24, seed=7)
        for g in range(n):
            for j in range(2):
                e = torch.zeros(4 * n + 2 * n)
                e[(k * n + g) * 2 + j] = 1.0  # this image / caption
                e[4 * n + k * n + g] = 0.5  # the group's shared content
                imgs[sw.images[g, j].numpy().tobytes()] = e
                txts[sw.captions[g][j]] = e
    options = {"winoground": {"n": n, "seed": 7}}
    m, ex = EVAL_TASKS.get("winoground")(EvalContext(table_encoders(imgs, txts), pairs, options=options))
    keys = {
        f"winoground/{k}/{s}"
        for k in ("attribute", "relation")
        for s in ("text", "image", "group", "group_match")
    }
    assert set(m) == keys and set(ex) == keys
    assert all(v == 1.0 for v in m.values()) and all(len(a) == n for a in ex.values())
    blind = Encoders(lambda x: torch.ones(len(x), 4), lambda t: torch.ones(len(t), 4))
    m, ex = EVAL_TASKS.get("winoground")(EvalContext(blind, pairs, options=options))
    assert all(v == 0.0 for v in m.values())  # every score ties: all fail
    with pytest.raises(ConfigError, match="unknown winoground option"):
        EVAL_TASKS.get("winoground")(EvalContext(blind, pairs, options={"winoground": {"size": 3}}))


def test_blind_pairs_task_with_a_colour_only_encoder():
    pairs = make_shapes("test", 120, seed=1)
    col, shp = pairs.tasks["color"].labels, pairs.tasks["shape"].labels
    rng = np.random.default_rng(0)
    emb = {}
    for i, im in enumerate(pairs.images):  # sees colour only; two-object images: random directions
        emb[im.numpy().tobytes()] = torch.eye(8)[col[i]] if col[i] >= 0 else torch.tensor(rng.normal(size=8))
    enc = Encoders(lambda x: torch.stack([emb[im.numpy().tobytes()] for im in x]).float(), lambda t: None)
    m, _ = EVAL_TASKS.get("blind_pairs")(
        EvalContext(enc, pairs, options={"blind_pairs": {"tasks": ["shape", "color"]}})
    )
    lab = np.flatnonzero(col >= 0)
    same_col = sum(col[i] == col[j] and shp[i] != shp[j] for i, j in itertools.combinations(lab, 2))
    diff_any = sum(col[i] != col[j] or shp[i] != shp[j] for i, j in itertools.combinations(lab, 2))
    diff_shape = sum(shp[i] != shp[j] for i, j in itertools.combinations(lab, 2))
    assert m["blind_pairs/count"] == same_col and m["blind_pairs/n_differing"] == diff_any
    assert m["blind_pairs/rate"] == pytest.approx(same_col / diff_any)
    assert m["blind_pairs/color/rate"] == 0.0
    assert m["blind_pairs/shape/rate"] == pytest.approx(same_col / diff_shape)
    with pytest.raises(ConfigError, match="blind_pairs tasks"):
        EVAL_TASKS.get("blind_pairs")(EvalContext(enc, pairs, options={"blind_pairs": {"tasks": ["size"]}}))


def colour_encoder() -> Encoders:
    """Mean colour of the brightest pixels, centred: encodes colour, not shape, size or place."""

    def images(x: torch.Tensor) -> torch.Tensor:
        f = x.float()
        total = f.sum(1, keepdim=True)
        bright = (total >= 0.9 * total.amax((2, 3), keepdim=True)).float()
        mean = (f * bright).sum((2, 3)) / bright.sum((2, 3))
        return mean - 128.0

    return Encoders(images, lambda t: None)


def test_suppression_task_on_generated_attributes_and_on_the_pairs():
    pairs = make_shapes("test", 300, seed=2)
    opts = {"suppression": {"n_fit": 400, "n_test": 300}}
    m, ex = EVAL_TASKS.get("suppression")(EvalContext(colour_encoder(), pairs, options=opts))
    assert {k.split("/")[1] for k in m} == {"shape", "color", "size", "position"}
    assert m["suppression/color/accuracy"] > 0.9 and m["suppression/color/gain"] > 0.85
    assert m["suppression/position/gain"] < 0.3 and m["suppression/shape/gain"] < 0.3
    assert ex["suppression/color/accuracy"].mean() == m["suppression/color/accuracy"]
    assert len(ex["suppression/color/accuracy"]) == 300
    m, _ = EVAL_TASKS.get("suppression")(
        EvalContext(colour_encoder(), pairs, options={"suppression": {"source": "pairs"}})
    )
    tasks = {k.split("/")[1] for k in m} - {"self_split"}
    assert tasks == {"shape", "color", "shape+color"}  # the pair set's own tasks
    assert m["suppression/self_split"] == 1.0  # no train_pairs: fit on a seeded half of the pairs
    assert m["suppression/color/accuracy"] > 0.9
    with pytest.raises(ConfigError, match="unknown suppression source"):
        EVAL_TASKS.get("suppression")(
            EvalContext(colour_encoder(), pairs, options={"suppression": {"source": "x"}})
        )


def test_bad_score_tensors():
    with pytest.raises(InputError, match="expected 2×2 groups"):
        winoground_scores(np.zeros((3, 2, 3)))
    with pytest.raises(InputError, match="scores must have shape"):
        winoground_scores(np.zeros((2, 2)))
    with pytest.raises(InputError, match="non-finite"):
        winoground_scores(np.full((1, 2, 2), np.nan))
    with pytest.raises(InputError, match="square k×k"):
        group_match_scores(np.zeros((1, 2, 3)))
