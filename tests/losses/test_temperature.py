"""R-UNIF-TOL losses: the temperature schedule (values, state, wrappers), the hard contrastive loss
and the simple loss against naive float64 loops (values and gradients)."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit import losses
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.siglip import siglip_loss
from contrastkit.losses.temperature import (
    hard_contrastive_loss,
    relative_penalty,
    simple_contrastive_loss,
    temperature_at,
)
from contrastkit.scale.tiled import TiledLoss
from contrastkit.train import param_groups


def val(t):
    return float(t.detach())


def pair(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    return x, y


# ---- schedule --------------------------------------------------------------------------------------


def test_temperature_at_hand_values():
    assert temperature_at(0, 10, 0.1, 0.03) == pytest.approx(0.1)
    assert temperature_at(5, 10, 0.1, 0.03) == pytest.approx(0.065)  # cosine midpoint
    assert temperature_at(10, 10, 0.1, 0.03) == pytest.approx(0.03)
    assert temperature_at(25, 10, 0.1, 0.03) == pytest.approx(0.03)  # clamped after the end
    assert temperature_at(3, 10, 0.1, 0.03, "linear") == pytest.approx(0.1 - 0.07 * 0.3)
    assert temperature_at(3, 10, 0.1, 0.03, "constant") == 0.1
    t = 2
    want = 0.03 + 0.07 * 0.5 * (1 + math.cos(math.pi * t / 10))
    assert temperature_at(t, 10, 0.1, 0.03) == pytest.approx(want, abs=1e-15)
    with pytest.raises(ConfigError, match="unknown temperature schedule"):
        temperature_at(0, 1, 0.1, 0.1, "step")
    with pytest.raises(ConfigError, match="> 0"):
        temperature_at(0, 1, 0.0, 0.1)


def test_schedule_sets_the_inner_scale_each_step_and_round_trips():
    loss = losses.build("temperature_schedule", start=0.2, end=0.05, schedule="linear", total_steps=4)
    x, y = pair(6, 5, 0)
    for step in range(6):
        tau = temperature_at(step, 4, 0.2, 0.05, "linear")
        fn, kw = loss.pure()
        assert fn is clip_loss and float(kw["scale"]) == pytest.approx(1 / tau, rel=1e-6)
        assert loss.log_values()["temperature"] == pytest.approx(tau)
        want = clip_loss(x, y, torch.tensor(1 / tau, dtype=torch.float64))
        assert float(loss(x, y).detach()) == pytest.approx(float(want.detach()), rel=1e-6)
        loss.after_optimizer_step()
    assert int(loss.step) == 6
    groups = param_groups(torch.nn.Linear(2, 2), loss, 0.1)  # the scheduled scale is not trained
    assert not {id(p) for g in groups for p in g["params"]} & {id(loss.inner.log_scale)}
    fresh = losses.build("temperature_schedule", start=0.2, end=0.05, schedule="linear", total_steps=4)
    fresh.load_state_dict(loss.state_dict())
    assert int(fresh.step) == 6 and float(fresh.inner.log_scale) == float(loss.inner.log_scale)


def test_schedule_over_siglip_keeps_its_bias_learnable_and_tiles_with_clip():
    sig = losses.build("temperature_schedule", loss="siglip", start=0.1, end=0.1)
    fn, kw = sig.pure()
    assert fn is siglip_loss and float(kw["scale"]) == pytest.approx(10.0) and kw["bias"].requires_grad
    x, y = pair(9, 4, 1)
    clip = losses.build("temperature_schedule", start=0.07, end=0.07)
    tiled = TiledLoss(clip, tile_size=4)  # the inner loss's tiled form
    assert float(tiled(x, y).detach()) == pytest.approx(float(clip(x, y).detach()), rel=1e-10)
    for bad, match in [
        ({"params": {"init_temperature": 0.1}}, "sets the temperature itself"),
        ({"loss": "ntxent"}, "needs a loss with a logit scale"),
        ({"schedule": "step"}, "schedule"),
    ]:
        with pytest.raises(ConfigError, match=match):
            losses.build("temperature_schedule", **bad)


# ---- hard contrastive ------------------------------------------------------------------------------


def naive_hard(x, y, tau, alpha):
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    n, m = x.shape[0], x.shape[0] - 1
    k = max(1, math.ceil(round((1 - alpha) * m, 9)))
    total = 0
    for i in range(n):
        sims = [x[i] @ y[j] for j in range(n)]
        negs = sorted((float(sims[j].detach()) for j in range(n) if j != i), reverse=True)
        thr = negs[k - 1]
        terms = [torch.exp(sims[i] / tau)] + [
            torch.exp(sims[j] / tau) for j in range(n) if j != i and sims[j] >= thr
        ]
        total = total - torch.log(torch.exp(sims[i] / tau) / sum(terms))
    return total / n


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.7, 0.9, 1.0])
@pytest.mark.parametrize("n", [2, 5, 11])
def test_hard_contrastive_equals_the_naive_loop(n, alpha):
    x, y = pair(n, 4, n)
    got = hard_contrastive_loss(x, y, 0.3, alpha=alpha, symmetric=False)
    want = naive_hard(x, y, 0.3, alpha)
    assert val(got) == pytest.approx(val(want), rel=1e-12)
    gx, gy = torch.autograd.grad(got, (x, y))
    wx, wy = torch.autograd.grad(want, (x, y))
    torch.testing.assert_close(gx, wx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gy, wy, rtol=1e-10, atol=1e-12)
    sym = hard_contrastive_loss(x, y, 0.3, alpha=alpha)
    assert val(sym) == pytest.approx(0.5 * val(want + naive_hard(y, x, 0.3, alpha)), rel=1e-12)


def test_alpha_zero_is_infonce_and_ties_are_kept():
    x, y = pair(7, 5, 3)
    scale = torch.tensor(1 / 0.2, dtype=torch.float64)
    assert val(hard_contrastive_loss(x, y, 0.2, alpha=0.0)) == pytest.approx(val(clip_loss(x, y, scale)))
    one_way = F.cross_entropy(scale * F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T, torch.arange(7))
    assert val(hard_contrastive_loss(x, y, 0.2, alpha=0.0, symmetric=False)) == pytest.approx(val(one_way))
    # two identical negatives tie at the top: k = 1 keeps both
    xs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    ys = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8], [-1.0, 0.0]], dtype=torch.float64)
    got = hard_contrastive_loss(xs, ys, 1.0, alpha=1.0, symmetric=False)
    assert val(naive_hard(xs, ys, 1.0, 1.0)) == pytest.approx(val(got), rel=1e-12)
    rows = [
        -1.0 + math.log(math.e + 2 * math.exp(0.6)),  # anchor 0: both 0.6-negatives kept
        math.log(2.0),  # anchors 1 and 2: each other's caption (cos 0.8) ties with the positive
        math.log(2.0),
        -1.0 + math.log(math.e + 2 * math.exp(-0.6)),  # anchor 3: both −0.6 negatives kept
    ]
    assert val(got) == pytest.approx(sum(rows) / 4, rel=1e-12)
    with pytest.raises(InputError, match="N >= 2"):
        hard_contrastive_loss(x[:1], y[:1])


def test_simple_loss_and_relative_penalty():
    x, y = pair(5, 3, 4)
    s = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
    want = sum(-s[i, i] + 0.5 * sum(s[i, j] for j in range(5) if j != i) for i in range(5)) / 5
    got = simple_contrastive_loss(x, y, 0.5)
    assert val(got) == pytest.approx(val(want), rel=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])
    r = relative_penalty(x, y, 0.5)
    i, j = 2, 4
    den = sum(math.exp(val(s[i, k]) / 0.5) for k in range(5) if k != i)
    assert val(r[i, j]) == pytest.approx(math.exp(val(s[i, j]) / 0.5) / den)
    assert val(r[i, i]) == 0.0 and torch.allclose(r.sum(1), torch.ones(5, dtype=torch.float64))
    assert val(losses.build("simple_contrastive", lam=0.5)(x, y)) == pytest.approx(val(want))
    assert losses.build("hard_contrastive").pure()[1] == {
        "temperature": 0.07,
        "alpha": 0.9,
        "symmetric": True,
    }
