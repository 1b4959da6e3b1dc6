"""E-LATE: retrieval and zero-shot over token sets equal brute force on the MaxSim matrix (and the
cosine path for one-token sets); faiss candidate generation + exact rerank equals exact search when
the candidates cover the gallery."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.evaluation.late_interaction import (
    late_retrieval,
    late_search,
    late_zero_shot_metrics,
    similarity,
)
from contrastkit.evaluation.retrieval import retrieval_ranks, retrieval_ties
from contrastkit.evaluation.zeroshot import zero_shot_classifier, zero_shot_metrics
from tests.losses.test_maxsim import _naive


def _sets(gen, n, t, dim, dtype=torch.float64):
    x = F.normalize(torch.randn(n, t, dim, generator=gen, dtype=dtype), dim=-1)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return x * mask[..., None], mask


def _brute_ranks(s, owner, n_img):
    """Lower-index ranks from a [T, I] score matrix by sorting (reference)."""
    t2i = np.array(
        [
            [j for j in sorted(range(n_img), key=lambda j: (-s[t, j], j))].index(owner[t])
            for t in range(len(owner))
        ]
    )
    i2t = []
    for i in range(n_img):
        order = sorted(range(len(owner)), key=lambda t: (-s[t, i], t))
        own = [r for r, t in enumerate(order) if owner[t] == i]
        i2t.append(own[0] if own else np.inf)
    return t2i.astype(float), np.array(i2t, dtype=float)


def test_one_token_sets_give_the_cosine_retrieval_exactly(rng):
    img = torch.randn(9, 6, generator=rng)
    txt = torch.randn(14, 6, generator=rng)
    txt[5] = txt[4]  # a duplicated caption: ties
    owner = np.array([0, 0, 1, 2, 3, 3, 4, 5, 6, 7, 7, 1, 2, 0])  # image 8 has no caption
    t2i, i2t, ties = late_retrieval(img[:, None], txt, owner)
    want_t2i, want_i2t = retrieval_ranks(img, txt, owner, backend="dense")
    np.testing.assert_array_equal(t2i, want_t2i)
    np.testing.assert_array_equal(i2t, want_i2t)
    for key, counts in retrieval_ties(img, txt, owner).items():
        np.testing.assert_array_equal(ties[key], counts)


def test_token_set_retrieval_equals_brute_force_on_the_maxsim_matrix(rng):
    img, im = _sets(rng, 7, 5, 4)
    txt, tm = _sets(rng, 11, 3, 4)
    owner = np.array([0, 1, 1, 2, 3, 4, 4, 5, 0, 2, 3])  # image 6 has no caption
    s = _naive(txt, img, tm, im, "v2").numpy()
    t2i, i2t, ties = late_retrieval(img.float(), txt.float(), owner)
    want_t2i, want_i2t = _brute_ranks(s, owner, 7)
    np.testing.assert_array_equal(t2i, want_t2i)
    np.testing.assert_array_equal(i2t, want_i2t)
    assert np.isinf(i2t[6]) and ties["image_to_text"][6, 2] == 0
    torch.testing.assert_close(similarity(img, txt), torch.from_numpy(s).T.float(), rtol=0, atol=1e-6)


def test_zero_shot_with_prompt_score_averaging(rng):
    img = torch.randn(12, 5, generator=rng)
    words = {f"p{c}{m}": torch.randn(5, generator=rng) for c in range(3) for m in range(2)}

    def enc(texts):
        return torch.stack([words[t] for t in texts])

    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, -1, 0, 1])
    one = [[f"p{c}0"] for c in range(3)]  # one prompt a class, one token: exactly the cosine path
    got = late_zero_shot_metrics(img[:, None], enc, one, labels)
    want = zero_shot_metrics(img, zero_shot_classifier(enc, one), labels)
    np.testing.assert_array_equal(got["correct"], want["correct"])
    assert got["top1"] == want["top1"] and got["balanced_accuracy"] == want["balanced_accuracy"]
    two = [[f"p{c}0", f"p{c}1"] for c in range(3)]
    got = late_zero_shot_metrics(img[:, None], enc, two, labels)
    cos = F.normalize(img, dim=-1) @ F.normalize(enc([t for p in two for t in p]), dim=-1).T  # [N, 6]
    pred = cos.view(12, 3, 2).mean(-1).argmax(1).numpy()  # the mean of the two prompts' scores
    keep = labels >= 0
    np.testing.assert_array_equal(got["correct"], (pred[keep] == labels[keep]).astype(float))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_faiss_candidates_and_rerank_equal_exact_search_when_they_cover_the_gallery(rng, dtype):
    pytest.importorskip("faiss")
    gallery, _ = _sets(rng, 40, 6, 8, dtype)
    queries, _ = _sets(rng, 9, 4, 8, dtype)
    exact = late_search(queries, gallery, 10)
    covered = late_search(queries, gallery, 10, backend="faiss", token_k=40 * 6)
    np.testing.assert_array_equal(covered[1], exact[1])
    np.testing.assert_array_equal(covered[0], exact[0])
    s = _naive(queries.double(), gallery.double(), queries.ne(0).any(-1), gallery.ne(0).any(-1), "v2").numpy()
    np.testing.assert_allclose(exact[0], np.take_along_axis(s, exact[1], 1), rtol=0, atol=1e-5)
    assert (np.diff(exact[0], axis=1) <= 0).all()  # score descending
    narrow = late_search(queries, gallery, 10, backend="faiss", token_k=3)  # approximate: fewer candidates
    found = narrow[1] >= 0
    np.testing.assert_allclose(
        narrow[0][found], np.take_along_axis(s, np.where(found, narrow[1], 0), 1)[found], atol=1e-5
    )


def test_model_encoders_pad_token_sets_across_batches(tmp_path):
    from contrastkit.data import make_shapes
    from contrastkit.evaluation import model_encoders
    from contrastkit.models import build_model
    from tests.models.test_token_towers import token_config

    pairs = make_shapes("train", 12)
    torch.manual_seed(0)
    model = build_model(token_config(), texts=pairs.flat_captions()[0])
    texts = [c[0] for c in pairs.captions] + [pairs.captions[2][1]]
    whole = model_encoders(model, batch_size=64).texts(texts)
    parts = model_encoders(model, batch_size=3).texts(texts)
    assert whole.shape == parts.shape
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)
