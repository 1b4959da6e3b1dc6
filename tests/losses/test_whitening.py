"""WhitenedCSE against a naive float64 implementation (numpy-style loops, explicit eigen-whitening
per group via a matrix inverse square root), plus its oracles and errors."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.infonce import infonce_loss
from contrastkit.losses.whitening import WhitenedCSELoss, draw_shuffles, group_whiten, whitenedcse_loss

F64 = torch.float64


def naive_zca(z, perm, groups, eps):
    """Channel-by-group loop: whiten each group's columns with Σ^{-1/2} (ZCA), written with an
    explicit eigen-decomposition of the population covariance of that group's columns."""
    m, d = z.shape
    g = d // groups
    order = perm.tolist()
    out = torch.zeros_like(z)
    for k in range(groups):
        cols = order[k * g : (k + 1) * g]
        block = z[:, cols]
        centred = block - block.mean(0)
        cov = sum(centred[i : i + 1].T @ centred[i : i + 1] for i in range(m)) / m
        lam, u = torch.linalg.eigh(cov)
        out[:, cols] = centred @ (u @ torch.diag((lam + eps) ** -0.5) @ u.T)
    return out


def naive_loss(x, y, perms, groups, tau, eps):
    n = x.shape[0]
    whitened = [naive_zca(torch.cat([x, y]), p, groups, eps) for p in perms]
    total, count = 0.0, 0
    for wp in whitened:
        for wq in whitened:
            a = wp[:n] / wp[:n].norm(dim=1, keepdim=True)
            b = wq[n:] / wq[n:].norm(dim=1, keepdim=True)
            for i in range(n):
                logits = [float(a[i] @ b[j]) / tau for j in range(n)]
                lse = math.log(sum(math.exp(v) for v in logits))
                total += lse - logits[i]
                count += 1
    return total / count


@pytest.mark.parametrize("n,d,groups,p", [(4, 6, 3, 1), (5, 8, 2, 2), (7, 8, 4, 3)])
def test_matches_naive_loops_and_gradients(n, d, groups, p):
    g = torch.Generator().manual_seed(n * 10 + p)
    x = torch.randn(n, d, generator=g, dtype=F64, requires_grad=True)
    y = torch.randn(n, d, generator=g, dtype=F64, requires_grad=True)
    perms = draw_shuffles(d, p, torch.Generator().manual_seed(1))
    got = whitenedcse_loss(x, y, perms, groups=groups, temperature=0.5, eps=1e-5)
    assert got.item() == pytest.approx(
        naive_loss(x.detach(), y.detach(), perms, groups, 0.5, 1e-5), abs=1e-10
    )
    assert torch.autograd.gradcheck(
        lambda a, b: whitenedcse_loss(a, b, perms, groups=groups, temperature=0.5, eps=1e-3), (x, y)
    )


def test_group_whiten_equals_naive_zca_and_has_identity_covariance():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20, 8, generator=g, dtype=F64) @ torch.randn(8, 8, generator=g, dtype=F64)
    perm = torch.randperm(8, generator=g)
    got = group_whiten(z, perm, 2, eps=0.0)
    torch.testing.assert_close(got, naive_zca(z, perm, 2, 0.0), atol=1e-9, rtol=1e-9)
    for k in range(2):
        cols = perm[k * 4 : (k + 1) * 4]
        block = got[:, cols]
        torch.testing.assert_close(block.T @ block / 20, torch.eye(4, dtype=F64), atol=1e-9, rtol=0)
    # ZCA depends on the grouping, not on the channel order within a group
    swapped = perm.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    torch.testing.assert_close(group_whiten(z, swapped, 2, eps=0.0), got, atol=1e-9, rtol=0)
    pca = group_whiten(z, perm, 2, method="pca", eps=0.0)
    torch.testing.assert_close(
        pca[:, perm[:4]].T @ pca[:, perm[:4]] / 20, torch.eye(4, dtype=F64), atol=1e-9, rtol=0
    )


def test_one_shuffle_is_infonce_on_the_whitened_pair():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 8, generator=g, dtype=F64), torch.randn(6, 8, generator=g, dtype=F64)
    perm = draw_shuffles(8, 1, torch.Generator().manual_seed(2))
    w = group_whiten(torch.cat([x, y]), perm[0], 4)
    want = infonce_loss(w[:6], w[6:], 1 / 0.05)
    assert whitenedcse_loss(x, y, perm, groups=4).item() == pytest.approx(want.item(), abs=1e-10)


def test_module_draws_seeded_permutations_and_advances_only_in_training():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    a, b = WhitenedCSELoss(groups=2, seed=5), WhitenedCSELoss(groups=2, seed=5)
    assert torch.equal(a(x, y), b(x, y)) and int(a.step) == 1
    assert torch.equal(a.permutations(8), b.permutations(8))
    a.eval()
    a(x, y)
    assert int(a.step) == 1
    assert not torch.equal(a.permutations(8), WhitenedCSELoss(groups=2, seed=6).permutations(8))


def test_errors():
    x = torch.randn(4, 6)
    with pytest.raises(ConfigError, match="not divisible"):
        whitenedcse_loss(x, x, draw_shuffles(6, 1), groups=4)
    with pytest.raises(InputError, match="more rows than channels"):
        group_whiten(torch.randn(3, 6), torch.arange(6), 1)
    with pytest.raises(InputError, match="N >= 2"):
        whitenedcse_loss(x[:1], x[:1], draw_shuffles(6, 1), groups=3)
    with pytest.raises(InputError, match="permutation"):
        group_whiten(torch.randn(8, 6), torch.zeros(6, dtype=torch.long), 3)
    with pytest.raises(ConfigError, match="method"):
        WhitenedCSELoss(method="cholesky")
