"""Representational alignment: HSIC/CKA against direct float64 loops, mutual k-NN against brute
force, the known cases (identical, rotated and scaled, independent: a bound for the N and d used)
and the ``alignment`` task (modality pairs, ``compare`` and ``along`` on real tiny runs)."""

import dataclasses
import itertools
import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import make_shapes
from contrastkit.evaluation import EVAL_TASKS, EvalContext, model_encoders
from contrastkit.evaluation.alignment import alignment_task, checkpoint_steps, similarity_along_training
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.similarity_analysis import (
    cka,
    gram_linear,
    gram_rbf,
    hsic,
    knn_indices,
    linear_cka,
    mutual_knn,
    rbf_cka,
)


def _randn(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def naive_hsic_biased(k, l):  # noqa: E741
    n = len(k)
    h = [[(1.0 if i == j else 0.0) - 1.0 / n for j in range(n)] for i in range(n)]
    hk = [[sum(h[i][a] * k[a][j] for a in range(n)) for j in range(n)] for i in range(n)]
    hkh = [[sum(hk[i][a] * h[a][j] for a in range(n)) for j in range(n)] for i in range(n)]
    return sum(hkh[i][j] * l[j][i] for i in range(n) for j in range(n)) / (n - 1) ** 2


def naive_hsic_unbiased(k, l):  # noqa: E741
    """The U-statistic Song et al.'s closed form equals: E[k_ij l_ij] + E[k_ij] E[l_qr] − 2 E[k_ij l_iq]
    over distinct indices."""
    n = len(k)
    t1 = [k[i][j] * l[i][j] for i, j in itertools.permutations(range(n), 2)]
    t2 = [k[i][j] * l[q][r] for i, j, q, r in itertools.permutations(range(n), 4)]
    t3 = [k[i][j] * l[i][q] for i, j, q in itertools.permutations(range(n), 3)]
    return sum(t1) / len(t1) + sum(t2) / len(t2) - 2 * sum(t3) / len(t3)


def naive_rbf_gram(x, frac):
    rows = x.tolist()
    dist = lambda a, b: math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b)))  # noqa: E731
    sigma = frac * statistics.median(dist(a, b) for a, b in itertools.combinations(rows, 2))
    return [[math.exp(-(dist(a, b) ** 2) / (2 * sigma**2)) for b in rows] for a in rows]


def naive_cka(k, l, hsic_fn):  # noqa: E741
    return hsic_fn(k, l) / math.sqrt(hsic_fn(k, k) * hsic_fn(l, l))


def test_hsic_and_cka_equal_the_direct_loops():
    x, y = _randn(9, 4, 0), _randn(9, 6, 1) + 0.5 * _randn(9, 4, 0).repeat(1, 2)[:, :6]
    kx, ky = (x @ x.T).tolist(), (y @ y.T).tolist()
    assert hsic(gram_linear(x), gram_linear(y)) == pytest.approx(naive_hsic_biased(kx, ky), rel=1e-10)
    assert hsic(gram_linear(x), gram_linear(y), True) == pytest.approx(naive_hsic_unbiased(kx, ky), rel=1e-10)
    for unbiased, fn in ((False, naive_hsic_biased), (True, naive_hsic_unbiased)):
        want = naive_cka(kx, ky, fn)
        assert linear_cka(x, y, unbiased) == pytest.approx(want, rel=1e-10)
        assert cka(gram_linear(x), gram_linear(y), unbiased) == pytest.approx(want, rel=1e-10)
        rx, ry = naive_rbf_gram(x, 0.8), naive_rbf_gram(y, 0.8)
        assert rbf_cka(x, y, 0.8, unbiased) == pytest.approx(naive_cka(rx, ry, fn), rel=1e-10)
    k, sigma = gram_rbf(x, 0.5)
    assert torch.allclose(k, torch.tensor(naive_rbf_gram(x, 0.5), dtype=torch.float64), rtol=0, atol=1e-13)
    assert sigma == pytest.approx(0.5 * float(torch.pdist(x).median()), rel=0.05)  # pdist.median: lower


