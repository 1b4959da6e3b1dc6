"""L-MACL against naive per-row loops (values and gradients), the spec's oracles and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.macl import MACLLoss, macl_loss


def unit(v):
    return v / v.norm()


def naive_macl(x, y, variant="linear", tau0=0.1, coef=None, a0=0.0, symmetric=False):
    """The official core (exp/linear) and lightly's 2N form, one anchor at a time."""
    n = x.shape[0]
    xs, ys = [unit(x[i]) for i in range(n)], [unit(y[i]) for i in range(n)]
    a = sum(float((xs[i] @ ys[i]).detach()) for i in range(n)) / n  # a float: no gradient path
    if variant == "exp":
        tau = tau0 * (2.0 if coef is None else coef) ** a
    elif variant == "linear":
        tau = tau0 * (1 + (1.0 if coef is None else coef) * a)
    else:
        tau = tau0 * (1 + (0.5 if coef is None else coef) * (a - a0))

    def one_direction(anc, cand):
        total = 0.0
        for i in range(n):
            p = torch.softmax(torch.stack([anc[i] @ cand[j] / tau for j in range(n)]), 0)
            w = 1.0 / (sum((p[j] for j in range(n) if j != i), torch.zeros((), dtype=x.dtype)) + 1e-8)
            total = total - w.detach() * torch.log(p[i])
        return total / n

    if variant == "lightly":
        z = xs + ys
        total = 0.0
        for k in range(2 * n):
            partner = (k + n) % (2 * n)
            others = [partner] + [m for m in range(2 * n) if m not in (k, partner)]
            p = torch.softmax(torch.stack([z[k] @ z[m] / tau for m in others]), 0)
            v = 1.0 / (1.0 - p[0] + 1e-8)
            total = total - v.detach() * torch.log(p[0])
        return total / (2 * n)
    loss = one_direction(xs, ys)
    return 0.5 * (loss + one_direction(ys, xs)) if symmetric else loss


def randn(rng, *shape, grad=True):
    return torch.randn(*shape, generator=rng, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize(
    "variant,symmetric", [("linear", False), ("exp", False), ("lightly", False), ("linear", True)]
)
@pytest.mark.parametrize("n,d", [(2, 3), (5, 4), (9, 6)])
def test_matches_naive_values_and_gradients(variant, symmetric, n, d, rng):
    x, y = randn(rng, n, d), randn(rng, n, d)
    got = macl_loss(x, y, variant=variant, symmetric=symmetric)
    want = naive_macl(x, y, variant, symmetric=symmetric)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(want, (x, y))):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("variant", ["exp", "linear", "lightly"])
def test_non_default_coefficients(variant, rng):
    x, y = randn(rng, 6, 5), randn(rng, 6, 5)
    got = macl_loss(x, y, variant=variant, temperature=0.3, coef=0.7, a0=0.2)
    want = naive_macl(x, y, variant, tau0=0.3, coef=0.7, a0=0.2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("variant", ["exp", "linear", "lightly"])
def test_batch_of_one(variant):
    x, y = torch.randn(1, 4, dtype=torch.float64, requires_grad=True), torch.randn(1, 4, dtype=torch.float64)
    with pytest.raises(InputError, match="batch of 1 pair"):
        macl_loss(x, y, variant=variant)
    loss = macl_loss(x, y, variant=variant, allow_single=True)
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(g).all() and g.abs().max() < 1e-6


def test_beta_zero_is_fixed_temperature_reweighted_ce(rng):
    """Spec oracle: β = 0 ⇒ τ = τ₀ and the gradient is W_i × the CE gradient with W constant; W ≥ 1."""
    x, y = randn(rng, 7, 5), randn(rng, 7, 5)
    got = macl_loss(x, y, variant="linear", coef=0.0, temperature=0.2)
    logits = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T / 0.2
    ce = F.cross_entropy(logits, torch.arange(7), reduction="none")
    with torch.no_grad():
        p = torch.softmax(logits, 1)
        w = 1.0 / (1.0 - p.diagonal() + 1e-8)
    assert bool((w >= 1).all())
    want = (w * ce).mean()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    for a, b in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(want, (x, y))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_exp_with_base_one_equals_linear_with_beta_zero(rng):
    x, y = randn(rng, 5, 3, grad=False), randn(rng, 5, 3, grad=False)
    torch.testing.assert_close(
        macl_loss(x, y, variant="exp", coef=1.0),
        macl_loss(x, y, variant="linear", coef=0.0),
        rtol=1e-12,
        atol=0,
    )


@pytest.mark.parametrize("variant", ["exp", "linear", "lightly"])
def test_alignment_has_no_gradient_path(variant, rng):
    """Same value and gradients as a fixed temperature set to the adaptive τ_A of this batch."""
    x, y = randn(rng, 6, 4), randn(rng, 6, 4)
    a = float((F.normalize(x, dim=1) * F.normalize(y, dim=1)).sum(1).mean().detach())
    tau = {"exp": 0.1 * 2.0**a, "linear": 0.1 * (1 + a), "lightly": 0.1 * (1 + 0.5 * a)}[variant]
    got = macl_loss(x, y, variant=variant)
    fixed = macl_loss(
        x, y, variant="lightly" if variant == "lightly" else "linear", coef=0.0, temperature=tau
    )
    torch.testing.assert_close(got, fixed, rtol=1e-10, atol=0)
    for g, f in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(fixed, (x, y))):
        torch.testing.assert_close(g, f, rtol=1e-9, atol=1e-12)


