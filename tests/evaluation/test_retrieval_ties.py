"""Retrieval ties: tie counts, the exact random-tie-break expectation of R@K (against enumeration of
every tie-breaking order), and the retrieval task's numbers on a hand-made tied example."""

from itertools import permutations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.data.pairs import PairSet
from contrastkit.evaluation import Encoders, evaluate_examples, retrieval_ranks
from contrastkit.evaluation.retrieval import random_tie_recall, retrieval_ties


def test_closed_form_by_hand():
    # rows: (ahead, other items tied, positives tied)
    counts = np.array([[1, 2, 1], [0, 3, 2], [5, 0, 1], [0, 0, 0], [0, 4, 1], [2, 0, 3]])
    assert random_tie_recall(counts, 1) == pytest.approx([0, 2 / 5, 0, 0, 1 / 5, 0])
    # k = 2: 1 − C(2,1)/C(3,1) = 1/3; 1 − C(3,2)/C(5,2) = 7/10; 2/5
    assert random_tie_recall(counts, 2) == pytest.approx([1 / 3, 7 / 10, 0, 0, 2 / 5, 0])
    assert random_tie_recall(counts, 10) == pytest.approx([1, 1, 1, 0, 1, 1])  # 5 ahead < 10


def _brute_force(scores: np.ndarray, positive: np.ndarray, k: int) -> np.ndarray:
    """Per query, the fraction of all gallery orders (priority permutations breaking ties) in which
    some positive is among the first k: the exact expectation, by enumeration."""
    n_q, n_g = scores.shape
    hits = np.zeros(n_q)
    orders = list(permutations(range(n_g)))
    for prio in orders:
        prio = np.asarray(prio)
        for q in range(n_q):
            s, pos = scores[q], np.flatnonzero(positive[q])
            ranks = [((s > s[j]) | ((s == s[j]) & (prio < prio[j]))).sum() for j in pos]
            hits[q] += bool(ranks) and min(ranks) < k
    return hits / len(orders)


def _tied_example():
    """3 images, 6 captions; identical vectors make exact ties (2 directions for 6 texts)."""
    a, b, c = [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]
    images = torch.tensor([a, a, c])  # images 0 and 1 identical
    texts = torch.tensor([a, b, a, c, b, a])
    owner = np.array([0, 0, 1, 1, 2, 2])
    return images, texts, owner


@pytest.mark.parametrize("k", [1, 2, 3])
def test_expectation_equals_enumeration_of_every_tie_order(k):
    images, texts, owner = _tied_example()
    x, t = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    ties = retrieval_ties(images, texts, owner)
    i2t_scores = (x @ t.T).numpy()
    own = owner[None, :] == np.arange(3)[:, None]
    expected = _brute_force(i2t_scores, own, k)
    assert random_tie_recall(ties["image_to_text"], k) == pytest.approx(expected, abs=1e-12)
    t2i_scores = (t @ x.T).numpy()
    own_t = owner[:, None] == np.arange(3)[None, :]
    expected_t = _brute_force(t2i_scores, own_t, k)
    assert random_tie_recall(ties["text_to_image"], k) == pytest.approx(expected_t, abs=1e-12)
    # images 0 and 1: captions 0, 2, 5 tie at the top, one of them own; image 2: caption 3 (image
    # 1's) ahead, then its own caption 4 tied with caption 1
    assert expected == pytest.approx({1: [1 / 3, 1 / 3, 0], 2: [2 / 3, 2 / 3, 1 / 2], 3: [1, 1, 1]}[k])


def test_lower_index_ranks_lie_within_the_tie_group():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 3, (30, 4), generator=g).float() + 0.1  # few directions: many ties
    owner = np.repeat(np.arange(30), 2)
    texts = images[torch.randint(0, 30, (60,), generator=g)]
    ties = retrieval_ties(images, texts, owner, chunk=7)
    t2i, i2t = retrieval_ranks(images, texts, owner, backend="dense")
    for counts, ranks in ((ties["text_to_image"], t2i), (ties["image_to_text"], i2t)):
        has = counts[:, 2] > 0
        assert (counts[has, 0] <= ranks[has]).all() and (ranks[has] <= counts[has, 0] + counts[has, 1]).all()
    assert (ties["image_to_text"][:, 1] > 0).sum() > 10  # the example really is tied


def test_retrieval_task_reports_ties_beside_the_lower_index_rule():
    # image 0 has captions "a", "b"; image 1 has caption "a"; both images embed like "a"
    vec = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
    pairs = PairSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), (("a", "b"), ("a",)), {}, name="toy")
    enc = Encoders(lambda x: torch.tensor([[1.0, 0.0]] * len(x)), lambda t: torch.tensor([vec[s] for s in t]))
    m, ex = evaluate_examples(enc, pairs, ["retrieval"])
    # image→text: each image's own "a" ties with the other image's "a" (1 of 2 → 0.5 each)
    assert m["retrieval/image_to_text_R@1"] == 0.5  # lower index: image 0 hits, image 1 misses
    assert m["retrieval/image_to_text_R@1_random_ties"] == 0.5
    assert m["retrieval/image_to_text_tied_queries"] == 2.0
    # text→image: the two images are identical, so every text ties (0.5 each); lower index: 2 of 3
    assert m["retrieval/text_to_image_R@1"] == pytest.approx(2 / 3)
    assert m["retrieval/text_to_image_R@1_random_ties"] == 0.5
    assert m["retrieval/text_to_image_tied_queries"] == 3.0
    assert m["retrieval/text_to_image_R@5_random_ties"] == 1.0
    assert ex["retrieval/text_to_image_R@1_random_ties"].tolist() == [0.5, 0.5, 0.5]