def test_known_cases_identical_rotated_scaled():
    x = _randn(60, 12, 2)
    q, _ = torch.linalg.qr(_randn(12, 12, 3))
    moved = 3.7 * (x @ q) + 5.0  # orthogonal map, isotropic scale, shift (CKA centres)
    for unbiased in (False, True):
        assert linear_cka(x, x, unbiased) == pytest.approx(1.0, abs=1e-12)
        assert rbf_cka(x, x, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)
        assert linear_cka(x, moved, unbiased) == pytest.approx(1.0, abs=1e-10)
        assert rbf_cka(x, moved, unbiased=unbiased) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, x[:, :6] * torch.arange(1, 7)) < 0.99  # anisotropic scaling is not invariant
    assert (mutual_knn(x, x, 10) == 1).all()
    assert (mutual_knn(x, x @ q * 2.0, 10) == 1).all()  # cosine neighbours survive rotation, scale


def test_independent_high_dimensional_inputs():
    n, d1, d2 = 400, 800, 600
    x, y = _randn(n, d1, 4), _randn(n, d2, 5)
    # biased linear CKA of independent Gaussians ≈ sqrt(d1 d2 / ((n'+d1+1)(n'+d2+1))), n' = n − 1:
    # E‖X̄ᵀȲ‖² = d1 d2 n', E‖X̄ᵀX̄‖² = d1 n'(n'+d1+1) — far from 0 at d > n (why "unbiased" exists)
    expected = math.sqrt(d1 * d2 / ((n + d1) * (n + d2)))
    assert linear_cka(x, y) == pytest.approx(expected, rel=0.02)
    # unbiased: numerator centred at 0, sd ≈ sqrt(2(n + d1 + d2)/n³) (sum of d1·d2 squared dot
    # products, each of variance 2n², divided by n²·sqrt(d1 d2)); 5 sd
    bound = 5 * math.sqrt(2 * (n + d1 + d2) / n**3)
    assert abs(linear_cka(x, y, True)) < bound
    assert abs(rbf_cka(x, y, unbiased=True)) < bound  # high-dim RBF Gram ≈ affine in the linear one
    # mutual k-NN of independent sets: each overlap ~ Hypergeometric(n−1, k, k), E = k/(n−1)
    k = 10
    p = k / (n - 1)
    sd = math.sqrt(k * p * (1 - p) * (n - 1 - k) / (n - 2)) / k / math.sqrt(n)
    assert abs(mutual_knn(x, y, k).mean() - p) < 5 * sd


def test_mutual_knn_equals_brute_force():
    x, y = _randn(25, 3, 6), _randn(25, 5, 7)
    x[3] = x[7]  # an exact tie: the lower index first

    def neighbours(z, k):
        z = F.normalize(z, dim=-1)
        out = []
        for i in range(len(z)):
            sims = [(-float(z[i] @ z[j]), j) for j in range(len(z)) if j != i]
            out.append({j for _, j in sorted(sims)[:k]})
        return out

    for k in (1, 4, 24):
        a, b = neighbours(x, k), neighbours(y, k)
        want = np.array([len(a[i] & b[i]) / k for i in range(25)])
        assert np.array_equal(mutual_knn(x, y, k, chunk=7), want)
    assert knn_indices(x, 1)[3].item() == 7 and knn_indices(x, 1)[7].item() == 3
    with pytest.raises(InputError, match="k must be in"):
        mutual_knn(x, y, 25)
    with pytest.raises(InputError, match="same samples"):
        linear_cka(x, y[:5])
    with pytest.raises(InputError, match="no variance"):
        linear_cka(torch.ones(5, 2, dtype=torch.float64), y[:5])


