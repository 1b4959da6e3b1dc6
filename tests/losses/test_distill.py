"""``distill``: KL between similarity distributions and feature MSE / cosine against naive float64 loops;
teacher = student ⇒ 0 with zero gradient; the teacher rows get no gradient."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses import build
from contrastkit.losses.distill import DistillLoss, distill_loss


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(a - m) for a in row]
    return [a / sum(e) for a in e]


def _naive_kl(x, y, tx, ty, tau, tau_t, symmetric):
    x, y, tx, ty = ([_unit(r) for r in m.tolist()] for m in (x, y, tx, ty))
    n = len(x)

    def sims(a, b, t):
        return [[sum(p * q for p, q in zip(a[i], b[j])) / t for j in range(n)] for i in range(n)]

    def kl(p_logits, q_logits):
        total = 0.0
        for i in range(n):
            p, q = _softmax(p_logits[i]), _softmax(q_logits[i])
            total += sum(p[j] * (math.log(p[j]) - math.log(q[j])) for j in range(n))
        return total / n

    s, t = sims(x, y, tau), sims(tx, ty, tau_t)
    rows = kl(t, s)
    if not symmetric:
        return rows
    tr = [list(r) for r in zip(*t)]
    sr = [list(r) for r in zip(*s)]
    return 0.5 * (rows + kl(tr, sr))


def _naive_features(x, y, tx, ty, form, on):
    pairs = {"x": [(x, tx)], "y": [(y, ty)], "both": [(x, tx), (y, ty)]}[on]
    terms = []
    for a, b in pairs:
        a, b = [_unit(r) for r in a.tolist()], [_unit(r) for r in b.tolist()]
        if form == "mse":
            per = [sum((p - q) ** 2 for p, q in zip(u, v)) for u, v in zip(a, b)]
        else:
            per = [1 - sum(p * q for p, q in zip(u, v)) for u, v in zip(a, b)]
        terms.append(sum(per) / len(per))
    return sum(terms) / len(terms)


def _data(n=5, d=4, dt=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, k, generator=g, dtype=torch.float64) for k in (d, d, dt, dt)]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("tau", "tau_t"), [(0.07, None), (0.5, 0.1)])
def test_kl_equals_the_naive_formula(symmetric, tau, tau_t) -> None:
    x, y, tx, ty = _data()
    got = distill_loss(
        x, y, tx, ty, form="kl", temperature=tau, teacher_temperature=tau_t, symmetric=symmetric
    )
    want = _naive_kl(x, y, tx, ty, tau, tau_t or tau, symmetric)
    assert float(got) == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("form", ["mse", "cosine"])
@pytest.mark.parametrize("on", ["both", "x", "y"])
def test_feature_forms_equal_the_naive_formula(form, on) -> None:
    x, y, tx, ty = _data(dt=4)
    got = distill_loss(x, y, tx, ty, form=form, on=on)
    assert float(got) == pytest.approx(_naive_features(x, y, tx, ty, form, on), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("form", ["kl", "mse", "cosine"])
def test_teacher_equal_to_student_gives_zero_and_zero_gradient(form) -> None:
    x, y, _, _ = _data()
    x.requires_grad_(True)
    y.requires_grad_(True)
    tx, ty = x.detach().clone() * 3.0, y.detach().clone() * 0.5  # the same directions
    loss = distill_loss(x, y, tx, ty, form=form)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-12
    assert float(x.grad.abs().max()) < 1e-10 and float(y.grad.abs().max()) < 1e-10


def test_the_teacher_gets_no_gradient_and_the_module_is_the_function() -> None:
    x, y, tx, ty = _data()
    tx.requires_grad_(True)
    ty.requires_grad_(True)
    x.requires_grad_(True)
    loss = build("distill", form="kl", temperature=0.2)
    value = loss(x, y, teacher_x=tx, teacher_y=ty)
    value.backward()
    assert tx.grad is None and ty.grad is None and x.grad is not None
    assert float(value.detach()) == pytest.approx(
        float(distill_loss(x, y, tx, ty, temperature=0.2).detach()), rel=1e-12
    )
    assert DistillLoss.accepts == {"teacher_x", "teacher_y"} and list(loss.parameters()) == []


def test_errors_name_the_problem() -> None:
    x, y, tx, ty = _data()
    with pytest.raises(InputError, match="model.teacher"):
        distill_loss(x, y)
    with pytest.raises(InputError, match="width 4 must equal the teacher's 6"):
        distill_loss(x, y, tx, ty, form="mse")
    with pytest.raises(InputError, match="N >= 2"):
        distill_loss(x[:1], y[:1], tx[:1], ty[:1])
    with pytest.raises(InputError, match="teacher embedded 4 pairs"):
        distill_loss(x, y, tx[:4], ty[:4])
    with pytest.raises(ConfigError, match="form"):
        DistillLoss(form="l2")
    with pytest.raises(ConfigError, match="temperature"):
        distill_loss(x, y, tx, ty, temperature=0.0)
