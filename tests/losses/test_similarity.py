"""Similarity as a choice: every converted loss equals its dense formula with each similarity."""

import math

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import ConfigError
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.infonce import infonce_loss, ntxent_loss
from contrastkit.losses.siglip import siglip_loss
from contrastkit.losses.similarity import (
    SIMILARITIES,
    SimilarityFn,
    register_similarity,
    similarity_kwargs,
    similarity_matrix,
)
from contrastkit.losses.supcon import supcon_loss
from contrastkit.scale.distributed import GatherLoss
from contrastkit.scale.ring_clip import CLIPRingLoss
from contrastkit.scale.ring_siglip import SigLIPRingLoss
from contrastkit.scale.tiled import TiledLoss

NAMES = ("cosine", "dot", "neg_sq_dist", "rbf")
BW = 0.7


def naive_sim(a, b, name, bw=BW):
    """Explicit loops: cos, dot, −Σ(a−b)², exp(−Σ(a−b)²/(2σ²))."""
    out = torch.empty(a.shape[0], b.shape[0], dtype=a.dtype)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            d2 = ((a[i] - b[j]) ** 2).sum()
            if name == "cosine":
                out[i, j] = (a[i] @ b[j]) / (a[i].norm() * b[j].norm())
            elif name == "dot":
                out[i, j] = a[i] @ b[j]
            elif name == "neg_sq_dist":
                out[i, j] = -d2
            else:
                out[i, j] = torch.exp(-d2 / (2 * bw * bw))
    return out


def _ce_rows(logits, target_sets):
    """mean over rows of −log(Σ_{p∈P} e^{l_p} / Σ_all e^{l}) with P a single target here."""
    total = 0.0
    for i, t in enumerate(target_sets):
        total = total + (torch.logsumexp(logits[i], 0) - logits[i, t])
    return total / len(target_sets)


def naive_clip(x, y, s, name):
    lg = s * naive_sim(x, y, name)
    n = x.shape[0]
    return 0.5 * (_ce_rows(lg, range(n)) + _ce_rows(lg.T, range(n)))


def naive_siglip(x, y, t, b, name):
    lg = t * naive_sim(x, y, name) + b
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            z = 1.0 if i == j else -1.0
            total = total + torch.log1p(torch.exp(-z * lg[i, j]))
    return total / x.shape[0]


