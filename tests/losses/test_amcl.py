"""L-AMCL (SimCLR form) against a naive float64 loop and the spec's oracles."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.amcl import AMCLLoss, amcl_loss
from contrastkit.losses.base import LOSSES

F64 = torch.float64
ETA, TAU_MAX = 1e-5, 2.0


def unit(v):
    return v / v.norm()


def naive_phi(loss, z):
    """φ(z) = W2 relu(W1 z + b1) + b2 for one vector, from the module's weights."""
    first, last = loss.temp_net[0], loss.temp_net[2]
    h = torch.clamp(first.weight @ z + first.bias, min=0.0)
    return last.weight @ h + last.bias


def naive_amcl(loss, x, y, beta=0.01, k=100):
    n = x.shape[0]
    total = 0.0
    for head in loss.heads:
        views = [unit(head.weight @ x[i] + head.bias) for i in range(n)]
        views += [unit(head.weight @ y[i] + head.bias) for i in range(n)]
        phis = [naive_phi(loss, v) for v in views]
        d = views[0].shape[0]

        def tau(a, b, phis=phis):
            return ETA + (TAU_MAX - ETA) / (1 + torch.exp((phis[a] * phis[b]).sum()))

        directions = [0.0, 0.0]
        for a in range(2 * n):
            p = (a + n) % (2 * n)
            sims = {b: (views[a] * views[b]).sum() for b in range(2 * n) if b not in (a, p)}
            top = sorted(sims, key=lambda b, sims=sims: -float(sims[b].detach()))[: min(k, 2 * n - 2)]
            t_p = tau(a, p)
            ell = -(views[a] * views[p]).sum() / t_p
            ell = ell + sum(sims[b] / tau(a, b) for b in top) / len(top)
            ell = ell + beta * (d / 2 * torch.log(t_p) + 1 / t_p)
            ell = ell - beta * sum(torch.log(tau(a, b)) + 1 / tau(a, b) for b in top)
            directions[a // n] = directions[a // n] + ell / n
        total = total + 0.5 * (directions[0] + directions[1])
    return total


def make(heads=3, d=5, seed=0, **kw):
    torch.manual_seed(seed)
    loss = AMCLLoss(dim=d, heads=heads, **kw).double()
    with torch.no_grad():  # a wider φ so the temperatures vary over pairs
        loss.temp_net[2].weight.mul_(4.0)
    return loss


def pair(n, d, rng):
    x = torch.randn(n, d, generator=rng, dtype=F64, requires_grad=True)
    y = torch.randn(n, d, generator=rng, dtype=F64, requires_grad=True)
    return x, y


@pytest.mark.parametrize("n,k,heads", [(2, 100, 1), (4, 3, 3), (5, 100, 2)])
def test_matches_naive_values_and_gradients(n, k, heads, rng):
    loss = make(heads=heads, k=k)
    x, y = pair(n, 5, rng)
    inputs = (x, y, *loss.parameters())
    got = loss(x, y)
    want = naive_amcl(loss, x, y, k=k)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)


def test_zeroed_phi_gives_constant_temperature_closed_form(rng):
    loss = make(heads=2, d=6, beta=0.05, k=3)
    with torch.no_grad():
        loss.temp_net[2].weight.zero_()
        loss.temp_net[2].bias.zero_()
    x, y = pair(5, 6, rng)
    c = ETA + (TAU_MAX - ETA) / 2
    want = 0.0
    for head in loss.heads:
        z = torch.nn.functional.normalize(torch.cat([head(x), head(y)]), dim=-1)
        sim = z @ z.T
        pos = torch.cat([sim.diagonal(5), sim.diagonal(-5)])
        blocked = torch.eye(10, dtype=torch.bool) | torch.eye(10, dtype=torch.bool).roll(5, 1)
        top3 = sim.masked_fill(blocked, -2.0).sort(1, descending=True).values[:, :3]
        per = (
            -pos / c + top3.mean(1) / c + 0.05 * (3 * math.log(c) + 1 / c) - 0.05 * 3 * (math.log(c) + 1 / c)
        )
        want = want + per.mean()
    torch.testing.assert_close(loss(x, y), want, rtol=1e-12, atol=1e-12)


