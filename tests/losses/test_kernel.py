"""Kernel-InfoNCE and L-DECUNIF against naive float64 loops (values and gradients) and their oracles."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.kernel import (
    DecoupledUniformityLoss,
    KernelInfoNCELoss,
    decoupled_uniformity_loss,
    kernel_infonce_loss,
)


def units(v):
    return [v[i] / v[i].norm() for i in range(v.shape[0])]


def naive_kernel(xs, ys, gamma, tau, layout):
    """Reference ``gamma_loss`` written per anchor: −log k(a, a⁺) / Σ_{b≠a} k(a, b)."""
    n = len(xs)
    if layout == "cross":
        total = 0.0
        for rows, cols in ((xs, ys), (ys, xs)):
            for i in range(n):
                logits = torch.stack([-((rows[i] - cols[j]).norm() ** gamma) / tau for j in range(n)])
                total = total - (logits[i] - torch.logsumexp(logits, 0)) / n
        return total / 2
    z = xs + ys
    total = 0.0
    for a in range(2 * n):
        others = [b for b in range(2 * n) if b != a]
        logits = torch.stack([-((z[a] - z[b]).norm() ** gamma) / tau for b in others])
        pos = others.index((a + n) % (2 * n))
        total = total - (logits[pos] - torch.logsumexp(logits, 0))
    return total / (2 * n)


def naive_kernel_infonce(x, y, gamma=2.0, tau=0.1, layout="views", mixture=None, lam=0.5):
    xs, ys = units(x), units(y)
    if mixture is None:
        return naive_kernel(xs, ys, gamma, tau, layout)
    if mixture == "sum":
        return lam * naive_kernel(xs, ys, gamma, tau, layout) + (1 - lam) * naive_kernel(
            xs, ys, 2.0, tau, layout
        )
    h = x.shape[1] // 2
    first = naive_kernel([v[:h] for v in xs], [v[:h] for v in ys], gamma, tau, layout)
    second = naive_kernel([v[h:] for v in xs], [v[h:] for v in ys], 2.0, tau, layout)
    return lam * first + (1 - lam) * second


def pair(rng, n, d, grad=True):
    x = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=grad)
    y = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=grad)
    return x, y


def assert_same(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------------ Kernel-InfoNCE
@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.5])
@pytest.mark.parametrize("layout", ["views", "cross"])
@pytest.mark.parametrize("n,d", [(2, 3), (5, 4), (8, 6)])
def test_kernel_infonce_matches_naive(gamma, layout, n, d, rng):
    x, y = pair(rng, n, d)
    got = kernel_infonce_loss(x, y, gamma=gamma, temperature=0.3, layout=layout)
    assert_same(got, naive_kernel_infonce(x, y, gamma, 0.3, layout), (x, y))


@pytest.mark.parametrize("mixture", ["sum", "concat"])
@pytest.mark.parametrize("layout", ["views", "cross"])
def test_kernel_mixtures_match_naive(mixture, layout, rng):
    x, y = pair(rng, 6, 7)
    got = kernel_infonce_loss(
        x, y, gamma=1.0, temperature=0.2, layout=layout, mixture=mixture, mix_weight=0.3
    )
    assert_same(got, naive_kernel_infonce(x, y, 1.0, 0.2, layout, mixture, 0.3), (x, y))


def test_gaussian_kernel_is_ntxent_at_half_temperature(rng):
    """‖a−b‖² = 2 − 2a·b on the sphere: γ = 2 is NT-Xent (views) / CLIP (cross) at τ/2."""
    x, y = pair(rng, 6, 5, grad=False)
    z = F.normalize(torch.cat([x, y]), dim=1)
    logits = (z @ z.T / 0.05).fill_diagonal_(float("-inf"))
    ntxent = F.cross_entropy(logits, torch.arange(12).roll(6))
    torch.testing.assert_close(kernel_infonce_loss(x, y, temperature=0.1), ntxent, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        kernel_infonce_loss(x, y, temperature=0.1, layout="cross"), clip_loss(x, y, 20.0), rtol=1e-10, atol=0
    )


def test_mixture_weights_at_the_ends(rng):
    x, y = pair(rng, 5, 6, grad=False)
    plain = kernel_infonce_loss(x, y, gamma=0.5)
    torch.testing.assert_close(kernel_infonce_loss(x, y, gamma=0.5, mixture="sum", mix_weight=1.0), plain)
    torch.testing.assert_close(
        kernel_infonce_loss(x, y, gamma=0.5, mixture="sum", mix_weight=0.0), kernel_infonce_loss(x, y)
    )


def test_laplacian_gradient_finite_at_coincident_positives(rng):
    x = torch.randn(4, 3, generator=rng, dtype=torch.float64, requires_grad=True)
    loss = kernel_infonce_loss(x, x.detach().clone(), gamma=0.5)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


@pytest.mark.parametrize("layout", ["views", "cross"])
def test_kernel_permutation_and_scale_invariance(layout, rng):
    x, y = pair(rng, 7, 5, grad=False)
    base = kernel_infonce_loss(x, y, gamma=1.0, layout=layout)
    p = torch.randperm(7, generator=rng)
    torch.testing.assert_close(kernel_infonce_loss(x[p], y[p], gamma=1.0, layout=layout), base)
    torch.testing.assert_close(kernel_infonce_loss(4 * x, 0.1 * y, gamma=1.0, layout=layout), base)


def test_kernel_batch_of_one():
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(InputError, match="batch of 1 pair"):
        kernel_infonce_loss(x, x)
    loss = kernel_infonce_loss(x, torch.randn(1, 4, dtype=torch.float64), allow_single=True)
    assert loss.item() == pytest.approx(0.0, abs=1e-15)
    assert torch.isfinite(torch.autograd.grad(loss, x)[0]).all()


def test_kernel_bad_config_and_input():
    x = torch.randn(3, 4)
    with pytest.raises(ConfigError, match="gamma must lie"):
        kernel_infonce_loss(x, x, gamma=3.0)
    with pytest.raises(ConfigError, match="layout must be"):
        kernel_infonce_loss(x, x, layout="ring")
    with pytest.raises(ConfigError, match="mixture must be"):
        KernelInfoNCELoss(mixture="product")
    with pytest.raises(ConfigError, match="mix_weight"):
        kernel_infonce_loss(x, x, mixture="sum", mix_weight=1.5)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        kernel_infonce_loss(x, x, temperature=-1.0)
    with pytest.raises(InputError, match="d >= 2"):
        kernel_infonce_loss(torch.randn(3, 1), torch.randn(3, 1), mixture="concat")
    with pytest.raises(InputError, match="embedding dimension mismatch"):
        kernel_infonce_loss(x, torch.randn(3, 5))


# ------------------------------------------------------------------------------ decoupled uniformity
def naive_decunif(x, y, t=2.0, k=None, lam=0.01):
    n = x.shape[0]
    mu = torch.stack([(a + b) / 2 for a, b in zip(units(x), units(y))])
    if k is not None:
        alpha = torch.linalg.inv(k + lam * torch.eye(n, dtype=k.dtype)) @ k
        mu = alpha @ mu
    terms = [torch.exp(-t * (mu[i] - mu[j]).norm() ** 2) for i in range(n) for j in range(i + 1, n)]
    return torch.log(sum(terms) / len(terms))


def rbf(g, sigma):
    n = g.shape[0]
    return torch.tensor(
        [
            [math.exp(-(float((g[i] - g[j]).norm()) ** 2) / (2 * sigma**2)) for j in range(n)]
            for i in range(n)
        ],
        dtype=torch.float64,
    )


@pytest.mark.parametrize("n,d", [(2, 3), (5, 4), (9, 6)])
def test_decunif_matches_naive_without_prior(n, d, rng):
    x, y = pair(rng, n, d)
    assert_same(decoupled_uniformity_loss(x, y, t=1.5), naive_decunif(x, y, t=1.5), (x, y))


@pytest.mark.parametrize("n", [3, 7])
def test_decunif_with_prior_features_and_kernel_matrix(n, rng):
    x, y = pair(rng, n, 4)
    g = torch.randn(n, 3, generator=rng, dtype=torch.float64)
    k = rbf(g, 1.3)
    want = naive_decunif(x, y, k=k, lam=0.1)
    assert_same(decoupled_uniformity_loss(x, y, prior=g, sigma=1.3, lam=0.1), want, (x, y))
    want = naive_decunif(x, y, k=k, lam=0.1)
    assert_same(decoupled_uniformity_loss(x, y, weights=k, lam=0.1), want, (x, y))
    gn = F.normalize(g, dim=1)
    want_cos = naive_decunif(x, y, k=gn @ gn.T, lam=0.1)
    assert_same(decoupled_uniformity_loss(x, y, prior=g, kernel="cosine", lam=0.1), want_cos, (x, y))
    # 1-D prior (e.g. a weak scalar attribute) and the reference default λ = 1/√N
    a = torch.randn(n, generator=rng, dtype=torch.float64)
    want_1d = naive_decunif(x, y, k=rbf(a[:, None], 0.7), lam=1 / math.sqrt(n))
    assert_same(decoupled_uniformity_loss(x, y, prior=a, sigma=0.7, lam=None), want_1d, (x, y))


def test_decunif_equal_views_is_uniformity(rng):
    """Spec oracle: one view (x = y) and no prior ⇒ L-UNIFORM, log mean_{i<j} exp(−t‖x̂_i − x̂_j‖²)."""
    x = torch.randn(8, 5, generator=rng, dtype=torch.float64)
    uniform = torch.pdist(F.normalize(x, dim=1)).pow(2).mul(-2.0).exp().mean().log()
    torch.testing.assert_close(decoupled_uniformity_loss(x, x), uniform, rtol=1e-10, atol=0)


def test_decunif_vanishing_ridge_gives_no_prior_value_and_alpha_has_no_gradient(rng):
    x, y = pair(rng, 6, 4)
    b = torch.randn(6, 6, generator=rng, dtype=torch.float64)
    k = (b @ b.T + 6 * torch.eye(6, dtype=torch.float64)).requires_grad_(True)  # invertible
    got = decoupled_uniformity_loss(x, y, weights=k, lam=1e-10)
    torch.testing.assert_close(got, decoupled_uniformity_loss(x, y), rtol=1e-7, atol=0)
    (gk,) = torch.autograd.grad(got, k, allow_unused=True)
    assert gk is None
    # identity prior: α = I/(1 + λ), the centroids shrink by 1/(1 + λ)
    lam = 0.5
    xs, ys = x.detach(), y.detach()
    mu = (F.normalize(xs, dim=1) + F.normalize(ys, dim=1)) / 2 / (1 + lam)
    want = torch.pdist(mu).pow(2).mul(-2.0).exp().mean().log()
    got_eye = decoupled_uniformity_loss(xs, ys, weights=torch.eye(6, dtype=torch.float64), lam=lam)
    torch.testing.assert_close(got_eye, want, rtol=1e-10, atol=0)


def test_decunif_permutation_and_scale_invariance(rng):
    x, y = pair(rng, 7, 4, grad=False)
    g = torch.randn(7, 2, generator=rng, dtype=torch.float64)
    base = decoupled_uniformity_loss(x, y, prior=g, sigma=1.0)
    p = torch.randperm(7, generator=rng)
    torch.testing.assert_close(decoupled_uniformity_loss(x[p], y[p], prior=g[p], sigma=1.0), base)
    torch.testing.assert_close(decoupled_uniformity_loss(3 * x, 0.2 * y, prior=g, sigma=1.0), base)


def test_decunif_bad_input_and_config():
    x = torch.randn(4, 3)
    with pytest.raises(InputError, match="N >= 2"):
        decoupled_uniformity_loss(x[:1], x[:1])
    with pytest.raises(InputError, match="not both"):
        decoupled_uniformity_loss(x, x, weights=torch.eye(4), prior=torch.randn(4), sigma=1.0)
    with pytest.raises(InputError, match=r"weights \(prior kernel K\) must have shape"):
        decoupled_uniformity_loss(x, x, weights=torch.eye(3))
    with pytest.raises(InputError, match="prior must have shape"):
        decoupled_uniformity_loss(x, x, prior=torch.randn(5, 2), sigma=1.0)
    with pytest.raises(ConfigError, match="needs sigma"):
        decoupled_uniformity_loss(x, x, prior=torch.randn(4, 2))
    with pytest.raises(ConfigError, match="kernel must be"):
        DecoupledUniformityLoss(kernel="poly")
    with pytest.raises(InputError, match="non-finite"):
        decoupled_uniformity_loss(x, x, prior=torch.full((4,), float("inf")), sigma=1.0)


# ------------------------------------------------------------------------------------------ registry
def test_registry_modules_run_float32(rng):
    x = torch.randn(8, 6, generator=rng, requires_grad=True)
    y = torch.randn(8, 6, generator=rng)
    ki = LOSSES.build("kernel_infonce", gamma=1.0, mixture="sum")
    assert isinstance(ki, KernelInfoNCELoss)
    du = LOSSES.build("decoupled_uniformity", sigma=1.0)
    assert isinstance(du, DecoupledUniformityLoss)
    for value in (ki(x, y), du(x, y, prior=torch.randn(8, 3, generator=rng)), du(x, y, weights=torch.eye(8))):
        assert value.dtype == torch.float32 and torch.isfinite(value)
        (g,) = torch.autograd.grad(value, x)
        assert torch.isfinite(g).all()
    fn, kwargs = ki.pure()
    torch.testing.assert_close(fn(x, y, **kwargs), ki(x, y))
    with pytest.raises(InputError, match="does not use"):
        ki(x, y, labels=torch.arange(8))


def test_half_precision_inputs_are_computed_in_float32(rng):
    x, y = torch.randn(6, 8, generator=rng).bfloat16(), torch.randn(6, 8, generator=rng).bfloat16()
    for fn in (kernel_infonce_loss, decoupled_uniformity_loss):
        got = fn(x, y)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, fn(x.float(), y.float()))
