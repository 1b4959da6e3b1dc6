"""The filters against hand-computed keeps: the DataComp keep rule, near duplicates against a
brute-force pairwise computation, and caption complexity against counts done by hand."""

import math

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.curation import (
    FILTERS,
    ClipScore,
    Complexity,
    FilterInput,
    NearDuplicates,
    caption_complexity,
    clip_score_keep,
    near_duplicate_keep,
)
from contrastkit.curation.filters import reduce_captions

SCORES = np.array([0.1, 0.4, 0.3, 0.2, 0.5])


def test_clip_score_keep_rule():
    keep, tau = clip_score_keep(SCORES, keep=0.4)  # ⌊5·0.4⌋ = 2 → τ = sorted desc[2] = 0.3
    assert tau == 0.3 and keep.tolist() == [False, True, True, False, True]
    keep, tau = clip_score_keep(SCORES, keep=0.4, exact_count=True)  # exactly the 2 best
    assert tau == 0.4 and keep.tolist() == [False, True, False, False, True]
    keep, tau = clip_score_keep(SCORES, threshold=0.3)  # inclusive
    assert tau == 0.3 and keep.tolist() == [False, True, True, False, True]
    ties = np.array([0.5, 0.3, 0.3, 0.1])
    assert clip_score_keep(ties, keep=0.25)[0].tolist() == [True, True, True, False]  # ties at τ kept
    assert clip_score_keep(ties, keep=0.5, exact_count=True)[0].tolist() == [True, True, False, False]
    assert clip_score_keep(SCORES, keep=1.0)[0].all()  # index clamped to n − 1: keeps all
    assert clip_score_keep(SCORES, keep=0.0)[0].tolist() == [False, False, False, False, True]
    assert not clip_score_keep(SCORES, keep=0.0, exact_count=True)[0].any()


def test_clip_score_keep_rule_refuses():
    with pytest.raises(ConfigError, match="exactly one of keep"):
        clip_score_keep(SCORES, keep=0.3, threshold=0.2)
    with pytest.raises(ConfigError, match="exactly one of keep"):
        clip_score_keep(SCORES)
    with pytest.raises(InputError, match="1 scores are NaN"):
        clip_score_keep(np.array([0.1, np.nan]), keep=0.5)
    with pytest.raises(ConfigError, match="parameter keep must be in \\[0, 1\\], got 1.5"):
        FILTERS.build("clip_score", keep=1.5)
    with pytest.raises(ConfigError, match="not both"):
        FILTERS.build("clip_score", keep=0.5, threshold=0.2)


def _unit(*angles_deg):
    return np.array([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles_deg], np.float32)


def test_clip_score_filter_several_captions():
    # 3 images at 0°, 90°, 180°; row 0 has two captions (0° and 60°), rows 1 and 2 one each
    img = _unit(0, 90, 180)
    txt = _unit(0, 60, 90, 90)  # cosines with their images: 1, 0.5 | 1 | cos(90°) = 0
    x = FilterInput((("a", "b"), ("c",), ("d",)), img, txt, np.array([0, 0, 1, 2]))
    mean = ClipScore(threshold=0.8).apply(x)  # row 0: mean(1, 0.5) = 0.75 < 0.8
    assert mean.scores == pytest.approx([0.75, 1.0, 0.0], abs=1e-6)
    assert mean.keep.tolist() == [False, True, False]
    assert mean.reasons == ("clip_score < 0.8000", "", "clip_score < 0.8000")
    best = ClipScore(threshold=0.8, caption_rule="max").apply(x)
    assert best.keep.tolist() == [True, True, False]
    assert ClipScore() == ClipScore(keep=0.3) and ClipScore(threshold=0.2).keep is None
    default = ClipScore().apply(x)  # keep=0.3: ⌊3·0.3⌋ = 0 → the best row (plus ties)
    assert default.keep.tolist() == [False, True, False] and default.details["keep_fraction"] == 0.3


def test_reduce_captions():
    v, owner = np.array([1.0, 3.0, 5.0, 2.0]), np.array([0, 0, 0, 1])
    assert reduce_captions(v, owner, 2, "mean").tolist() == [3.0, 2.0]
    assert reduce_captions(v, owner, 2, "max").tolist() == [5.0, 2.0]
    assert reduce_captions(v, owner, 2, "min").tolist() == [1.0, 2.0]
    assert reduce_captions(v, owner, 2, "first").tolist() == [1.0, 2.0]
    with pytest.raises(InputError, match="row 1 has no caption"):
        reduce_captions(v[:3], owner[:3], 2, "mean")