def test_one_head_equals_the_single_head_pure_form_and_heads_add(rng):
    three = make(heads=3)
    x, y = pair(6, 5, rng)
    parts = []
    for head in three.heads:
        zx, zy = head(x), head(y)
        tx = three.temp_net(torch.nn.functional.normalize(zx, dim=-1))
        ty = three.temp_net(torch.nn.functional.normalize(zy, dim=-1))
        parts.append(amcl_loss(zx, zy, tx, ty))  # [N, d] inputs: C = 1
        one = AMCLLoss(dim=5, heads=1).double()
        one.heads[0].load_state_dict(head.state_dict())
        one.temp_net.load_state_dict(three.temp_net.state_dict())
        torch.testing.assert_close(one(x, y), parts[-1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(three(x, y), sum(parts), rtol=1e-12, atol=1e-12)


def test_k_is_clamped_and_invariances(rng):
    loss = make(heads=2, k=100)
    x, y = pair(4, 5, rng)
    base = loss(x, y)
    loss.k = 6  # 2N − 2 = 6: every negative, as k = 100 clamps to
    torch.testing.assert_close(loss(x, y), base)
    loss.k = 2
    assert abs(loss(x, y).item() - base.item()) > 1e-6  # fewer negatives change the value
    loss.k = 100
    q = torch.randperm(4, generator=rng)
    torch.testing.assert_close(loss(x[q], y[q]), base)
    torch.testing.assert_close(loss(y, x), base)  # both views are anchors
    zx, zy, tx, ty = loss.project(x, y)
    torch.testing.assert_close(amcl_loss(3.0 * zx, 0.2 * zy, tx, ty), amcl_loss(zx, zy, tx, ty))


def test_temperatures_stay_in_range_and_loss_is_finite_for_extreme_phi(rng):
    loss = make(heads=1)
    with torch.no_grad():
        loss.temp_net[2].weight.mul_(1e3)
    x, y = pair(8, 5, rng)
    assert math.isfinite(loss(x, y).item())


def test_lazy_heads_train_with_an_optimizer_built_before_the_first_batch(rng):
    torch.manual_seed(1)
    loss = LOSSES.build("amcl")
    opt = torch.optim.AdamW(loss.parameters(), lr=1e-2)
    x, y = torch.randn(8, 12, generator=rng), torch.randn(8, 12, generator=rng)
    value = loss(x, y)
    assert value.dtype == torch.float32 and math.isfinite(value.item())
    assert loss.heads[0].weight.shape == (12, 12) and loss.temp_net[2].weight.shape == (12, 12)
    before = loss.heads[1].weight.detach().clone()
    value.backward()
    opt.step()
    assert (loss.heads[1].weight - before).abs().max().item() > 1e-4
    fresh = AMCLLoss()
    fresh.load_state_dict(loss.state_dict())  # a checkpoint loads into an unmaterialised module
    torch.testing.assert_close(fresh(x, y), loss(x, y))
    assert fresh(x.bfloat16(), y.bfloat16()).dtype == torch.float32


def test_bad_input_is_a_clear_error(rng):
    loss = make(heads=1, d=5)
    x, y = pair(3, 5, rng)
    with pytest.raises(InputError, match="N >= 2"):
        loss(x[:1], y[:1])
    with pytest.raises(InputError, match="heads are torch.float64"):
        loss(x.float(), y.float())
    with pytest.raises(InputError, match="expect d=5"):
        loss(torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64))
    with pytest.raises(InputError, match="batch size mismatch"):
        loss(x, y[:2])
    with pytest.raises(InputError, match=r"tx, ty must have shape \[C, N, e\]"):
        amcl_loss(x, y, torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64))
    with pytest.raises(InputError, match="non-finite"):
        amcl_loss(x, y.detach().fill_(float("nan")), x, x)
    with pytest.raises(InputError, match="does not use"):
        loss(x, y, labels=torch.arange(3))
    with pytest.raises(ConfigError, match="eta < tau_max"):
        AMCLLoss(eta=3.0)
    with pytest.raises(ConfigError, match="heads and dim must be >= 1"):
        AMCLLoss(heads=0)
