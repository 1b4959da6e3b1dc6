"""L-DCL / L-DCLW against naive float64 loops (values and gradients) and the spec's oracles."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.dcl import DCLLoss, DCLWLoss, dcl_loss, dclw_loss, dclw_weights
from contrastkit.losses.infonce import ntxent_loss


def unit(v):
    return v / v.norm()


def naive_dcl(x, y, tau, sigma=None):
    """½ (mean_i ℓ_i(x→y) + mean_i ℓ_i(y→x)), ℓ_i = −w_i s_ii/τ + LSE over the 2N − 2 negatives;
    DCLW weights 2 − e^{s_i/σ} / mean_j e^{s_j/σ} from detached cosines."""
    n = x.shape[0]
    xs, ys = [unit(x[i]) for i in range(n)], [unit(y[i]) for i in range(n)]
    if sigma is None:
        w = [1.0] * n
    else:
        s = [float((xs[i] * ys[i]).sum().detach()) for i in range(n)]
        mean_e = sum(math.exp(v / sigma) for v in s) / n
        w = [2.0 - math.exp(v / sigma) / mean_e for v in s]
    total = 0.0
    for a, b in ((xs, ys), (ys, xs)):
        for i in range(n):
            negs = [(a[i] * a[k]).sum() / tau for k in range(n) if k != i]
            negs += [(a[i] * b[k]).sum() / tau for k in range(n) if k != i]
            total = total - w[i] * (a[i] * b[i]).sum() / tau + torch.logsumexp(torch.stack(negs), 0)
    return total / (2 * n)


def rand(n, d, rng, grad=True):
    return torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("sigma", [None, 0.5, 2.0])
@pytest.mark.parametrize("n,d", [(2, 3), (3, 5), (6, 4)])
def test_matches_naive_values_and_gradients(sigma, n, d, rng):
    x, y = rand(n, d, rng), rand(n, d, rng)
    tau = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    got = dcl_loss(x, y, tau) if sigma is None else dclw_loss(x, y, tau, sigma)
    want = naive_dcl(x, y, tau, sigma)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, y, tau)), torch.autograd.grad(want, (x, y, tau))):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def test_defaults_are_tau_0_1_and_sigma_0_5(rng):
    x, y = rand(4, 3, rng, False), rand(4, 3, rng, False)
    torch.testing.assert_close(dcl_loss(x, y), naive_dcl(x, y, 0.1), rtol=1e-8, atol=0)
    torch.testing.assert_close(dclw_loss(x, y), naive_dcl(x, y, 0.1, 0.5), rtol=1e-8, atol=0)
    assert (DCLWLoss().temperature, DCLWLoss().sigma, DCLLoss().temperature) == (0.1, 0.5, 0.1)


def test_ntxent_minus_dcl_is_the_per_anchor_log1p_term(rng):
    n, tau = 5, 0.2
    x, y = rand(n, 4, rng, False), rand(n, 4, rng, False)
    z = torch.nn.functional.normalize(torch.cat([x, y]), dim=-1)
    q = z @ z.T / tau
    gap = 0.0
    for k in range(2 * n):
        partner = (k + n) % (2 * n)
        lse_neg = torch.logsumexp(torch.stack([q[k, a] for a in range(2 * n) if a not in (k, partner)]), 0)
        gap += math.log1p(math.exp(q[k, partner] - lse_neg))  # > 0 for every anchor
    diff = ntxent_loss(x, y, tau) - dcl_loss(x, y, tau)
    assert diff.item() == pytest.approx(gap / (2 * n), rel=1e-12)
    assert diff.item() > 0


def test_dclw_with_huge_sigma_equals_dcl(rng):
    x, y = rand(6, 4, rng), rand(6, 4, rng)
    a, b = dclw_loss(x, y, 0.1, 1e9), dcl_loss(x, y, 0.1)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    for ga, gb in zip(torch.autograd.grad(a, (x, y)), torch.autograd.grad(b, (x, y))):
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-7)


def test_dclw_weights_sum_to_n_and_match_the_closed_form(rng):
    s = torch.rand(7, generator=rng, dtype=torch.float64) * 2 - 1
    w = dclw_weights(s, 0.5)
    assert w.sum().item() == pytest.approx(7.0, abs=1e-12)
    e = torch.exp(s / 0.5)
    torch.testing.assert_close(w, 2 - e / e.mean(), rtol=1e-13, atol=0)
    # a more similar positive gets a smaller weight (DCLW up-weights hard positives)
    assert w[s.argmax()] == w.min() and w[s.argmin()] == w.max()


def test_dclw_weights_carry_no_gradient(rng):
    x, y = rand(5, 4, rng), rand(5, 4, rng)
    tau, sigma = 0.2, 0.5

    def dense(detach):
        z = torch.nn.functional.normalize(torch.cat([x, y]), dim=-1)
        q = z @ z.T / tau
        k = torch.arange(10)
        partner = (k + 5) % 10
        pos = q[k, partner]
        s = pos[:5] * tau
        w = dclw_weights(s.detach() if detach else s, sigma).repeat(2)
        neg = q.masked_fill(torch.eye(10, dtype=torch.bool) | (k[:, None] == partner[None, :]), -torch.inf)
        return (neg.logsumexp(1) - w * pos).mean()

    got = dclw_loss(x, y, tau, sigma)
    g_got = torch.autograd.grad(got, (x, y))
    g_det = torch.autograd.grad(dense(True), (x, y))
    g_live = torch.autograd.grad(dense(False), (x, y))
    for a, b, c in zip(g_got, g_det, g_live):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        assert (a - c).abs().max() > 1e-3  # a loss whose weights were differentiated would differ


def test_hand_value_is_negative_for_identical_orthonormal_views():
    # x = y = e_1..e_3, τ = 0.1: positive q = 10, the 4 negatives are all 0 ⇒ ℓ = −10 + log 4
    e = torch.eye(3, dtype=torch.float64)
    assert dcl_loss(e, e, 0.1).item() == pytest.approx(-10 + math.log(4), abs=1e-12)
    assert dclw_loss(e, e, 0.1).item() == pytest.approx(-10 + math.log(4), abs=1e-12)


def test_invariances(rng):
    x, y = rand(6, 5, rng, False), rand(6, 5, rng, False)
    for fn in (dcl_loss, dclw_loss):
        base = fn(x, y)
        p = torch.randperm(6, generator=rng)
        torch.testing.assert_close(fn(x[p], y[p]), base, rtol=1e-12, atol=0)
        torch.testing.assert_close(fn(y, x), base, rtol=1e-12, atol=0)
        torch.testing.assert_close(fn(0.2 * x, 7.0 * y), base, rtol=1e-12, atol=0)


def test_registry_builds_and_runs_on_float32(rng):
    x, y = torch.randn(8, 16, generator=rng), torch.randn(8, 16, generator=rng)
    for name, cls, fn in (("dcl", DCLLoss, dcl_loss), ("dclw", DCLWLoss, dclw_loss)):
        loss = LOSSES.build(name, temperature=0.2)
        assert isinstance(loss, cls)
        out = loss(x, y)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(fn(x.double(), y.double(), 0.2).item(), rel=1e-5)
        with pytest.raises(InputError, match="does not use"):
            loss(x, y, labels=torch.arange(8))


@pytest.mark.parametrize("fn", [dcl_loss, dclw_loss])
def test_bad_input_is_a_clear_error(fn):
    with pytest.raises(InputError, match="needs N >= 2"):
        fn(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(InputError, match="batch size mismatch"):
        fn(torch.randn(3, 3), torch.randn(2, 3))
    with pytest.raises(InputError, match="empty batch"):
        fn(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(InputError, match="non-finite"):
        fn(torch.full((2, 3), float("nan")), torch.randn(2, 3))
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        fn(torch.randn(3, 3), torch.randn(3, 3), 0.0)


def test_bad_sigma_is_a_clear_error():
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        dclw_loss(torch.randn(3, 3), torch.randn(3, 3), 0.1, -1.0)
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        LOSSES.build("dclw", sigma=0.0)