def test_hand_computed_two_orthonormal_pairs():
    """x = y = I₂: A = 1, τ = 0.1·2 = 0.2, P_ii = e^5/(e^5 + 1), W = 1 + e^5 (up to the 1e-8 guard)."""
    e = torch.eye(2, dtype=torch.float64)
    p = math.exp(5) / (math.exp(5) + 1)
    want = -math.log(p) / (1 - p + 1e-8)
    assert macl_loss(e, e).item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("variant", ["exp", "linear", "lightly"])
def test_permutation_and_scale_invariance(variant, rng):
    x, y = randn(rng, 8, 5, grad=False), randn(rng, 8, 5, grad=False)
    base = macl_loss(x, y, variant=variant)
    p = torch.randperm(8, generator=rng)
    torch.testing.assert_close(macl_loss(x[p], y[p], variant=variant), base, rtol=1e-10, atol=0)
    torch.testing.assert_close(macl_loss(3.0 * x, 0.5 * y, variant=variant), base, rtol=1e-10, atol=0)


def test_bad_input_and_config_are_clear_errors():
    x = torch.randn(3, 4)
    with pytest.raises(ConfigError, match="variant must be one of"):
        macl_loss(x, x, variant="cubic")
    with pytest.raises(ConfigError, match="already uses both views"):
        macl_loss(x, x, variant="lightly", symmetric=True)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        MACLLoss(temperature=0.0)
    with pytest.raises(InputError, match="batch size mismatch"):
        macl_loss(x, torch.randn(2, 4))
    with pytest.raises(InputError, match="non-finite"):
        macl_loss(torch.full((3, 4), float("nan")), x)
    with pytest.raises(InputError, match="adaptive temperature"):
        macl_loss(x, -x, coef=2.0)  # A = −1 ⇒ τ₀(1 + 2A) = −τ₀


def test_registry_builds_and_runs_float32(rng):
    loss = LOSSES.build("macl", variant="exp")
    assert isinstance(loss, MACLLoss)
    x = torch.randn(16, 8, generator=rng, requires_grad=True)
    value = loss(x, torch.randn(16, 8, generator=rng))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(x.grad).all()
    fn, kwargs = loss.pure()
    assert fn is macl_loss and kwargs["variant"] == "exp"
    with pytest.raises(InputError, match="does not use"):
        loss(x, x, labels=torch.arange(16))


@pytest.mark.parametrize("variant", ["exp", "linear", "lightly"])
def test_half_precision_inputs_are_computed_in_float32(variant, rng):
    x, y = torch.randn(6, 8, generator=rng).bfloat16(), torch.randn(6, 8, generator=rng).bfloat16()
    got = macl_loss(x, y, variant=variant)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, macl_loss(x.float(), y.float(), variant=variant))
