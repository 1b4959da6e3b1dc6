"""PromCSE (energy-based hinge) and the spurious-attribute CLIP loss against naive float64 loops."""

import math

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import InputError
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.composite import CompositeLoss
from contrastkit.losses.extra_negatives import energy_hinge_loss, promcse_loss, spurious_clip_loss


def cos(a, b):
    return (a @ b) / (a.norm() * b.norm())


def naive_promcse(x, y, negs, tau, m, lam, w):
    n = x.shape[0]
    k = 0 if negs is None else negs.shape[1]
    nce, eh = 0.0, 0.0
    for i in range(n):
        logits = [cos(x[i], y[j]) / tau for j in range(n)]
        logits += [cos(x[i], negs[j, kk]) / tau + (w if j == i else 0.0) for j in range(n) for kk in range(k)]
        nce = nce + torch.logsumexp(torch.stack(logits), 0) - logits[i]
        cands = [cos(x[i], y[j]) for j in range(n) if j != i]
        cands += [cos(x[i], negs[j, kk]) for j in range(n) for kk in range(k)]
        neg = torch.stack(cands).max()
        eh = eh + torch.clamp(m - (cos(x[i], y[i]) - neg), min=0)
    return nce / n + lam * eh / n, eh / n


def naive_spurious(x, y, negs, s, lam):
    n = x.shape[0]
    sp = 0.0
    for i in range(n):
        pos = s * cos(x[i], y[i])
        terms = [pos] + [s * cos(x[i], negs[i, kk]) for kk in range(negs.shape[1])]
        sp = sp + torch.logsumexp(torch.stack(terms), 0) - pos
    return clip_loss(x, y, s, allow_single=True) + lam * sp / n


def _data(n, k, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    negs = torch.randn(n, k, d, generator=g, dtype=torch.float64, requires_grad=True) if k else None
    return x, y, negs


def _grads(value, inputs):
    return torch.autograd.grad(value, [t for t in inputs if t is not None])


@pytest.mark.parametrize(("n", "k", "w"), [(1, 1, 0.0), (2, 1, 0.0), (5, 1, 0.0), (4, 3, 0.5), (6, 0, 0.0)])
def test_promcse_matches_naive_loops(n, k, w):
    x, y, negs = _data(n, k, seed=n + k)
    got = promcse_loss(
        x, y, negatives=negs, temperature=0.1, margin=0.3, lambda_eh=2.0, hard_negative_weight=w
    )
    want, _ = naive_promcse(x, y, negs, 0.1, 0.3, 2.0, w)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(_grads(got, (x, y, negs)), _grads(want, (x, y, negs))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_energy_hinge_alone_and_its_hand_value():
    x, y, negs = _data(5, 2, seed=3)
    _, want = naive_promcse(x, y, negs, 0.1, 0.2, 1.0, 0.0)
    got = energy_hinge_loss(x, y, negatives=negs)
    torch.testing.assert_close(got, want)
    for a, b in zip(_grads(got, (x, y, negs)), _grads(want, (x, y, negs))):
        torch.testing.assert_close(a, b)
    # hand-computed 2×2: x = y = (e1, e2); negatives at 60° and 30° from e1 (mirrored for e2). Every
    # hard negative of the batch counts: neg_i = cos 30° = √3/2, so EH = max(0, m − (1 − √3/2))
    e = torch.eye(2, dtype=torch.float64)
    n = torch.tensor([[[0.5, math.sqrt(3) / 2]], [[math.sqrt(3) / 2, 0.5]]], dtype=torch.float64)
    assert float(energy_hinge_loss(e, e, negatives=n)) == pytest.approx(math.sqrt(3) / 2 - 0.8)
    assert float(energy_hinge_loss(e, e, negatives=n, margin=0.1)) == 0.0


def test_hinge_gradient_reaches_the_positive_and_the_argmax_negative_only():
    x, y, negs = _data(5, 3, seed=11)
    energy_hinge_loss(x, y, negatives=negs, margin=5.0).backward()  # every hinge active
    xn, yn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    nn_ = torch.nn.functional.normalize(negs, dim=2).reshape(15, 4)
    cands = torch.cat([(xn @ yn.T).fill_diagonal_(-9), xn @ nn_.T], 1)
    win = cands.argmax(1)  # each anchor's hardest candidate: column < 5 a positive, else a negative
    hit_neg = torch.zeros(15, dtype=torch.bool)
    hit_neg[win[win >= 5] - 5] = True
    hit_y = torch.zeros(5, dtype=torch.bool)
    hit_y[win[win < 5]] = True
    hit_y |= True  # every y_i is its own anchor's positive
    assert torch.equal(negs.grad.reshape(15, 4).abs().sum(1) > 0, hit_neg)
    assert torch.equal(y.grad.abs().sum(1) > 0, hit_y)


def test_promcse_well_separated_and_zero_margin_has_zero_hinge():
    e = torch.eye(3, dtype=torch.float64)
    negs = -e[:, None, :]
    assert float(energy_hinge_loss(e, e, negatives=negs, margin=0.0)) == 0.0
    # λ = 0 ⇒ the SimCSE NT-Xent alone; no negatives ⇒ one-way InfoNCE at s = 1/τ
    x, y, _ = _data(4, 0, seed=9)
    ce = torch.nn.functional.cross_entropy
    logits = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(y, dim=1).T / 0.05
    torch.testing.assert_close(promcse_loss(x, y, lambda_eh=0.0), ce(logits, torch.arange(4)))


@pytest.mark.parametrize(("n", "k"), [(1, 2), (3, 1), (5, 3)])
def test_spurious_clip_matches_naive_loops(n, k):
    x, y, negs = _data(n, k, seed=20 + n)
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    got = spurious_clip_loss(x, y, s, negatives=negs, lambda_sp=0.7, allow_single=True)
    want = naive_spurious(x, y, negs, s, 0.7)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(_grads(got, (x, y, negs, s)), _grads(want, (x, y, negs, s))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_spurious_clip_without_descriptions_is_clip():
    x, y, _ = _data(5, 0, seed=4)
    torch.testing.assert_close(spurious_clip_loss(x, y, 3.0), clip_loss(x, y, 3.0))
    torch.testing.assert_close(
        spurious_clip_loss(x, y, 3.0, negatives=torch.ones(5, 1, 4), lambda_sp=0.0), clip_loss(x, y, 3.0)
    )


def test_modules_errors_and_terms():
    x, y, negs = _data(4, 2, seed=5)
    for name in ("promcse", "energy_hinge", "spurious_clip"):
        loss = losses.build(name)
        fn, kw = loss.pure()
        torch.testing.assert_close(loss(x, y, negatives=negs), fn(x, y, negatives=negs, **kw))
    with pytest.raises(InputError, match=r"negatives must have shape \[N, K, d\] = \[4, K, 4\]"):
        promcse_loss(x, y, negatives=torch.ones(3, 1, 4))
    with pytest.raises(InputError, match="N >= 2 pairs or K >= 1"):
        promcse_loss(x[:1], y[:1])
    # the hinge as a term of a composite: clip + 10·EH, each term logged
    comp = CompositeLoss(
        {"clip": (1.0, losses.build("clip")), "energy_hinge": (10.0, losses.build("energy_hinge"))}
    )
    total = comp(x.float(), y.float(), negatives=negs.float())
    want = losses.build("clip")(x.float(), y.float()) + 10 * energy_hinge_loss(
        x.float(), y.float(), negatives=negs.float()
    )
    torch.testing.assert_close(total, want)
    assert set(comp.log_values()) >= {"loss/clip", "loss/energy_hinge"}