def test_near_duplicates_by_hand():
    # A at 0°, B at 10°, C at 20°: cos(A,B) = cos(B,C) = 0.9848, cos(A,C) = 0.9397. At 0.98, B
    # repeats A and goes; C only repeats B, which is gone, so C stays (greedy against kept rows).
    keep, nearest, partner = near_duplicate_keep(_unit(0, 10, 20), 0.98)
    assert keep.tolist() == [True, False, True]
    assert partner.tolist() == [-1, 0, -1]
    assert nearest == pytest.approx([0.98481, 0.98481, 0.98481], abs=1e-5)
    keep, _, partner = near_duplicate_keep(_unit(0, 10, 20), 0.9)  # now C repeats A too
    assert keep.tolist() == [True, False, False] and partner.tolist() == [-1, 0, 0]
    exact = np.repeat(_unit(45), 3, axis=0)  # identical images meet threshold 1 (float32 slack)
    assert near_duplicate_keep(exact, 1.0)[0].tolist() == [True, False, False]
    res = NearDuplicates(threshold=0.98).apply(FilterInput((("a",),) * 3, _unit(0, 10, 20)))
    assert res.reasons == ("", "near duplicate (cos ≥ 0.98)", "") and res.details["duplicate_groups"] == 1


def _brute_force(emb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    sims = emb.astype(np.float64) @ emb.T.astype(np.float64)
    keep, partner = np.ones(len(emb), bool), np.full(len(emb), -1)
    for i in range(len(emb)):
        earlier = [j for j in range(i) if keep[j] and sims[i, j] >= threshold]
        if earlier:
            keep[i], partner[i] = False, earlier[0]
    return keep, partner


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.97])
def test_near_duplicates_match_brute_force(threshold):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    x = centres[rng.integers(0, 12, 300)] + 0.15 * rng.normal(size=(300, 16))  # 12 tight groups
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    sims = x @ x.T
    assert not np.any(np.abs(sims - threshold) < 1e-5)  # no pair on the edge: float32 order cannot matter
    keep, nearest, partner = near_duplicate_keep(x, threshold, chunk=64)  # several chunks
    want_keep, want_partner = _brute_force(x, threshold)
    assert keep.tolist() == want_keep.tolist() and partner.tolist() == want_partner.tolist()
    np.fill_diagonal(sims, -np.inf)
    assert nearest == pytest.approx(sims.max(1), abs=1e-5)
    assert keep.sum() == {0.5: 11, 0.9: 12, 0.97: 42}[threshold]  # 0.9: one row per planted group


@pytest.mark.parametrize(
    "caption, counts",
    [
        ("a small purple circle", (1, 2, 0)),
        ("a blue triangle below a yellow circle", (2, 2, 1)),
        ("there is a cyan star in the center", (2, 1, 1)),
        ("A man riding a brown horse next to two dogs.", (3, 2, 2)),
        ("a cat to the left of 3 wooden chairs", (2, 2, 1)),
        ("a photo of the building", (1, 0, 0)),
        ("Red, red and RED!", (0, 3, 0)),
        ("the dog's ball is on top of a table", (3, 0, 1)),
        ("", (0, 0, 0)),
    ],
)
def test_caption_complexity_by_hand(caption, counts):
    c = caption_complexity(caption)
    assert (c.objects, c.attributes, c.relations) == counts
    assert c.total == sum(counts)


def test_complexity_filter():
    caps = (
        ("a dog", "a brown dog on a sofa"),  # C = 1, 4; relations 0, 1
        ("a red ball",),  # C = 2
        ("a cat", "a small cat"),  # C = 1, 2
    )
    res = Complexity(min_complexity=3).apply(FilterInput(caps))  # max over captions: 4, 2, 2
    assert res.scores.tolist() == [4.0, 2.0, 2.0]
    assert res.keep.tolist() == [True, False, False]
    assert res.reasons == ("", "complexity < 3", "complexity < 3")
    mean = Complexity(min_complexity=2, caption_rule="mean").apply(FilterInput(caps))  # 2.5, 2, 1.5
    assert mean.keep.tolist() == [True, True, False]
    rel = Complexity(min_complexity=0, min_relations=1, caption_rule="first").apply(FilterInput(caps))
    assert rel.keep.tolist() == [False, False, False] and rel.reasons[0] == "relations < 1"


def test_registry():
    assert FILTERS.names() == ["clip_score", "complexity", "near_duplicates"]
    assert FILTERS.build("near_duplicates") == NearDuplicates(threshold=0.95)
    assert FILTERS.build("complexity", min_complexity=4).min_complexity == 4
    with pytest.raises(ConfigError, match="unknown parameter\\(s\\) \\['keep'\\] for filter 'complexity'"):
        FILTERS.build("complexity", keep=0.3)
    with pytest.raises(KeyError, match="unknown filter 'dedup'; available: clip_score, complexity"):
        FILTERS.build("dedup")
