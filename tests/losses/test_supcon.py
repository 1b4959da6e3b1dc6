"""L-SUPCON against naive float64 loops for L_out and L_in (values and gradients) and the spec's oracles."""

import math
import warnings

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.infonce import ntxent_loss
from contrastkit.losses.supcon import SupConLoss, supcon_loss


def naive_supcon(views, groups, tau, variant="out", zero_positive="ignore", base=None, relu=False):
    """Spec formula, one anchor at a time. ``views``: list of [N, d]; ``groups``: [N] positive ids."""
    z, g = [], []
    for v in views:
        for i in range(v.shape[0]):
            row = torch.relu(v[i]) if relu else v[i]
            z.append(row / row.norm().clamp_min(1e-12))
            g.append(int(groups[i]))
    m = len(z)
    terms, n_valid = [], 0
    for i in range(m):
        others = [a for a in range(m) if a != i]
        positives = [p for p in others if g[p] == g[i]]
        if not positives:
            terms.append(torch.zeros((), dtype=torch.float64))
            continue
        n_valid += 1
        lse = torch.logsumexp(torch.stack([(z[i] * z[a]).sum() / tau for a in others]), 0)
        logp = [(z[i] * z[p]).sum() / tau - lse for p in positives]
        if variant == "out":
            terms.append(-sum(logp) / len(positives))
        else:
            terms.append(-torch.log(sum(torch.exp(lp) for lp in logp) / len(positives)))
    factor = 1.0 if base is None else tau / base
    denom = m if zero_positive == "zero" else max(n_valid, 1)
    return factor * sum(terms) / denom


def rand(n, d, rng, grad=True):
    return torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize(
    "labels", [[0], [0, 1], [0, 1, 0, 2, 1], [3, 3, 1, 3, 0, 1, 1, 0]], ids=["n1", "n2", "n5", "n8"]
)
def test_matches_naive_values_and_gradients_two_views(variant, labels, rng):
    n = len(labels)
    lab = torch.tensor(labels)
    x, y = rand(n, 4, rng), rand(n, 4, rng)
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    got = supcon_loss(x, y, tau, labels=lab, variant=variant)
    want = naive_supcon([x, y], lab, tau, variant)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, y, tau)), torch.autograd.grad(want, (x, y, tau))):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("zero_positive", ["ignore", "zero"])