def naive_ntxent(x, y, tau, name):
    z = torch.cat([x, y])
    q = naive_sim(z, z, name) / tau
    n2 = z.shape[0]
    total = 0.0
    for k in range(n2):
        others = torch.stack([q[k, a] for a in range(n2) if a != k])
        total = total + torch.logsumexp(others, 0) - q[k, (k + n2 // 2) % n2]
    return total / n2


def naive_supcon(x, y, labels, tau, name):
    z = torch.cat([x, y])
    lab = torch.cat([labels, labels])
    q = naive_sim(z, z, name) / tau
    m = z.shape[0]
    total, count = 0.0, 0
    for i in range(m):
        lse = torch.logsumexp(torch.stack([q[i, a] for a in range(m) if a != i]), 0)
        pos = [p for p in range(m) if p != i and lab[p] == lab[i]]
        total = total + sum(lse - q[i, p] for p in pos) / len(pos)
        count += 1
    return total / count


def _inputs(n=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.8).requires_grad_()
    y = (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.8).requires_grad_()
    return x, y


def _check(fn, naive, x, y):
    got = fn(x, y)
    ref = naive(x, y)
    gx, gy = torch.autograd.grad(got, (x, y))
    rx, ry = torch.autograd.grad(ref, (x, y))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gy, ry, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_similarity_matrix_equals_explicit_loops(name):
    x, y = _inputs(4, 3)
    torch.testing.assert_close(similarity_matrix(x, y, name, bandwidth=BW), naive_sim(x, y, name))


@pytest.mark.parametrize("name", NAMES)
def test_clip_with_each_similarity(name):
    x, y = _inputs()
    kw = {} if name == "cosine" else {"similarity": name, "bandwidth": BW}
    _check(lambda a, b: clip_loss(a, b, 3.0, **kw), lambda a, b: naive_clip(a, b, 3.0, name), x, y)


@pytest.mark.parametrize("name", NAMES)
def test_siglip_with_each_similarity(name):
    x, y = _inputs(4, 3, seed=1)
    kw = {} if name == "cosine" else {"similarity": name, "bandwidth": BW}
    _check(
        lambda a, b: siglip_loss(a, b, 2.0, -1.0, **kw),
        lambda a, b: naive_siglip(a, b, 2.0, -1.0, name),
        x,
        y,
    )


@pytest.mark.parametrize("name", NAMES)
def test_infonce_one_way_and_symmetric(name):
    x, y = _inputs(5, 3, seed=2)
    kw = {"similarity": name, "bandwidth": BW}

    def naive_one(a, b):
        return _ce_rows(2.5 * naive_sim(a, b, name), range(a.shape[0]))

    _check(lambda a, b: infonce_loss(a, b, 2.5, **kw), naive_one, x, y)
    _check(
        lambda a, b: infonce_loss(a, b, 2.5, symmetric=True, **kw),
        lambda a, b: naive_clip(a, b, 2.5, name),
        x,
        y,
    )


@pytest.mark.parametrize("name", NAMES)
def test_ntxent_with_each_similarity(name):
    x, y = _inputs(4, 3, seed=3)
    kw = {"similarity": name, "bandwidth": BW}
    _check(lambda a, b: ntxent_loss(a, b, 0.5, **kw), lambda a, b: naive_ntxent(a, b, 0.5, name), x, y)


@pytest.mark.parametrize("name", NAMES)
def test_supcon_with_each_similarity(name):
    x, y = _inputs(5, 3, seed=4)
    labels = torch.tensor([0, 1, 0, 2, 1])
    kw = {"similarity": name, "bandwidth": BW}
    _check(
        lambda a, b: supcon_loss(a, b, 0.5, labels=labels, **kw),
        lambda a, b: naive_supcon(a, b, labels, 0.5, name),
        x,
        y,
    )


def test_hand_values():
    # two orthogonal unit pairs, identical views: dot = cosine; neg_sq_dist logits 0 / −2
    x = torch.eye(2, dtype=torch.float64)
    assert float(clip_loss(x, x, 1.0, similarity="dot")) == pytest.approx(math.log(1 + math.exp(-1)))
    assert float(clip_loss(x, x, 1.0, similarity="neg_sq_dist")) == pytest.approx(math.log(1 + math.exp(-2)))
    rbf = math.exp(-2 / (2 * 0.5**2))  # ‖e1 − e2‖² = 2, σ = 0.5
    assert float(clip_loss(x, x, 1.0, similarity="rbf", bandwidth=0.5)) == pytest.approx(
        math.log(1 + math.exp(rbf - 1))
    )
    # on unit rows neg_sq_dist = 2·cos − 2: CLIP at scale s equals cosine CLIP at 2s
    xs, ys = _inputs(6, 5, seed=5)
    xs, ys = torch.nn.functional.normalize(xs.detach()), torch.nn.functional.normalize(ys.detach())
    torch.testing.assert_close(clip_loss(xs, ys, 3.0, similarity="neg_sq_dist"), clip_loss(xs, ys, 6.0))
    torch.testing.assert_close(clip_loss(xs, ys, 3.0, similarity="dot"), clip_loss(xs, ys, 3.0))


@pytest.mark.parametrize("name", ["clip", "siglip", "infonce", "ntxent", "supcon"])
def test_modules_take_the_similarity_by_name(name):
    x, y = _inputs(5, 4, seed=6)
    loss = losses.build(name, similarity="neg_sq_dist")
    fn, kwargs = loss.pure()
    assert kwargs["similarity"] == "neg_sq_dist" and kwargs["bandwidth"] == 1.0
    _, plain = losses.build(name).pure()
    assert "similarity" not in plain  # the default leaves pure() as it was
    value = loss(x.float(), y.float())
    torch.testing.assert_close(value, fn(x.float(), y.float(), **kwargs))
    assert not torch.allclose(value, losses.build(name)(x.float(), y.float()))


def test_bad_names_and_bandwidths_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown similarity 'cos'; valid: cosine, dot, neg_sq_dist, rbf"):
        losses.build("clip", similarity="cos")
    with pytest.raises(ConfigError, match="bandwidth"):
        similarity_matrix(torch.ones(2, 2), torch.ones(2, 2), "rbf", bandwidth=0.0)
    with pytest.raises(ConfigError, match="registered already"):
        register_similarity("dot", SimilarityFn(lambda a, b, _: a @ b.T))
    assert similarity_kwargs("cosine", 2.0) == {}


def test_registering_a_similarity_makes_it_selectable():
    register_similarity("neg_l1_test", SimilarityFn(lambda a, b, _: -torch.cdist(a, b, p=1)))
    try:
        x, y = _inputs(3, 2, seed=7)
        lg = -torch.cdist(x, y, p=1)
        target = torch.arange(3)
        ce = torch.nn.functional.cross_entropy
        torch.testing.assert_close(
            clip_loss(x, y, 1.0, similarity="neg_l1_test"), 0.5 * (ce(lg, target) + ce(lg.T, target))
        )
        assert losses.build("clip", similarity="neg_l1_test").similarity == "neg_l1_test"
    finally:
        del SIMILARITIES["neg_l1_test"]


def test_several_processes_run_a_non_cosine_clip_on_the_gathered_batch():
    from contrastkit.train.distributed import _is_clip_or_siglip

    assert _is_clip_or_siglip(losses.build("clip")) and _is_clip_or_siglip(losses.build("siglip"))
    assert not _is_clip_or_siglip(losses.build("clip", similarity="dot"))  # → GatherAllLoss (exact)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda: TiledLoss(losses.build("clip", similarity="dot"), 4),
        lambda: TiledLoss(losses.build("supcon", similarity="rbf"), 4),
        lambda: TiledLoss(losses.build("ntxent", similarity="neg_sq_dist"), 4),
        lambda: GatherLoss(losses.build("siglip", similarity="dot")),
        lambda: CLIPRingLoss(losses.build("clip", similarity="rbf")),
        lambda: SigLIPRingLoss(losses.build("siglip", similarity="neg_sq_dist")),
    ],
)
def test_scale_wrappers_refuse_a_non_cosine_similarity(wrap):
    with pytest.raises(ConfigError, match=r"computes cosine similarities only; this loss uses similarity="):
        wrap()


def test_scale_wrappers_keep_cosine():
    TiledLoss(losses.build("clip", similarity="cosine"), 4)
    GatherLoss(losses.build("siglip"))
