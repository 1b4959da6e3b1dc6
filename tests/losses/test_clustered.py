"""ccc-wav2vec 2.0 cluster down-weighting and BYOL + CCSL self-labelling against naive float64 loops."""

import math

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.clustered import batch_clusters, byol_selflabel_loss, ccc_infonce_loss
from contrastkit.losses.ssl import byol_loss


def cos(a, b):
    return (a @ b) / (a.norm() * b.norm())


def naive_ccc(x, y, s, labels, alpha, symmetric=True):
    n = x.shape[0]

    def direction(a, b):
        total = 0.0
        for i in range(n):
            num = torch.exp(s * cos(a[i], b[i]))
            den = 0.0
            for j in range(n):
                w = alpha if (j != i and labels[j] == labels[i]) else 1.0
                den = den + w * torch.exp(s * cos(a[i], b[j]))
            total = total - torch.log(num / den)
        return total / n

    one = direction(x, y)
    return 0.5 * (one + direction(y, x)) if symmetric else one


def naive_ccsl(p1, p2, z1, z2, labels, lam):
    n = p1.shape[0]
    base = 0.0
    for i in range(n):
        base = base + (2 - 2 * cos(p1[i], z2[i].detach())) + (2 - 2 * cos(p2[i], z1[i].detach()))
    base = base / n
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]
    if not pairs:
        return base
    extra = sum((2 - 2 * cos(p1[i], z2[j].detach())) + (2 - 2 * cos(p2[i], z1[j].detach())) for i, j in pairs)
    return base + lam * extra / len(pairs)


def _data(n, d=4, seed=0, count=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(count)]


@pytest.mark.parametrize(("alpha", "symmetric"), [(0.5, True), (0.2, False), (0.0, True), (1.0, True)])
def test_ccc_infonce_matches_naive_loop(alpha, symmetric):
    x, y = _data(6, seed=1)
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    got = ccc_infonce_loss(x, y, s, labels=labels, downweight=alpha, symmetric=symmetric)
    want = naive_ccc(x, y, s, labels, alpha, symmetric)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, y, s)), torch.autograd.grad(want, (x, y, s))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_ccc_limits_and_hand_value():
    x, y = _data(5, seed=2)
    labels = torch.tensor([0, 0, 1, 1, 2])
    torch.testing.assert_close(
        ccc_infonce_loss(x, y, 2.0, labels=labels, downweight=1.0), clip_loss(x, y, 2.0)
    )
    torch.testing.assert_close(ccc_infonce_loss(x, y, 2.0), clip_loss(x, y, 2.0))  # no clusters
    # distinct clusters everywhere: nothing to down-weight
    torch.testing.assert_close(ccc_infonce_loss(x, y, 2.0, labels=torch.arange(5)), clip_loss(x, y, 2.0))
    # two orthonormal pairs in one cluster, s = 1: row loss −log(e / (e + α·1))
    e = torch.eye(2, dtype=torch.float64)
    got = ccc_infonce_loss(e, e, 1.0, labels=torch.tensor([3, 3]), downweight=0.25)
    assert float(got) == pytest.approx(math.log(1 + 0.25 / math.e))
    with pytest.raises(ConfigError, match="downweight"):
        ccc_infonce_loss(e, e, 1.0, downweight=1.5)
    with pytest.raises(InputError, match=r"cluster ids \(labels\) must have shape \[N\]=\[2\]"):
        ccc_infonce_loss(e, e, 1.0, labels=torch.tensor([1, 2, 3]))


def test_ccc_module_clusters_the_candidates_without_labels():
    x, y = _data(8, seed=3)
    loss = losses.build("ccc_infonce", num_clusters=3, seed=1)
    c = batch_clusters(y, 3, 10, 1)
    assert c.shape == (8,) and int(c.max()) < 3
    s = loss.log_scale.exp()
    torch.testing.assert_close(loss(x, y), ccc_infonce_loss(x, y, s, labels=c, downweight=0.5))
    torch.testing.assert_close(loss(x, y, labels=torch.arange(8)), clip_loss(x, y, s))
    assert loss.log_values()["logit_scale"] == pytest.approx(1 / 0.07)


@pytest.mark.parametrize("labels", [[0, 1, 0, 1, 2], [0, 1, 2, 3, 4], [7, 7, 7, 7, 7]])
def test_byol_selflabel_matches_naive_loop(labels):
    p1, p2, z1, z2 = _data(5, seed=4, count=4)
    lab = torch.tensor(labels)
    got = byol_selflabel_loss(p1, p2, z1, z2, labels=lab, weight=0.5)
    want = naive_ccsl(p1, p2, z1, z2, lab, 0.5)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (p1, p2)), torch.autograd.grad(want, (p1, p2))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    again = byol_selflabel_loss(p1, p2, z1, z2, labels=lab, weight=0.5)  # stop-gradient on the targets
    assert all(g is None for g in torch.autograd.grad(again, (z1, z2), allow_unused=True))


def test_byol_selflabel_distinct_labels_is_byol_and_module_clusters_targets():
    p1, p2, z1, z2 = _data(6, seed=5, count=4)
    torch.testing.assert_close(
        byol_selflabel_loss(p1, p2, z1, z2, labels=torch.arange(6)), byol_loss(p1, p2, z1, z2)
    )
    loss = losses.build("byol_selflabel", num_clusters=2)
    emb = {"image@0": p1, "image@1": p2, "image@0:ema": z1, "image@1:ema": z2}
    zn = (
        torch.nn.functional.normalize(z1.detach(), dim=1) + torch.nn.functional.normalize(z2.detach(), dim=1)
    ) / 2
    c = batch_clusters(zn, 2, 10, 0)
    torch.testing.assert_close(loss(emb), byol_selflabel_loss(p1, p2, z1, z2, labels=c))
    torch.testing.assert_close(loss(emb, labels=torch.arange(6)), byol_loss(p1, p2, z1, z2))
