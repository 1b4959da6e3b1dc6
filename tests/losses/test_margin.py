"""L-AM-NTXENT / L-AAM-NTXENT against naive float64 loops (values and gradients), the spec's
oracles and the margin warm-up schedule."""

import itertools
import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.infonce import infonce_loss, ntxent_loss
from contrastkit.losses.margin import (
    AAMNTXentLoss,
    AMNTXentLoss,
    aam_ntxent_loss,
    additive_angular_margin,
    am_ntxent_loss,
    margin_schedule,
)


def unit(v):
    return v / v.norm()


def naive_margin(x, y, s, m, angular, symmetric=True):
    """Each anchor: −s·pos′ + log(exp(s·pos′) + Σ_neg exp(s·cos)); ArcFace via θ = acos(c) directly."""
    n = x.shape[0]
    if symmetric:
        z = [unit(x[i]) for i in range(n)] + [unit(y[i]) for i in range(n)]
        anchors = [
            (k, z, (k + n) % (2 * n), [a for a in range(2 * n) if a % n != k % n]) for k in range(2 * n)
        ]
    else:
        ys = [unit(y[i]) for i in range(n)]
        anchors = [(i, ys, i, [j for j in range(n) if j != i]) for i in range(n)]
    total = 0.0
    for k, cands, p, negs in anchors:
        a = z[k] if symmetric else unit(x[k])
        c = (a * cands[p]).sum()
        if not angular:
            pos = c - m
        elif c > math.cos(math.pi - m):
            pos = torch.cos(torch.acos(c) + m)
        else:
            pos = c - m * math.sin(math.pi - m)
        logits = torch.stack([s * pos] + [s * (a * cands[j]).sum() for j in negs])
        total = total - s * pos + torch.logsumexp(logits, 0)
    return total / len(anchors)


def rand(n, d, rng, grad=True):
    return torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("angular", [False, True])
@pytest.mark.parametrize("n,d", [(2, 3), (3, 5), (6, 4)])
def test_matches_naive_values_and_gradients(symmetric, angular, n, d, rng):
    x, y = rand(n, d, rng), rand(n, d, rng)
    ls = torch.tensor(math.log(5.0), dtype=torch.float64, requires_grad=True)
    fn = aam_ntxent_loss if angular else am_ntxent_loss
    got = fn(x, y, ls.exp(), 0.3, symmetric=symmetric)
    want = naive_margin(x, y, ls.exp(), 0.3, angular, symmetric)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, y, ls)), torch.autograd.grad(want, (x, y, ls))):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def test_defaults_are_s5_m02_symmetric(rng):
    x, y = rand(4, 3, rng, False), rand(4, 3, rng, False)
    torch.testing.assert_close(am_ntxent_loss(x, y), naive_margin(x, y, 5.0, 0.2, False), rtol=1e-8, atol=0)
    torch.testing.assert_close(aam_ntxent_loss(x, y), naive_margin(x, y, 5.0, 0.2, True), rtol=1e-8, atol=0)
    for cls in (AMNTXentLoss, AAMNTXentLoss):
        m = cls()
        assert (m.scale, m.margin, m.symmetric) == (5.0, 0.2, True)


@pytest.mark.parametrize("fn", [am_ntxent_loss, aam_ntxent_loss])
def test_zero_margin_is_scaled_ntxent_and_infonce(fn, rng):
    x, y = rand(5, 4, rng), rand(5, 4, rng)
    got, want = fn(x, y, 5.0, 0.0), ntxent_loss(x, y, 0.2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    for a, b in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(want, (x, y))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(
        fn(x, y, 5.0, 0.0, symmetric=False), infonce_loss(x, y, 5.0), rtol=1e-12, atol=0
    )


def test_hand_values_on_orthonormal_identical_views():
    # z = [e1, e2, e1, e2], s = 1: positive cos 1 (θ⁺ = 0), two negatives at cos 0
    e = torch.eye(2, dtype=torch.float64)
    m = 0.3
    am = math.log(1 + 2 * math.exp(-(1 - m)))  # AM positive logit is exactly cos − m = 1 − m
    assert am_ntxent_loss(e, e, 1.0, m).item() == pytest.approx(am, abs=1e-14)
    aam = math.log(1 + 2 * math.exp(-math.cos(m)))  # AAM at θ⁺ = 0 gives cos m
    assert aam_ntxent_loss(e, e, 1.0, m).item() == pytest.approx(aam, abs=1e-14)


def test_additive_angular_margin_branches_and_finite_gradient_at_theta_zero():
    m = 0.2
    c = torch.tensor([1.0, 0.5, -0.5, -0.999, -1.0], dtype=torch.float64, requires_grad=True)
    out = additive_angular_margin(c, m)
    th = torch.acos(c.detach())
    want = torch.cos(th + m)
    fallback = c.detach() <= math.cos(math.pi - m)  # -0.999 and -1 fall back to c − m sin(π − m)
    assert fallback.tolist() == [False, False, False, True, True]
    want[fallback] = c.detach()[fallback] - m * math.sin(math.pi - m)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-15)
    assert out[0].item() == pytest.approx(math.cos(m), abs=1e-15)
    (g,) = torch.autograd.grad(out.sum(), c)
    assert torch.isfinite(g).all()
    assert g[0].item() == pytest.approx(math.cos(m), abs=1e-15)  # sin θ's unbounded slope replaced by 0
    assert g[1].item() == pytest.approx(math.cos(m) + 0.5 / math.sqrt(0.75) * math.sin(m), abs=1e-12)