def test_single_view_with_singletons_matches_naive(variant, zero_positive, rng):
    lab = torch.tensor([0, 1, 1, 2, 0, 0, 5])  # classes 2 and 5 have no positive with one view
    x = rand(7, 3, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = supcon_loss(x, None, 0.3, labels=lab, variant=variant, zero_positive=zero_positive)
    want = naive_supcon([x], lab, 0.3, variant, zero_positive)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
    (ga,) = torch.autograd.grad(got, x)
    (gb,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(ga, gb, rtol=1e-7, atol=1e-12)
    assert torch.isfinite(ga).all()


@pytest.mark.parametrize("n", [1, 2, 6])
def test_no_labels_and_distinct_labels_equal_ntxent(n, rng):
    x, y = rand(n, 5, rng), rand(n, 5, rng)
    for labels in (None, torch.randperm(n, generator=rng) * 3 + 7):
        want = ntxent_loss(x, y, 0.1, allow_single=True)
        got = supcon_loss(x, y, 0.1, labels=labels)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        for a, b in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(want, (x, y))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
        # every |P(i)| = 1 ⇒ L_in == L_out
        torch.testing.assert_close(supcon_loss(x, y, 0.1, labels=labels, variant="in"), got)


def test_jensen_l_in_is_at_most_l_out(rng):
    for _ in range(5):
        lab = torch.randint(0, 3, (9,), generator=rng)
        x, y = rand(9, 4, rng, False), rand(9, 4, rng, False)
        l_in = supcon_loss(x, y, 0.1, labels=lab, variant="in").item()
        l_out = supcon_loss(x, y, 0.1, labels=lab, variant="out").item()
        assert l_in < l_out  # strict: classes with ≥ 2 members give |P(i)| ≥ 3 unequal terms


def test_zero_positive_hand_computed_reference_case():
    # labels [0, 1, 1, 2], one view, τ = 1; z = e1, e2, e2, −e1. Anchors 0 and 3 have no positive.
    # Anchors 1, 2: candidates at cos (0, 1, 0) → ℓ = log(2 + e) − 1.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    lab = torch.tensor([0, 1, 1, 2])
    ell = math.log(2 + math.e) - 1
    ref = supcon_loss(z, None, 1.0, labels=lab, zero_positive="zero")
    assert ref.item() == pytest.approx(ell / 2, abs=1e-14)  # (0 + ℓ + ℓ + 0) / 4
    with pytest.warns(RuntimeWarning, match="2 of 4 anchors have no positive"):
        ignored = supcon_loss(z, None, 1.0, labels=lab)
    assert ignored.item() == pytest.approx(ell, abs=1e-14)  # mean over the 2 anchors with positives


def test_no_anchor_with_a_positive_gives_zero_with_warning_and_zero_gradient(rng):
    x = rand(4, 3, rng)
    with pytest.warns(RuntimeWarning, match="4 of 4 anchors"):
        out = supcon_loss(x, None, 0.1, labels=torch.arange(4))
    assert out.item() == 0.0
    (g,) = torch.autograd.grad(out, x)
    assert torch.equal(g, torch.zeros_like(g))


def test_base_temperature_factor(rng):
    lab = torch.tensor([0, 0, 1, 1, 2])
    x, y = rand(5, 4, rng, False), rand(5, 4, rng, False)
    plain = supcon_loss(x, y, 0.1, labels=lab)
    torch.testing.assert_close(supcon_loss(x, y, 0.1, labels=lab, base_temperature=0.1), plain)
    ref = supcon_loss(x, y, 0.1, labels=lab, base_temperature=0.07)  # reference code's quirk
    torch.testing.assert_close(ref, plain * (0.1 / 0.07), rtol=1e-14, atol=0)
    torch.testing.assert_close(ref, naive_supcon([x, y], lab, 0.1, base=0.07), rtol=1e-8, atol=0)


def test_relu_head(rng):
    lab = torch.tensor([0, 1, 0, 1, 2])
    x, y = rand(5, 6, rng), rand(5, 6, rng)
    got = supcon_loss(x, y, 0.1, labels=lab, relu_head=True)
    want = naive_supcon([x, y], lab, 0.1, relu=True)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
    gx, gy = torch.autograd.grad(got, (x, y))
    for a, b in zip((gx, gy), torch.autograd.grad(want, (x, y))):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
    assert torch.all(gx[x.detach() < 0] == 0)  # negative coordinates are cut by the ReLU
    assert abs(got.item() - supcon_loss(x, y, 0.1, labels=lab).item()) > 1e-3
    pos_x, pos_y = x.detach().abs(), y.detach().abs()  # on non-negative inputs ReLU changes nothing
    torch.testing.assert_close(
        supcon_loss(pos_x, pos_y, 0.1, labels=lab, relu_head=True), supcon_loss(pos_x, pos_y, 0.1, labels=lab)
    )


def test_invariances(rng):
    lab = torch.tensor([4, 1, 4, 1, 0, 4])
    x, y = rand(6, 5, rng, False), rand(6, 5, rng, False)
    base = supcon_loss(x, y, 0.1, labels=lab)
    relabel = torch.tensor([2, 0, 0, 0, 1])[lab]  # 4→1, 1→0, 0→2: a permutation of class ids
    torch.testing.assert_close(supcon_loss(x, y, 0.1, labels=relabel), base, rtol=1e-13, atol=0)
    p = torch.randperm(6, generator=rng)
    torch.testing.assert_close(supcon_loss(x[p], y[p], 0.1, labels=lab[p]), base, rtol=1e-12, atol=0)
    torch.testing.assert_close(supcon_loss(y, x, 0.1, labels=lab), base, rtol=1e-12, atol=0)
    torch.testing.assert_close(supcon_loss(3.0 * x, y, 0.1, labels=lab), base, rtol=1e-12, atol=0)


def test_module_registry_and_labels_field(rng):
    loss = LOSSES.build("supcon", temperature=0.2, variant="in")
    assert isinstance(loss, SupConLoss) and loss.accepts == frozenset({"labels"})
    x, y = torch.randn(8, 16, generator=rng), torch.randn(8, 16, generator=rng)
    lab = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    out = loss(x, y, labels=lab)
    assert out.dtype == torch.float32
    want = naive_supcon([x.double(), y.double()], lab, 0.2, "in")
    assert out.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(LOSSES.build("supcon")(x, y), ntxent_loss(x, y, 0.1))  # labels optional
    with pytest.raises(InputError, match="does not use"):
        loss(x, y, weights=torch.ones(8, 8))


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"labels": torch.zeros(3, dtype=torch.long)}, r"labels must have shape \[N\]"),
        ({"labels": torch.zeros(4, 1, dtype=torch.long)}, r"labels must have shape \[N\]"),
        ({"labels": torch.zeros(4)}, "labels must be an integer tensor"),
    ],
)
def test_bad_labels_are_a_clear_error(kwargs, msg):
    with pytest.raises(InputError, match=msg):
        supcon_loss(torch.randn(4, 3), torch.randn(4, 3), **kwargs)


def test_bad_input_and_config_are_clear_errors():
    x = torch.randn(4, 3)
    with pytest.raises(InputError, match="needs labels"):
        supcon_loss(x, None)
    with pytest.raises(InputError, match="batch size mismatch"):
        supcon_loss(x, torch.randn(5, 3))
    with pytest.raises(InputError, match="non-finite"):
        supcon_loss(x, torch.full((4, 3), float("inf")))
    with pytest.raises(InputError, match="empty batch"):
        supcon_loss(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(ConfigError, match="variant must be"):
        supcon_loss(x, x, variant="both")
    with pytest.raises(ConfigError, match="zero_positive must be"):
        SupConLoss(zero_positive="drop")
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        supcon_loss(x, x, 0.0)
