"""L-COCONUT: NSC and the multimodal term against naive float64 loops; the composite's parts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import InputError
from contrastkit.losses import build, clip_loss
from contrastkit.losses.coconut import TEACHER_KEY, multimodal_supcon_loss, nsc_loss


def _naive_nsc(s, t, y, tau, negatives="teacher"):
    s, t = F.normalize(s.double(), dim=-1), F.normalize(t.double(), dim=-1)
    total = 0.0
    for i in range(len(s)):
        pos = [p for p in range(len(s)) if y[p] == y[i]]
        if negatives == "teacher":
            den = [float(s[i] @ t[a]) / tau for a in range(len(s))]
        else:
            den = [float(s[i] @ t[p]) / tau for p in pos]
            den += [float(s[i] @ s[a]) / tau for a in range(len(s)) if y[a] != y[i]]
        lse = math.log(sum(math.exp(v) for v in den))
        total += sum(lse - float(s[i] @ t[p]) / tau for p in pos) / len(pos)
    return total / len(s)


def _naive_mm(x, u, y, tau):
    x, u = F.normalize(x.double(), dim=-1), F.normalize(u.double(), dim=-1)
    n, out = len(x), 0.0
    for a, b in ((x, u), (u, x)):
        for i in range(n):
            q = [float(a[i] @ b[j]) / tau for j in range(n)]
            lse = math.log(sum(math.exp(v) for v in q))
            pos = [j for j in range(n) if y[j] == y[i]]
            out += sum(lse - q[j] for j in pos) / len(pos) / n
    return out / 2


@pytest.mark.parametrize("negatives", ["teacher", "student"])
def test_nsc_equals_a_naive_float64_supcon_loop(negatives):
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(7, 5, generator=g, dtype=torch.float64),
        torch.randn(7, 5, generator=g, dtype=torch.float64),
    )
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    got = nsc_loss(s, t, y, 0.1, negatives)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_naive_nsc(s, t, y.tolist(), 0.1, negatives), rel=1e-12)
    none = nsc_loss(s, t, None, 0.2)  # no labels: each row's own teacher feature is its positive
    assert float(none) == pytest.approx(_naive_nsc(s, t, list(range(7)), 0.2), rel=1e-12)


def test_nsc_with_an_empty_memory_is_exactly_zero_and_the_teacher_gets_no_gradient():
    s = torch.randn(0, 4, requires_grad=True)
    t = torch.randn(0, 4, requires_grad=True)
    zero = nsc_loss(s, t, torch.zeros(0, dtype=torch.long))
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert t.grad is None
    s2, t2 = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    nsc_loss(s2, t2, torch.tensor([0, 0, 1, 1, 2]), negatives="student").backward()
    assert t2.grad is None and s2.grad is not None and s2.grad.abs().sum() > 0


def test_multimodal_term_equals_a_naive_loop_and_is_clip_without_labels():
    g = torch.Generator().manual_seed(1)
    x, u = (
        torch.randn(6, 3, generator=g, dtype=torch.float64),
        torch.randn(6, 3, generator=g, dtype=torch.float64),
    )
    y = torch.tensor([1, 1, 0, 2, 0, 1])
    assert float(multimodal_supcon_loss(x, u, y, 0.1)) == pytest.approx(
        _naive_mm(x, u, y.tolist(), 0.1), rel=1e-12
    )
    want = clip_loss(x, u, 1 / 0.1)
    assert float(multimodal_supcon_loss(x, u, None, 0.1)) == pytest.approx(float(want), rel=1e-12)
    assert multimodal_supcon_loss(x[:0], u[:0], y[:0]).item() == 0.0


def test_coconut_is_main_plus_weighted_nsc_on_rehearsal_rows_and_mm_on_current_rows():
    g = torch.Generator().manual_seed(2)
    emb = {k: torch.randn(8, 4, generator=g, dtype=torch.float64) for k in ("image", "text", TEACHER_KEY)}
    emb[TEACHER_KEY].requires_grad_(True)
    y = torch.tensor([0, 1, 0, 1, 2, 2, 3, 3])
    reh = torch.tensor([False] * 5 + [True] * 3)
    loss = build("coconut", nsc_weight=0.3, mm_weight=0.2, main_params={"init_temperature": 0.05})
    got = loss(emb, labels=y, rehearsal=reh)
    main = clip_loss(emb["image"], emb["text"], 1 / 0.05)
    nsc = _naive_nsc(emb["image"][5:], emb[TEACHER_KEY][5:].detach(), y[5:].tolist(), 0.1)
    mm = _naive_mm(emb["image"][:5], emb["text"][:5], y[:5].tolist(), 0.1)
    assert float(got.detach()) == pytest.approx(float(main.detach()) + 0.3 * nsc + 0.2 * mm, rel=1e-9)
    logged = loss.log_values()
    assert logged["loss/nsc"] == pytest.approx(nsc, rel=1e-9) and "logit_scale" in logged
    got.backward()
    assert emb[TEACHER_KEY].grad is None  # the frozen teacher: no gradient through the loss
    first_stage = loss({k: emb[k] for k in ("image", "text")}, labels=y)  # no memory: NSC exactly 0
    assert loss.log_values()["loss/nsc"] == 0.0
    mm_all = _naive_mm(emb["image"], emb["text"], y.tolist(), 0.1)
    assert float(first_stage.detach()) == pytest.approx(float(main.detach()) + 0.2 * mm_all, rel=1e-9)
    with pytest.raises(InputError, match="no teacher features"):
        loss({k: emb[k] for k in ("image", "text")}, labels=y, rehearsal=reh)
    assert {"labels", "rehearsal", "pair_weights"} <= loss.accepts  # CLIP's own field passes through
