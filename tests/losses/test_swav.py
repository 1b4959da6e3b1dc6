"""R-SWAV: Sinkhorn–Knopp against a naive loop (marginals, limits), the swapped-prediction loss
against its formula (float64 values and gradients), prototypes (unit norm, frozen bitwise), and
``swalip`` as a term added to CLIP."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses import LossConfig, LossTerm, from_config
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.swav import SwALIPLoss, sinkhorn_knopp, soft_cross_entropy, swapped_prediction_loss


def naive_sinkhorn(p, eps, iters):
    b, k = len(p), len(p[0])
    q = [[math.exp(p[i][j] / eps) for i in range(b)] for j in range(k)]  # K × B
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        for j in range(k):
            s = sum(q[j])
            q[j] = [v / s / k for v in q[j]]
        for i in range(b):
            s = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / s / b
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)], dtype=torch.float64)


@pytest.mark.parametrize("b,k,iters", [(5, 3, 3), (4, 7, 1), (6, 6, 10), (3, 2, 0)])
def test_sinkhorn_equals_the_naive_loop_and_rows_sum_to_one(b, k, iters):
    g = torch.Generator().manual_seed(b * k)
    p = torch.randn(b, k, generator=g, dtype=torch.float64).tanh()  # cosine-like scores
    q = sinkhorn_knopp(p, 0.3, iters)
    torch.testing.assert_close(q, naive_sinkhorn(p.tolist(), 0.3, iters), rtol=1e-12, atol=1e-14)
    if iters:
        torch.testing.assert_close(q.sum(1), torch.ones(b, dtype=torch.float64))


def test_sinkhorn_limits():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    q = sinkhorn_knopp(p, 0.5, 200)  # many iterations: every prototype gets B/K
    torch.testing.assert_close(q.sum(0), torch.full((4,), 2.0, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert not q.requires_grad  # no gradient flows into the targets
    flat = sinkhorn_knopp(torch.full((5, 4), 0.7, dtype=torch.float64), 0.05, 3)
    torch.testing.assert_close(flat, torch.full((5, 4), 0.25, dtype=torch.float64))
    sharp = sinkhorn_knopp(torch.eye(3, dtype=torch.float64) + 0.01 * p.detach()[:3, :3], 0.01, 3)
    assert float((sharp - torch.eye(3, dtype=torch.float64)).abs().max()) < 1e-6  # near one-hot
    big = sinkhorn_knopp(torch.full((2, 3), 1e4), 0.05, 3)  # the max shift: no overflow
    assert torch.isfinite(big).all() and sinkhorn_knopp(p.float(), 0.5, 3).dtype == torch.float32
    with pytest.raises(InputError, match=r"scores \[B, K\]"):
        sinkhorn_knopp(torch.zeros(3), 0.05, 3)


def naive_swap(px, py, t, eps, iters):
    qx = naive_sinkhorn(px.detach().tolist(), eps, iters)
    qy = naive_sinkhorn(py.detach().tolist(), eps, iters)
    total = 0
    for i in range(px.shape[0]):
        lx, ly = torch.log_softmax(px[i] / t, 0), torch.log_softmax(py[i] / t, 0)
        total = total - sum(qy[i, k] * lx[k] + qx[i, k] * ly[k] for k in range(px.shape[1]))
    return 0.5 * total / px.shape[0]


def test_swapped_prediction_equals_the_formula_values_and_gradients():
    g = torch.Generator().manual_seed(3)
    px = torch.randn(6, 5, generator=g, dtype=torch.float64).tanh().requires_grad_()
    py = torch.randn(6, 5, generator=g, dtype=torch.float64).tanh().requires_grad_()
    got = swapped_prediction_loss(px, py, 0.1, epsilon=0.2, n_iters=3)
    want = naive_swap(px, py, 0.1, 0.2, 3)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    for a, b in zip(torch.autograd.grad(got, (px, py)), torch.autograd.grad(want, (px, py))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    q = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    assert float(soft_cross_entropy(torch.zeros(2, 3, dtype=torch.float64), q)) == pytest.approx(math.log(3))


def module(**kw):
    torch.manual_seed(0)
    return SwALIPLoss(prototypes=7, proj_dim=4, hidden_dim=8, dim=5, **kw).double()


def test_module_is_the_formula_on_its_projections():
    loss = module(freeze_prototypes_steps=0, epsilon=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    value = loss(x, y)
    c = F.normalize(loss.prototypes["image"], dim=1)
    px = F.normalize(loss.projectors["image"](x), dim=1) @ c.T
    py = F.normalize(loss.projectors["text"](y), dim=1) @ c.T
    t = 1 / loss.log_scale.exp()  # 0.1 up to float32 rounding of log(1/T)
    want = naive_swap(px, py, t, 0.1, 3)
    assert float(value.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    got_grads = torch.autograd.grad(value, (x, y, loss.prototypes["image"]))
    want_grads = torch.autograd.grad(want, (x, y, loss.prototypes["image"]))
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert list(loss.prototypes) == ["image"] and not loss.log_scale.requires_grad
    assert list(module(shared_prototypes=False).prototypes) == ["image", "text"]


def test_prototypes_frozen_bitwise_then_unit_norm_after_each_step():
    loss = module(freeze_prototypes_steps=2)
    opt = torch.optim.AdamW(loss.parameters(), lr=0.5, weight_decay=0.0)
    g = torch.Generator().manual_seed(2)
    x, y = (
        torch.randn(8, 5, generator=g, dtype=torch.float64),
        torch.randn(8, 5, generator=g, dtype=torch.float64),
    )
    start = loss.prototypes["image"].detach().clone()
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        loss(x, y).backward()
        frozen = step < 2
        assert (loss.prototypes["image"].grad is None) == frozen
        opt.step()
        loss.after_optimizer_step()
        if frozen:
            assert torch.equal(loss.prototypes["image"], start)
        norms = loss.prototypes["image"].detach().norm(dim=1)
        atol = 1e-6 if frozen else 1e-12  # initialised at unit norm in float32, renormalised in float64
        torch.testing.assert_close(norms, torch.ones(7, dtype=torch.float64), rtol=0, atol=atol)
    assert not torch.equal(loss.prototypes["image"], start) and int(loss.step) == 4


def test_added_to_clip_as_a_term_and_errors():
    torch.manual_seed(0)
    cfg = LossConfig(terms={"clip": 1.0, "swalip": LossTerm(0.2, {"prototypes": 16, "hidden_dim": 32})})
    loss = from_config(cfg)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    value = loss(x, y)
    scale = loss.terms["clip"].log_scale.exp()
    want = clip_loss(x, y, scale) + 0.2 * loss.terms["swalip"](x, y)
    assert float(value.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    assert set(loss.log_values()) >= {"loss/clip", "loss/swalip", "swalip/swalip_temperature"}
    with pytest.raises(InputError, match="N >= 2"):
        loss.terms["swalip"](x[:1], y[:1])
    with pytest.raises(ConfigError, match="must be > 0"):
        from_config(LossConfig(name="swalip", params={"epsilon": 0.0}))