def _toy_ctx(options, n=40):
    pairs = make_shapes("test", n=n, image_size=16)
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(3 * 16 * 16, 8, generator=g)
    text_table = {}

    def images(x):
        return F.normalize(x.flatten(1).float() @ proj, dim=-1)

    def texts(t):
        return torch.stack([text_table.setdefault(s, torch.randn(8, generator=g)) for s in t])

    return EvalContext(Encoders(images, texts), pairs, None, options), images, texts


def test_alignment_task_on_modalities_with_a_subsample():
    assert EVAL_TASKS.get("alignment") is alignment_task
    ctx, images, texts = _toy_ctx({"alignment": {"max_n": 30, "k": 5}})
    out, examples = alignment_task(ctx)
    rows = np.sort(np.random.default_rng(0).choice(40, 30, replace=False))
    x = F.normalize(images(ctx.pairs.images[rows]), dim=-1)
    y = F.normalize(texts([ctx.pairs.captions[i][0] for i in rows]), dim=-1)
    assert out["alignment/image-text/n"] == 30 and out["alignment/k"] == 5
    assert out["alignment/image-text/linear_cka"] == pytest.approx(linear_cka(x, y), rel=1e-5)
    assert out["alignment/image-text/rbf_cka"] == pytest.approx(rbf_cka(x, y), rel=1e-5)
    assert np.array_equal(examples["alignment/image-text/mutual_knn"], mutual_knn(x, y, 5))
    assert out["alignment/image-text/mutual_knn"] == examples["alignment/image-text/mutual_knn"].mean()
    with pytest.raises(ConfigError, match="unknown alignment option"):
        alignment_task(_toy_ctx({"alignment": {"kk": 1}})[0])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from contrastkit.train import RunConfig, train

    root = tmp_path_factory.mktemp("runs")
    runs = []
    for seed in (0, 1):
        cfg = RunConfig.tiny(name=f"tiny{seed}", out_dir=str(root))
        tr = dataclasses.replace(cfg.train, steps=6, ckpt_every=2, keep_checkpoints=3, seed=seed)
        runs.append(train(dataclasses.replace(cfg, train=tr)).run_dir)
    return runs


def test_compare_and_along_on_tiny_runs(two_runs, tmp_path):
    from contrastkit.train import load_run
    from contrastkit.train.wise import initial_model

    a, b = two_runs
    pairs = make_shapes("test", n=50)
    enc_a = model_encoders(load_run(a)[1])
    opts = {"alignment": {"compare": str(b), "along": str(a), "k": 5}, "plot_dir": tmp_path}
    out, _ = alignment_task(EvalContext(enc_a, pairs, None, opts))
    xa = enc_a.images(pairs.images)
    xb = model_encoders(load_run(b)[1]).images(pairs.images)
    assert out["alignment/compare/image/linear_cka"] == pytest.approx(linear_cka(xa, xb), rel=1e-6)
    assert out["alignment/compare/image/linear_cka"] < 0.999  # another seed: another representation
    assert sorted(checkpoint_steps(a)) == [2, 4, 6]
    x0 = model_encoders(initial_model(a)).images(pairs.images)
    assert out["alignment/along/step_0/linear_cka"] == pytest.approx(linear_cka(x0, xa), rel=1e-6)
    assert out["alignment/along/step_6/linear_cka"] == pytest.approx(1.0, abs=1e-12)
    assert out["alignment/along/step_6/mutual_knn"] == 1.0
    assert {k for k in out if "/along/" in k} == {
        f"alignment/along/step_{s}/{m}" for s in (0, 2, 4, 6) for m in ("linear_cka", "rbf_cka", "mutual_knn")
    }
    assert (tmp_path / "alignment_along.png").stat().st_size > 5000
    same = similarity_along_training(a, pairs.images, {"k": 5})
    assert same[2] == {
        k: out[f"alignment/along/step_2/{k}"] for k in ("linear_cka", "rbf_cka", "mutual_knn")
    } | {"n": 50.0}
    with pytest.raises(InputError, match="not a run folder"):
        alignment_task(EvalContext(enc_a, pairs, None, {"alignment": {"compare": str(tmp_path)}}))
