"""Align and Attend's intra-sample contrast and Jigsaw Clustering's loss against naive float64 loops."""

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import InputError
from contrastkit.losses.composite import CompositeLoss
from contrastkit.losses.parts import intra_sample_loss, jigsaw_loss
from contrastkit.losses.supcon import supcon_loss


def naive_intra(x, y, tau, symmetric):
    n, t, _ = x.shape

    def direction(a, b):
        total, count = 0.0, 0
        for i in range(n):
            parts = [k for k in range(t) if a[i, k].abs().sum() > 0 and b[i, k].abs().sum() > 0]
            if len(parts) < 2:
                continue
            for k in parts:
                cos = [(a[i, k] @ b[i, s]) / (a[i, k].norm() * b[i, s].norm()) / tau for s in parts]
                total = total + torch.logsumexp(torch.stack(cos), 0) - cos[parts.index(k)]
                count += 1
        return total / count

    one = direction(x, y)
    return 0.5 * (one + direction(y, x)) if symmetric else one


def _tokens(n=4, t=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, t, d, generator=g, dtype=torch.float64)
    x[0, 3:] = 0  # example 0: parts 0–2 only in x
    y[1, 1:] = 0  # example 1: one shared part only (left out)
    y[2, 4] = 0
    return x.requires_grad_(), y.requires_grad_()


@pytest.mark.parametrize("symmetric", [True, False])
def test_intra_sample_matches_naive_loop(symmetric):
    x, y = _tokens()
    got = intra_sample_loss(x, y, temperature=0.3, symmetric=symmetric)
    want = naive_intra(x, y, 0.3, symmetric)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(want, (x, y))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert torch.isfinite(torch.autograd.grad(intra_sample_loss(x, y), x)[0]).all()


def test_intra_sample_ignores_other_examples_and_errors():
    x, y = _tokens(seed=1)
    base = intra_sample_loss(x, y)
    y2 = y.detach().clone()
    y2[1] = 0  # example 1 had a single shared part: it never counted
    torch.testing.assert_close(intra_sample_loss(x, y2), base)
    with pytest.raises(InputError, match="an example with >= 2 parts"):
        intra_sample_loss(torch.randn(3, 4), torch.randn(3, 4))  # [N, d] = one part per example
    with pytest.raises(InputError, match="aligned token sets of one shape"):
        intra_sample_loss(torch.randn(2, 3, 4), torch.randn(2, 4, 4))
    # as a term next to MaxSim (both read the token sets)
    comp = CompositeLoss(
        {"maxsim": (1.0, losses.build("maxsim")), "intra_sample": (0.5, losses.build("intra_sample"))}
    )
    xf, yf = x.detach().float(), y.detach().float()
    want = losses.build("maxsim")(xf, yf) + 0.5 * intra_sample_loss(xf, yf)
    torch.testing.assert_close(comp(xf, yf), want)


def naive_jigsaw(x, y, w, b, labels, positions, tau, lam):
    clu = supcon_loss(x, y, tau, labels=labels)  # SupCon itself is checked against loops in test_supcon
    views = [x] if y is None else [x, y]
    loc = 0.0
    for v in views:
        for i in range(v.shape[0]):
            logits = w @ v[i] + b
            loc = loc + torch.logsumexp(logits, 0) - logits[positions[i]]
    return clu + lam * loc / (v.shape[0] * len(views))


@pytest.mark.parametrize("two_views", [False, True])
def test_jigsaw_matches_naive_loop(two_views):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True) if two_views else None
    w = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    labels, positions = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 3, 1, 2, 2, 0, 3, 1])
    got = jigsaw_loss(x, y, w, b, labels=labels, positions=positions, temperature=0.5, loc_weight=0.7)
    want = naive_jigsaw(x, y, w, b, labels, positions, 0.5, 0.7)
    ins = [t for t in (x, y, w, b) if t is not None]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, c in zip(torch.autograd.grad(got, ins), torch.autograd.grad(want, ins)):
        torch.testing.assert_close(a, c, rtol=1e-8, atol=1e-10)


def test_jigsaw_module_and_limits():
    loss = losses.build("jigsaw", grid=2)
    x = torch.randn(8, 5)
    labels, positions = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 3, 1, 2, 2, 0, 3, 1])
    value = loss(x, labels=labels, positions=positions)
    assert loss.head.weight.shape == (4, 5)
    want = jigsaw_loss(x, None, loss.head.weight, loss.head.bias, labels=labels, positions=positions)
    torch.testing.assert_close(value, want)
    torch.testing.assert_close(
        loss(x, labels=labels), supcon_loss(x, None, 0.2, labels=labels)
    )  # no positions
    with pytest.raises(InputError, match=r"positions must lie in \[0, G=4\)"):
        loss(x, labels=labels, positions=positions + 4)