def test_identical_views_give_finite_gradients():
    x = torch.eye(3, dtype=torch.float64).requires_grad_(True)
    for fn in (am_ntxent_loss, aam_ntxent_loss):
        (g,) = torch.autograd.grad(fn(x, x.detach()), x)
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("fn", [am_ntxent_loss, aam_ntxent_loss])
def test_loss_is_non_decreasing_in_margin(fn, rng):
    x, y = rand(6, 4, rng, False), rand(6, 4, rng, False)
    values = [fn(x, y, 5.0, m).item() for m in torch.linspace(0, 0.8, 17).tolist()]
    assert all(b > a for a, b in itertools.pairwise(values))


def test_margin_schedule():
    assert margin_schedule(0, 100, 0.2) == pytest.approx(0.0, abs=1e-15)
    assert margin_schedule(25, 100, 0.2) == pytest.approx(0.1, abs=1e-15)  # cos(π/2) = 0 ⇒ m/2
    assert margin_schedule(50, 100, 0.2) == pytest.approx(0.2, abs=1e-15)
    assert margin_schedule(80, 100, 0.2) == 0.2
    e = 10
    assert margin_schedule(e, 100, 0.2) == pytest.approx(0.2 - 0.2 * (math.cos(math.pi * e / 50) + 1) / 2)
    values = [margin_schedule(k, 20, 0.3) for k in range(21)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    with pytest.raises(ConfigError, match="total_epochs must be > 0"):
        margin_schedule(0, 0, 0.2)
    with pytest.raises(ConfigError, match="epoch must be >= 0"):
        margin_schedule(-1, 10, 0.2)


def test_invariances(rng):
    x, y = rand(6, 5, rng, False), rand(6, 5, rng, False)
    p = torch.randperm(6, generator=rng)
    for fn in (am_ntxent_loss, aam_ntxent_loss):
        base = fn(x, y)
        torch.testing.assert_close(fn(x[p], y[p]), base, rtol=1e-12, atol=0)
        torch.testing.assert_close(fn(y, x), base, rtol=1e-12, atol=0)
        torch.testing.assert_close(fn(4.0 * x, 0.1 * y), base, rtol=1e-12, atol=0)


def test_registry_modules_and_margin_update(rng):
    x, y = torch.randn(8, 16, generator=rng), torch.randn(8, 16, generator=rng)
    for name, cls, fn in (
        ("am_ntxent", AMNTXentLoss, am_ntxent_loss),
        ("aam_ntxent", AAMNTXentLoss, aam_ntxent_loss),
    ):
        loss = LOSSES.build(name, scale=10.0)
        assert isinstance(loss, cls)
        out = loss(x, y)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(fn(x.double(), y.double(), 10.0, 0.2).item(), rel=1e-5)
        loss.margin = margin_schedule(0, 10, 0.2)  # warm-up start: no margin
        torch.testing.assert_close(loss(x, y), ntxent_loss(x, y, 0.1))
        assert loss.log_values() == {"margin": 0.0}
        with pytest.raises(InputError, match="does not use"):
            loss(x, y, labels=torch.arange(8))


@pytest.mark.parametrize("fn", [am_ntxent_loss, aam_ntxent_loss])
def test_bad_input_is_a_clear_error(fn):
    one = torch.randn(1, 3, dtype=torch.float64)
    assert fn(one, one, allow_single=True).item() == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(InputError, match="batch of 1 pair"):
        fn(one, one)
    with pytest.raises(InputError, match="batch size mismatch"):
        fn(torch.randn(3, 3), torch.randn(2, 3))
    with pytest.raises(InputError, match="non-finite"):
        fn(torch.full((2, 3), float("inf")), torch.randn(2, 3))
    with pytest.raises(InputError, match="empty batch"):
        fn(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(ConfigError, match="scale must be > 0"):
        fn(torch.randn(3, 3), torch.randn(3, 3), 0.0)
    with pytest.raises(ConfigError, match="margin must lie in"):
        fn(torch.randn(3, 3), torch.randn(3, 3), 5.0, -0.1)
