"""L-NTXENT and one-directional InfoNCE against naive float64 loops (values and gradients) and the
spec's oracles."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.clip import CLIPLoss, clip_loss
from contrastkit.losses.infonce import InfoNCELoss, NTXentLoss, infonce_loss, ntxent_loss


def unit(v):
    return v / v.norm()


def naive_ntxent(x, y, tau):
    """(1/2N) Σ_k [−q_{k,k⁺} + log Σ_{a≠k} exp q_{k,a}] over z = [x; y], one anchor at a time."""
    n = x.shape[0]
    z = [unit(x[i]) for i in range(n)] + [unit(y[i]) for i in range(n)]
    total = 0.0
    for k in range(2 * n):
        partner = k + n if k < n else k - n
        cands = torch.stack([(z[k] * z[a]).sum() / tau for a in range(2 * n) if a != k])
        total = total - (z[k] * z[partner]).sum() / tau + torch.logsumexp(cands, 0)
    return total / (2 * n)


def naive_infonce(x, y, log_scale):
    """(1/N) Σ_i −log softmax_j(s x_i·y_j)[i] with explicit loops."""
    n = x.shape[0]
    s = log_scale.exp()
    total = 0.0
    for i in range(n):
        row = torch.stack([s * (unit(x[i]) * unit(y[j])).sum() for j in range(n)])
        total = total - (row[i] - torch.logsumexp(row, 0))
    return total / n


def rand(n, d, rng, grad=True):
    return torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("n,d", [(2, 3), (3, 5), (7, 4)])
def test_ntxent_matches_naive_values_and_gradients(n, d, rng):
    x, y = rand(n, d, rng), rand(n, d, rng)
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)  # a learnable τ gets a gradient too
    got = ntxent_loss(x, y, tau)
    want = naive_ntxent(x, y, tau)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, y, tau)), torch.autograd.grad(want, (x, y, tau))):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def test_ntxent_default_temperature_is_simclr_0_1(rng):
    x, y = rand(5, 6, rng, False), rand(5, 6, rng, False)
    torch.testing.assert_close(ntxent_loss(x, y), naive_ntxent(x, y, 0.1), rtol=1e-8, atol=0)
    assert NTXentLoss().temperature == 0.1


def test_ntxent_batch_of_one_is_zero_when_allowed_and_an_error_otherwise():
    x, y = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    assert ntxent_loss(x, y, allow_single=True).item() == 0.0
    with pytest.raises(InputError, match="batch of 1 pair"):
        ntxent_loss(x, y)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_ntxent_all_equal_similarities_give_log_2n_minus_1(n):
    v = torch.zeros(n, 4, dtype=torch.float64)
    v[:, 2] = 3.0
    assert ntxent_loss(v, v, 0.1).item() == pytest.approx(math.log(2 * n - 1), abs=1e-12)


def test_ntxent_hand_value_two_orthonormal_pairs():
    # z = [e1, e2, e1, e2], τ = 1: each anchor has its positive at cos 1 and two negatives at 0
    e = torch.eye(2, dtype=torch.float64)
    assert ntxent_loss(e, e, 1.0).item() == pytest.approx(math.log(1 + 2 * math.exp(-1)), abs=1e-14)


def test_ntxent_reductions(rng):
    x, y = rand(4, 3, rng, False), rand(4, 3, rng, False)
    mean = ntxent_loss(x, y, 0.2)
    torch.testing.assert_close(ntxent_loss(x, y, 0.2, reduction="simclr"), 2 * mean, rtol=1e-14, atol=0)
    torch.testing.assert_close(ntxent_loss(x, y, 0.2, reduction="sum"), 8 * mean, rtol=1e-14, atol=0)
    with pytest.raises(ConfigError, match="reduction must be"):
        ntxent_loss(x, y, 0.2, reduction="none")


def test_ntxent_invariances(rng):
    x, y = rand(6, 5, rng, False), rand(6, 5, rng, False)
    base = ntxent_loss(x, y, 0.2)
    p = torch.randperm(6, generator=rng)
    torch.testing.assert_close(ntxent_loss(x[p], y[p], 0.2), base, rtol=1e-12, atol=0)
    torch.testing.assert_close(ntxent_loss(y, x, 0.2), base, rtol=1e-12, atol=0)
    scales = torch.rand(6, 1, generator=rng, dtype=torch.float64) * 5 + 0.1
    torch.testing.assert_close(ntxent_loss(x * scales, y, 0.2), base, rtol=1e-12, atol=0)


def test_ntxent_without_normalisation_uses_raw_dot_products(rng):
    x, y = rand(3, 4, rng, False) * 0.3, rand(3, 4, rng, False) * 0.3
    z = torch.cat([x, y])
    q = z @ z.T / 0.5
    want = 0.0
    for k in range(6):
        others = [q[k, a] for a in range(6) if a != k]
        want += -q[k, (k + 3) % 6] + torch.logsumexp(torch.stack(others), 0)
    assert ntxent_loss(x, y, 0.5, normalize=False).item() == pytest.approx(float(want / 6), rel=1e-12)


@pytest.mark.parametrize("n,d", [(2, 3), (5, 8), (9, 4)])
def test_infonce_matches_naive_values_and_gradients(n, d, rng):
    x, y = rand(n, d, rng), rand(n, d, rng)
    t = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    got = infonce_loss(x, y, t.exp())
    want = naive_infonce(x, y, t)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, y, t)), torch.autograd.grad(want, (x, y, t))):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def test_infonce_is_one_directional(rng):
    x, y = rand(5, 4, rng, False), rand(5, 4, rng, False)
    assert infonce_loss(x, y, 5.0).item() != pytest.approx(infonce_loss(y, x, 5.0).item(), rel=1e-3)
    both = 0.5 * (infonce_loss(x, y, 5.0) + infonce_loss(y, x, 5.0))
    torch.testing.assert_close(both, clip_loss(x, y, 5.0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [2, 6])
def test_symmetric_infonce_equals_clip_loss_values_and_gradients(n, rng):
    x, y = rand(n, 5, rng), rand(n, 5, rng)
    t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    got = infonce_loss(x, y, t.exp(), symmetric=True)
    want = clip_loss(x, y, t.exp())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for a, b in zip(torch.autograd.grad(got, (x, y, t)), torch.autograd.grad(want, (x, y, t))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_infonce_hand_value_and_single_pair():
    e = torch.eye(2, dtype=torch.float64)
    assert infonce_loss(e, e, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-14)
    one = torch.randn(1, 3, dtype=torch.float64)
    assert infonce_loss(one, one, 10.0, allow_single=True).item() == 0.0
    with pytest.raises(InputError, match="batch of 1 pair"):
        infonce_loss(one, one, 10.0)


def test_infonce_module_learnable_and_fixed(rng):
    x, y = rand(4, 3, rng, False), rand(4, 3, rng, False)
    loss = InfoNCELoss()
    assert loss.log_scale.requires_grad
    assert loss.log_values()["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6)
    out = loss(x, y)
    assert out.dtype == torch.float64  # float64 embeddings keep float64 despite the float32 parameter
    want = naive_infonce(x, y, loss.log_scale.detach().double())
    torch.testing.assert_close(out, want, rtol=1e-7, atol=0)
    (g,) = torch.autograd.grad(out, loss.log_scale)
    assert g.abs().item() > 0
    with torch.no_grad():
        loss.log_scale.fill_(10.0)
    loss.after_optimizer_step()
    assert loss.log_scale.item() == pytest.approx(math.log(100), abs=1e-6)
    fixed = InfoNCELoss(init_temperature=0.005, learnable=False)  # s = 200 > max_scale, kept as asked
    fixed.after_optimizer_step()
    assert not fixed.log_scale.requires_grad
    assert fixed.log_values()["logit_scale"] == pytest.approx(200.0, rel=1e-6)


def test_symmetric_module_is_clip_under_the_hood(rng):
    loss = InfoNCELoss(symmetric=True)
    fn, _ = loss.pure()
    assert fn is clip_loss  # so TiledLoss / GatherLoss can dispatch on it
    x, y = torch.randn(6, 8, generator=rng), torch.randn(6, 8, generator=rng)
    torch.testing.assert_close(loss(x, y), CLIPLoss()(x, y))


def test_registry_builds_and_runs_on_float32(rng):
    x, y = torch.randn(8, 16, generator=rng), torch.randn(8, 16, generator=rng)
    nt = LOSSES.build("ntxent", temperature=0.5)
    assert isinstance(nt, NTXentLoss)
    out = nt(x, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ntxent_loss(x.double(), y.double(), 0.5).float())
    inf = LOSSES.build("infonce", init_temperature=0.1, learnable=False)
    torch.testing.assert_close(inf(x, y), infonce_loss(x, y, 10.0), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="does not use"):
        nt(x, y, labels=torch.arange(8))
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        LOSSES.build("ntxent", temperature=0.0)


def test_bfloat16_inputs_are_computed_in_float32(rng):
    x, y = torch.randn(8, 16, generator=rng), torch.randn(8, 16, generator=rng)
    got = ntxent_loss(x.bfloat16(), y.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ntxent_loss(x.bfloat16().float(), y.bfloat16().float()))


@pytest.mark.parametrize("fn", [ntxent_loss, lambda x, y: infonce_loss(x, y, 10.0)])
@pytest.mark.parametrize(
    "x,y,msg",
    [
        (torch.randn(3, 4), torch.randn(4, 4), "batch size mismatch"),
        (torch.randn(3, 4), torch.randn(3, 5), "embedding dimension mismatch"),
        (torch.randn(0, 4), torch.randn(0, 4), "empty batch"),
        (torch.randn(3), torch.randn(3), r"shape \[N, d\]"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), torch.randn(2, 2), "non-finite"),
    ],
)
def test_bad_input_is_a_clear_error(fn, x, y, msg):
    with pytest.raises(InputError, match=msg):
        fn(x, y)


def test_bad_temperature_is_a_clear_error():
    x = torch.randn(3, 4)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        ntxent_loss(x, x, -0.1)
    with pytest.raises(ConfigError, match="scale must be > 0"):
        infonce_loss(x, x, 0.0)
    with pytest.raises(InputError, match="scale must be a scalar"):
        infonce_loss(x, x, torch.ones(2))
