"""E-RETRIEVAL on large galleries: the faiss path (IndexFlatIP) gives the dense path's numbers,
ties included (broken by lower index), whatever the list depth it has to reach."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

faiss = pytest.importorskip("faiss")

from contrastkit.core.errors import ConfigError  # noqa: E402
from contrastkit.evaluation import retrieval as R  # noqa: E402
from contrastkit.evaluation.retrieval import choose_backend, retrieval_metrics, retrieval_ranks  # noqa: E402


def _both(img, txt, owner, **kw):
    return (
        retrieval_metrics(img, txt, owner, backend="dense", **kw),
        retrieval_metrics(img, txt, owner, backend="faiss", **kw),
    )


def _tied(n_pool: int, n: int, d: int, seed: int) -> torch.Tensor:
    """Vectors with four entries ±1 (the rest 0), drawn from a small pool: after normalising every
    entry is ±0.5 exactly, every score a multiple of 0.25 computed exactly — massive exact ties."""
    rng = np.random.default_rng(seed)
    pool = np.zeros((n_pool, d), np.float32)
    for row in pool:
        row[rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return torch.from_numpy(pool[rng.integers(0, n_pool, n)])


def test_hand_oracle_all_images_equal():
    # five identical images: every text's scores tie, so its rank is its image's index
    img = torch.tensor([[1.0, 0.0]]).repeat(5, 1)
    s = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.2, 0.9, 0.0])
    txt = torch.stack([s, (1 - s**2).sqrt()], 1)
    owner = np.array([0, 0, 1, 2, 3, 4, 4])
    # image→text (the same order for every image): t1, t5 (0.9 tie), t2, t3 (0.5 tie), t4, t0, t6
    # first own caption: image0 t1 → 0, image1 t2 → 2, image2 t3 → 3, image3 t4 → 4, image4 t5 → 1
    for backend in ("dense", "faiss"):
        t2i, i2t = retrieval_ranks(img, txt, owner, ks=(1, 2), backend=backend)
        np.testing.assert_array_equal(t2i, owner)  # exact: rank of image g is g
        np.testing.assert_array_equal(i2t[i2t < 2], [0, 1])
        m = retrieval_metrics(img, txt, owner, ks=(1, 2), backend=backend)
        assert m["text_to_image_R@1"] == pytest.approx(2 / 7)
        assert m["text_to_image_R@2"] == pytest.approx(3 / 7)
        assert m["text_to_image_median_rank"] == 3.0
        assert m["image_to_text_R@1"] == pytest.approx(1 / 5)
        assert m["image_to_text_R@2"] == pytest.approx(2 / 5)
        assert m["image_to_text_median_rank"] == 3.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_ties_same_numbers_as_dense(seed):
    img = _tied(25, 120, 8, seed)
    owner = np.random.default_rng(seed).integers(0, 120, 300)
    txt = img[owner].clone()
    swap = np.random.default_rng(seed + 9).random(300) < 0.5  # half the texts match another image
    txt[torch.from_numpy(swap)] = _tied(25, int(swap.sum()), 8, seed + 1)
    dense, fast = _both(img, txt, owner, ks=(1, 2, 5, 10), chunk=17)
    assert fast == dense
    d_t2i, d_i2t = retrieval_ranks(img, txt, owner, ks=(1, 5), backend="dense")
    f_t2i, f_i2t = retrieval_ranks(img, txt, owner, ks=(1, 5), backend="faiss", chunk=7)
    for d, f in ((d_t2i, f_t2i), (d_i2t, f_i2t)):
        np.testing.assert_array_equal(f[f < 5], d[f < 5])  # below max(ks): exact
        assert (f <= d).all()  # above: lower bounds
    # asking for K ≥ the gallery size makes every faiss list complete: identical ranks
    full = retrieval_ranks(img, txt, owner, ks=(1000,), backend="faiss")
    np.testing.assert_array_equal(full[0], d_t2i)
    np.testing.assert_array_equal(full[1], d_i2t)


def test_deepening_only_when_needed(monkeypatch):
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(400, 16, generator=g), dim=-1)
    owner = np.repeat(np.arange(400), 2)
    depths: list[int] = []
    search = R._search
    monkeypatch.setattr(
        R, "_search", lambda index, q, rows, k, *a: depths.append(k) or search(index, q, rows, k, *a)
    )
    # a good model: the median rank is 1 → one pass per direction at k = max(ks)
    good = img[owner] + 0.05 * torch.randn(800, 16, generator=g)
    dense, fast = _both(img, good, owner)
    assert fast == dense and dense["text_to_image_median_rank"] == 1.0
    assert depths == [10, 10]
    # random texts: the median rank is ~200 → the lists deepen (×4) until it is known
    depths.clear()
    bad = torch.randn(800, 16, generator=g)
    dense, fast = _both(img, bad, owner, ks=(1, 5, 10, 50))
    assert fast == dense and dense["text_to_image_median_rank"] > 100
    assert depths[0] == 50 and max(depths) > 50


def test_images_without_captions_are_misses():
    img, txt = torch.eye(3), torch.eye(3)[:2]
    dense, fast = _both(img, txt, np.array([0, 1]), ks=(1, 3))
    assert fast == dense and fast["image_to_text_R@3"] == pytest.approx(2 / 3)


def test_backend_choice_and_threads(monkeypatch):
    assert choose_backend("auto", 10, 20, faiss_threshold=20) == "faiss"
    assert choose_backend("auto", 10, 19, faiss_threshold=20) == "dense"
    assert choose_backend("dense", 10**7, 10**7) == "dense"
    with pytest.raises(ConfigError, match="unknown retrieval backend 'annoy'"):
        choose_backend("annoy", 1, 1)
    calls = []
    monkeypatch.setattr(R, "_faiss_ranks", lambda *a: calls.append(1) or np.zeros(len(a[0])))
    retrieval_metrics(torch.eye(3), torch.eye(3), np.arange(3), faiss_threshold=3)
    assert len(calls) == 2  # auto used faiss for both directions
    monkeypatch.undo()
    before = faiss.omp_get_max_threads()
    retrieval_metrics(torch.eye(3), torch.eye(3), np.arange(3), backend="faiss")
    assert faiss.omp_get_max_threads() == before  # the global faiss setting is restored
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # faiss not installed
    assert choose_backend("auto", 10**6, 10**6) == "dense"
    with pytest.raises(ConfigError, match="needs the faiss-cpu package"):
        choose_backend("faiss", 1, 1)
