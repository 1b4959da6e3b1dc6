"""mixup_nce (ZeroVL's MixUpNCE) against CLIP and a naive soft-target loop."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.zerovl import mixup_nce_loss, mixup_targets

N, D = 6, 5


def naive(x, y, s, lam, partner, text):
    """The spec's per-direction sums, one anchor at a time (float64)."""
    y = torch.stack([lam * y[i] + (1 - lam) * y[partner[i]] if text else y[i] for i in range(len(y))])
    x, y = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    total = 0.0
    for a, c in ((x, y), (y, x)):
        for i in range(len(a)):
            logp = torch.log_softmax(s * (a[i] @ c.T), 0)
            total = total - (lam * logp[i] + (1 - lam) * logp[partner[i]]) / len(a)
    return total / 2


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    return x, y


def test_lambda_one_is_clip_at_one_over_tau(xy):
    x, y = xy
    ones, same = torch.ones(N, dtype=torch.float64), torch.arange(N)
    got = mixup_nce_loss(
        x, y, 50.0, mix_lambda=ones, mix_partner=same, mix_text=torch.ones(N, dtype=torch.long)
    )
    assert float(got.detach()) == pytest.approx(float(clip_loss(x, y, 50.0).detach()), abs=1e-12)
    plain = losses.build("mixup_nce")(x, y).detach()
    assert float(plain) == pytest.approx(float(clip_loss(x, y, 50.0).detach()), rel=1e-6)


@pytest.mark.parametrize("text", [0, 1])
def test_matches_the_naive_soft_target_loop_with_gradients(xy, text):
    x, y = xy
    lam, flip = 0.3, torch.arange(N - 1, -1, -1)
    fields = {
        "mix_lambda": torch.full((N,), lam, dtype=torch.float64),
        "mix_partner": flip,
        "mix_text": torch.full((N,), text, dtype=torch.long),
    }
    got = mixup_nce_loss(x, y, 7.0, **fields)
    want = naive(x, y, 7.0, lam, flip.tolist(), text)
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-12)
    gx, gy = torch.autograd.grad(got, (x, y))
    wx, wy = torch.autograd.grad(want, (x, y))
    assert torch.allclose(gx, wx, atol=1e-12) and torch.allclose(gy, wy, atol=1e-12)


def test_targets_rows_sum_to_one_and_odd_middle_row_is_itself():
    t = mixup_targets(torch.full((5,), 0.25), torch.tensor([4, 3, 2, 1, 0]))
    assert t.sum(1).tolist() == [1.0] * 5 and t[2, 2] == 1.0 and t[0, 4] == 0.75 and t[0, 0] == 0.25


def test_fields_and_temperature_are_checked(xy):
    x, y = xy
    with pytest.raises(InputError, match=r"mix_partner must be row indices in \[0, 6\)"):
        mixup_nce_loss(
            x, y, 1.0, mix_lambda=torch.ones(N, dtype=torch.float64), mix_partner=torch.arange(N) + 1
        )
    with pytest.raises(InputError, match="come together"):
        mixup_nce_loss(x, y, 1.0, mix_lambda=torch.ones(N, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"temperature must lie in \[0.001, 0.5\], got 0.9"):
        losses.build("mixup_nce", temperature=0.9)
    loss = losses.build("mixup_nce", learnable=True)
    with torch.no_grad():
        loss.log_scale.fill_(10.0)
    loss.after_optimizer_step()
    assert float(loss.log_scale.detach()) == pytest.approx(math.log(1000.0))
