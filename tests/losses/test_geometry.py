"""L-ALIGN, L-UNIFORM, align_uniform and L-CUA / L-CUAXU against naive float64 loops (values and
gradients) and the spec's oracles."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.geometry import (
    AlignmentLoss,
    AlignUniformLoss,
    CUALoss,
    CUAXULoss,
    UniformityLoss,
    align_uniform_loss,
    alignment_loss,
    cross_uniformity,
    cua_loss,
    cuaxu_loss,
    uniformity,
    uniformity_loss,
)


def unit(v):
    return v / v.norm()


def naive_align(x, y, alpha):
    n = x.shape[0]
    return sum(((unit(x[i]) - unit(y[i])) ** 2).sum() ** (alpha / 2) for i in range(n)) / n


def naive_uniform(x, t):
    """log of the mean over the pairs i < j of exp(−t‖x_i − x_j‖²)."""
    n = x.shape[0]
    terms = [
        torch.exp(-t * ((unit(x[i]) - unit(x[j])) ** 2).sum()) for i in range(n) for j in range(i + 1, n)
    ]
    return torch.log(sum(terms) / len(terms))


def naive_xuniform(x, y, t):
    n = x.shape[0]
    terms = [
        torch.exp(-t * ((unit(x[i]) - unit(y[j])) ** 2).sum()) for i in range(n) for j in range(n) if i != j
    ]
    return torch.log(sum(terms) / len(terms))


def naive_clip(x, y, s):
    n = x.shape[0]
    logits = [[s * (unit(x[i]) * unit(y[j])).sum() for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        total = total - (logits[i][i] - torch.logsumexp(torch.stack(logits[i]), 0))
        total = total - (logits[i][i] - torch.logsumexp(torch.stack([logits[k][i] for k in range(n)]), 0))
    return total / (2 * n)


def rand(n, d, rng, grad=True):
    return torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=grad)


def check_grads(got, want, inputs, rtol=1e-7):
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("n", [1, 2, 6])
def test_alignment_matches_naive(alpha, n, rng):
    x, y = rand(n, 4, rng), rand(n, 4, rng)
    check_grads(alignment_loss(x, y, alpha), naive_align(x, y, alpha), (x, y))


@pytest.mark.parametrize("t", [0.5, 2.0])
@pytest.mark.parametrize("n", [2, 3, 7])
def test_uniformity_matches_naive(t, n, rng):
    x, y = rand(n, 4, rng), rand(n, 4, rng)
    check_grads(uniformity(x, t), naive_uniform(x, t), (x,))
    check_grads(uniformity_loss(x, y, t), 0.5 * (naive_uniform(x, t) + naive_uniform(y, t)), (x, y))
    check_grads(cross_uniformity(x, y, t), naive_xuniform(x, y, t), (x, y))


def test_uniformity_oracles():
    e = torch.eye(3, dtype=torch.float64)
    antipodal = torch.stack([e[0], -e[0]])
    assert uniformity(antipodal).item() == pytest.approx(-8.0, abs=1e-12)  # d² = 4, t = 2
    assert uniformity(antipodal, t=0.5).item() == pytest.approx(-2.0, abs=1e-12)
    # regular simplex of 3 points in the plane: pairwise d² = 2n/(n−1) = 3 ⇒ −t·3 = −6
    ang = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
    simplex = torch.stack([ang.cos(), ang.sin()], 1)
    assert uniformity(simplex).item() == pytest.approx(-6.0, abs=1e-12)
    # orthonormal basis (simplex-like, d² = 2 everywhere) ⇒ −4
    assert uniformity(torch.eye(5, dtype=torch.float64)).item() == pytest.approx(-4.0, abs=1e-12)
    same = e[[1, 1, 1, 1]]
    assert uniformity(same).item() == pytest.approx(0.0, abs=1e-12)  # its maximum


def test_alignment_oracles(rng):
    e = torch.eye(3, dtype=torch.float64)
    assert alignment_loss(e, e).item() == pytest.approx(0.0, abs=1e-15)
    assert alignment_loss(e, -e).item() == pytest.approx(4.0, abs=1e-12)
    assert alignment_loss(e, -e, alpha=1.0).item() == pytest.approx(2.0, abs=1e-12)
    x, y = rand(5, 4, rng, False), rand(5, 4, rng, False)
    cos = torch.nn.functional.cosine_similarity(x, y, dim=1)
    assert alignment_loss(x, y).item() == pytest.approx(2 - 2 * cos.mean().item(), abs=1e-12)


def test_alignment_gradient_is_finite_at_aligned_pairs():
    e = torch.eye(3, dtype=torch.float64)
    for alpha in (1.0, 2.0):
        x = e.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(alignment_loss(x, e, alpha), x)
        assert torch.isfinite(g).all()


def test_align_uniform_is_the_weighted_sum(rng):
    x, y = rand(5, 3, rng), rand(5, 3, rng)
    got = align_uniform_loss(x, y, alpha=2.0, t=2.0, lam=0.5)
    want = naive_align(x, y, 2.0) + 0.5 * 0.5 * (naive_uniform(x, 2.0) + naive_uniform(y, 2.0))
    check_grads(got, want, (x, y))
    assert AlignUniformLoss().lam == 1.0


@pytest.mark.parametrize("n", [2, 5])
def test_cua_and_cuaxu_equal_their_independent_components(n, rng):
    x, y = rand(n, 4, rng), rand(n, 4, rng)
    ls = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def parts():
        uni = 0.5 * (naive_uniform(x, 2.0) + naive_uniform(y, 2.0))
        return naive_clip(x, y, ls.exp()) + uni + naive_align(x, y, 2.0)

    check_grads(cua_loss(x, y, ls.exp()), parts(), (x, y, ls))
    check_grads(cuaxu_loss(x, y, ls.exp()), parts() + naive_xuniform(x, y, 2.0), (x, y, ls))


def test_cua_weights_are_configurable(rng):
    x, y = rand(4, 3, rng, False), rand(4, 3, rng, False)
    got = cua_loss(
        x,
        y,
        7.0,
        t=1.0,
        alpha=1.0,
        clip_weight=0.3,
        uniform_weight=2.0,
        align_weight=0.0,
        cross_uniform_weight=0.5,
    )
    want = 0.3 * clip_loss(x, y, 7.0) + 2.0 * uniformity_loss(x, y, 1.0) + 0.5 * cross_uniformity(x, y, 1.0)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    torch.testing.assert_close(cuaxu_loss(x, y, 7.0, cross_uniform_weight=0.0), cua_loss(x, y, 7.0))


def test_cua_modules_scale_init_gradient_and_clamp(rng):
    x, y = torch.randn(6, 8, generator=rng), torch.randn(6, 8, generator=rng)
    for cls, fn in ((CUALoss, cua_loss), (CUAXULoss, cuaxu_loss)):
        loss = cls()
        assert loss.pure()[0] is fn
        assert loss.log_values()["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)
        out = loss(x, y)
        torch.testing.assert_close(out, fn(x, y, 1 / 0.07), rtol=1e-5, atol=1e-6)
        (g,) = torch.autograd.grad(out, loss.log_scale)
        assert g.abs().item() > 0
        with torch.no_grad():
            loss.log_scale.fill_(9.0)
        loss.after_optimizer_step()
        assert loss.log_scale.item() == pytest.approx(math.log(100), abs=1e-6)
    diff = CUAXULoss()(x, y) - CUALoss()(x, y)
    torch.testing.assert_close(diff, cross_uniformity(x, y), rtol=1e-5, atol=1e-6)


def test_invariances(rng):
    x, y = rand(6, 4, rng, False), rand(6, 4, rng, False)
    p = torch.randperm(6, generator=rng)
    for fn in (alignment_loss, uniformity_loss, cross_uniformity, align_uniform_loss):
        base = fn(x, y)
        torch.testing.assert_close(fn(x[p], y[p]), base, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(fn(y, x), base, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(fn(3.0 * x, 0.5 * y), base, rtol=1e-12, atol=1e-14)


def test_without_normalisation_raw_vectors_are_used(rng):
    x, y = rand(4, 3, rng, False), rand(4, 3, rng, False)
    want_a = sum(((x[i] - y[i]) ** 2).sum() for i in range(4)) / 4
    assert alignment_loss(x, y, normalize=False).item() == pytest.approx(want_a.item(), rel=1e-12)
    d2 = [((x[i] - x[j]) ** 2).sum() for i in range(4) for j in range(i + 1, 4)]
    want_u = math.log(sum(math.exp(-2 * v.item()) for v in d2) / 6)
    assert uniformity(x, normalize=False).item() == pytest.approx(want_u, rel=1e-10)


def test_registry_builds_and_runs_on_float32(rng):
    x, y = torch.randn(8, 16, generator=rng), torch.randn(8, 16, generator=rng)
    xd, yd = x.double(), y.double()
    cases = [
        ("alignment", AlignmentLoss, {"alpha": 1.0}, alignment_loss(xd, yd, 1.0)),
        ("uniformity", UniformityLoss, {"t": 3.0}, uniformity_loss(xd, yd, 3.0)),
        ("align_uniform", AlignUniformLoss, {"lam": 2.0}, align_uniform_loss(xd, yd, lam=2.0)),
        ("cua", CUALoss, {"init_temperature": 0.1}, cua_loss(xd, yd, 10.0)),
        ("cuaxu", CUAXULoss, {"init_temperature": 0.1}, cuaxu_loss(xd, yd, 10.0)),
    ]
    for name, cls, params, want in cases:
        loss = LOSSES.build(name, **params)
        assert isinstance(loss, cls)
        out = loss(x, y)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
        with pytest.raises(InputError, match="does not use"):
            loss(x, y, labels=torch.arange(8))


def test_bad_input_is_a_clear_error():
    one = torch.randn(1, 3)
    for fn in (uniformity_loss, cross_uniformity, align_uniform_loss):
        with pytest.raises(InputError, match="needs N >= 2"):
            fn(one, one)
    with pytest.raises(InputError, match="needs N >= 2"):
        uniformity(one)
    with pytest.raises(InputError, match="batch of 1 pair"):
        cua_loss(one, one, 10.0)
    assert alignment_loss(one, one).item() == pytest.approx(0.0, abs=1e-6)  # N = 1 is fine here
    with pytest.raises(InputError, match="batch size mismatch"):
        alignment_loss(torch.randn(3, 3), torch.randn(2, 3))
    with pytest.raises(InputError, match="empty batch"):
        uniformity(torch.randn(0, 3))
    with pytest.raises(InputError, match="non-finite"):
        uniformity_loss(torch.full((2, 3), float("nan")), torch.randn(2, 3))
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        alignment_loss(torch.randn(3, 3), torch.randn(3, 3), alpha=0.0)
    with pytest.raises(ConfigError, match="t must be > 0"):
        LOSSES.build("uniformity", t=-1.0)
    with pytest.raises(ConfigError, match="max_scale must be >= 1"):
        CUALoss(max_scale=0.5)


def test_log_mean_exp_offdiag_hand_written_backward_passes_gradcheck():
    from contrastkit.losses.geometry import log_mean_exp_offdiag

    g = torch.Generator().manual_seed(5)
    a = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, v: log_mean_exp_offdiag(u, v, 0.7), (a, b))
    assert torch.autograd.gradcheck(lambda u: log_mean_exp_offdiag(u, u, 1.3), (a,))
    # a set against itself: the same value as passing an equal copy (the cross form)
    torch.testing.assert_close(log_mean_exp_offdiag(a, a, 2.0), log_mean_exp_offdiag(a, a.clone(), 2.0))
