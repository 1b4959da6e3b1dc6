"""L-MW and Sy-CON against naive float64 loops (values and gradients), their oracles and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.auc import MWLoss, SyCONLoss, mw_loss, sycon_loss
from contrastkit.losses.base import LOSSES


def units(v):
    return [v[i] / v[i].norm() for i in range(v.shape[0])]


def naive_mw(x, y, tau=1.0, scope="global", pos=None):
    n = x.shape[0]
    xs, ys = units(x), units(y)
    s = [[xs[i] @ ys[j] for j in range(n)] for i in range(n)]
    pos = [[i == j for j in range(n)] for i in range(n)] if pos is None else pos
    if scope == "global":
        p_entries = [s[i][j] for i in range(n) for j in range(n) if pos[i][j]]
        n_entries = [s[i][j] for i in range(n) for j in range(n) if not pos[i][j]]
        terms = [F.softplus(-(sp - sn) / tau) for sp in p_entries for sn in n_entries]
        return sum(terms) / len(terms)
    rows = []
    for i in range(n):
        terms = [
            F.softplus(-(s[i][p] - s[i][q]) / tau)
            for p in range(n)
            if pos[i][p]
            for q in range(n)
            if not pos[i][q]
        ]
        if terms:
            rows.append(sum(terms) / len(terms))
    return sum(rows) / len(rows)


def naive_auc(s, pos):
    """U / (n_pos n_neg) by counting (ties ½)."""
    sp, sn = s[pos].tolist(), s[~pos].tolist()
    u = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in sp for b in sn)
    return u / (len(sp) * len(sn))


def pair(rng, n, d, grad=True):
    x = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=grad)
    y = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=grad)
    return x, y


def assert_same(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------------------------ MW
@pytest.mark.parametrize("scope", ["global", "per_query"])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 22])
@pytest.mark.parametrize("n,d", [(2, 3), (4, 4), (6, 5)])
def test_mw_matches_naive(scope, chunk, n, d, rng):
    x, y = pair(rng, n, d)
    got = mw_loss(x, y, temperature=0.4, scope=scope, chunk_size=chunk)
    assert_same(got, naive_mw(x, y, 0.4, scope), (x, y))


@pytest.mark.parametrize("scope", ["global", "per_query"])
def test_mw_with_labels_and_masks(scope, rng):
    x, y = pair(rng, 7, 4)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    pos = (labels[:, None] == labels[None, :]).tolist()
    assert_same(
        mw_loss(x, y, scope=scope, labels=labels, chunk_size=5), naive_mw(x, y, 1.0, scope, pos), (x, y)
    )
    mask = torch.rand(7, 7, generator=rng) < 0.3
    mask[0] = True  # a row with no negative: skipped by per_query, still counted globally
    mask[1] = False  # a row with no positive
    mask[2, 2] = True
    assert_same(
        mw_loss(x, y, scope=scope, weights=mask.double(), chunk_size=3),
        naive_mw(x, y, 1.0, scope, mask.tolist()),
        (x, y),
    )


def test_mw_oracles(rng):
    # constant scores ⇒ log 2 (every difference is 0)
    v = torch.zeros(5, 3, dtype=torch.float64)
    v[:, 0] = 1.0
    for scope in ("global", "per_query"):
        assert mw_loss(v, v, scope=scope).item() == pytest.approx(math.log(2), abs=1e-12)
    # per-query with one negative per row = logistic / BPR loss
    x, y = pair(rng, 2, 4, grad=False)
    s = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    bpr = 0.5 * (F.softplus(-(s[0, 0] - s[0, 1]) / 0.3) + F.softplus(-(s[1, 1] - s[1, 0]) / 0.3))
    torch.testing.assert_close(mw_loss(x, y, temperature=0.3, scope="per_query"), bpr, rtol=1e-12, atol=0)
    # separable toy case: loss → 0 as τ → 0, and the batch AUC is 1 (reversed: loss large, AUC 0)
    e = torch.eye(4, dtype=torch.float64)
    assert mw_loss(e, e, temperature=0.01).item() < 1e-40
    assert naive_auc(e @ e.T, torch.eye(4, dtype=torch.bool)) == 1.0
    anti = 1 - e
    assert mw_loss(e, anti, temperature=0.01).item() > 50
    assert (
        naive_auc(F.normalize(e, dim=1) @ F.normalize(anti, dim=1).T, torch.eye(4, dtype=torch.bool)) == 0.0
    )


def test_mw_invariances(rng):
    x, y = pair(rng, 6, 4, grad=False)
    for scope in ("global", "per_query"):
        base = mw_loss(x, y, scope=scope)
        p = torch.randperm(6, generator=rng)
        torch.testing.assert_close(mw_loss(x[p], y[p], scope=scope), base)
        torch.testing.assert_close(mw_loss(5 * x, 0.3 * y, scope=scope), base)


def test_mw_bad_input_and_config():
    x = torch.randn(4, 3)
    with pytest.raises(InputError, match="at least one positive and one negative"):
        mw_loss(x[:1], x[:1])
    with pytest.raises(InputError, match="at least one positive and one negative"):
        mw_loss(x, x, labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="both a positive and a negative"):
        mw_loss(x, x, scope="per_query", labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="0/1 positive mask"):
        mw_loss(x, x, weights=torch.full((4, 4), 0.5))
    with pytest.raises(InputError, match="not both"):
        mw_loss(x, x, labels=torch.arange(4), weights=torch.eye(4))
    with pytest.raises(InputError, match=r"labels must be an integer tensor of shape \[N\]"):
        mw_loss(x, x, labels=torch.arange(3))
    with pytest.raises(ConfigError, match="scope must be"):
        MWLoss(scope="per_doc")
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        mw_loss(x, x, temperature=0.0)
    with pytest.raises(InputError, match="non-finite"):
        mw_loss(torch.full((4, 3), float("nan")), x)


# -------------------------------------------------------------------------------------------- Sy-CON
def naive_sycon(x, y, px, py, gx=None, gy=None, tau=0.2, tau_s=0.2):
    n = x.shape[0]
    xs, ys = units(x), units(y)
    pxs, pys = units(px.detach()), units(py.detach())
    gxs = xs if gx is None else units(gx)
    gys = ys if gy is None else units(gy)

    def direction(a, o, g, pa, po):
        total = 0.0
        for i in range(n):
            negs_p = [a[i] @ o[j] / tau for j in range(n) if j != i] + [
                a[i] @ po[j] / tau for j in range(n) if j != i
            ]
            pos_p = a[i] @ o[i] / tau
            negs_s = [g[i] @ o[j] / tau_s for j in range(n) if j != i] + [
                g[i] @ po[j] / tau_s for j in range(n) if j != i
            ]
            pos_s = g[i] @ pa[i] / tau_s
            total = total - (pos_p - torch.logsumexp(torch.stack([pos_p, *negs_p]), 0))
            total = total - (pos_s - torch.logsumexp(torch.stack([pos_s, *negs_s]), 0))
        return total / n

    return 0.5 * (direction(xs, ys, gxs, pxs, pys) + direction(ys, xs, gys, pys, pxs))


@pytest.mark.parametrize("with_pred", [False, True])
@pytest.mark.parametrize("n,d", [(2, 3), (5, 4), (8, 6)])
def test_sycon_matches_naive(with_pred, n, d, rng):
    x, y = pair(rng, n, d)
    px, py = pair(rng, n, d, grad=False)
    gx, gy = pair(rng, n, d) if with_pred else (None, None)
    got = sycon_loss(
        x, y, past_x=px, past_y=py, pred_x=gx, pred_y=gy, temperature=0.3, stability_temperature=0.5
    )
    want = naive_sycon(x, y, px, py, gx, gy, 0.3, 0.5)
    inputs = (x, y, gx, gy) if with_pred else (x, y)
    assert_same(got, want, inputs)


def test_sycon_past_equals_current_doubles_negatives(rng):
    """With past = current and the identity predictor, L_P is InfoNCE whose negatives count twice."""
    x, y = pair(rng, 6, 4, grad=False)
    logits = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T / 0.2
    off = ~torch.eye(6, dtype=torch.bool)

    def doubled(lg):
        neg = torch.logsumexp(lg.masked_fill(~off, float("-inf")), 1) + math.log(2)
        return (torch.logaddexp(lg.diagonal(), neg) - lg.diagonal()).mean()

    # stability with x̄ = x, g = x: positive x_i·x_i = 1, negatives {y_j, y_j : j ≠ i}
    xs = F.normalize(x, dim=1)
    stab = logits.clone()
    stab.diagonal().copy_(torch.full((6,), 1 / 0.2, dtype=torch.float64))
    ys = F.normalize(y, dim=1)
    stab_y = (ys @ xs.T / 0.2).clone()
    stab_y.diagonal().copy_(torch.full((6,), 1 / 0.2, dtype=torch.float64))
    want = 0.5 * (doubled(logits) + doubled(stab) + doubled(logits.T) + doubled(stab_y))
    torch.testing.assert_close(sycon_loss(x, y, past_x=x, past_y=y), want, rtol=1e-12, atol=0)


def test_sycon_past_embeddings_get_no_gradient_and_invariances(rng):
    x, y = pair(rng, 5, 4)
    px, py = pair(rng, 5, 4)
    loss = sycon_loss(x, y, past_x=px, past_y=py)
    gpx, gpy = torch.autograd.grad(loss, (px, py), allow_unused=True)
    assert gpx is None and gpy is None
    xd, yd, pxd, pyd = (t.detach() for t in (x, y, px, py))
    base = sycon_loss(xd, yd, past_x=pxd, past_y=pyd)
    p = torch.randperm(5, generator=rng)
    torch.testing.assert_close(sycon_loss(xd[p], yd[p], past_x=pxd[p], past_y=pyd[p]), base)
    torch.testing.assert_close(sycon_loss(2 * xd, 3 * yd, past_x=0.5 * pxd, past_y=pyd), base)


def test_sycon_batch_of_one_and_bad_input():
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    past = torch.randn(1, 4, dtype=torch.float64)
    with pytest.raises(InputError, match="batch of 1 pair"):
        sycon_loss(x, x, past_x=past, past_y=past)
    loss = sycon_loss(x, torch.randn(1, 4, dtype=torch.float64), past_x=past, past_y=past, allow_single=True)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(torch.autograd.grad(loss, x)[0]).all()
    z = torch.randn(3, 4)
    with pytest.raises(InputError, match="needs past_x and past_y"):
        sycon_loss(z, z, past_x=z)
    with pytest.raises(InputError, match="past_y must have the shape of x"):
        sycon_loss(z, z, past_x=z, past_y=torch.randn(2, 4))
    with pytest.raises(InputError, match="pred_x contains"):
        sycon_loss(z, z, past_x=z, past_y=z, pred_x=torch.full((3, 4), float("nan")))
    with pytest.raises(ConfigError, match="must be > 0"):
        SyCONLoss(temperature=0.0)


# ------------------------------------------------------------------------------------------ registry
def test_registry_modules_run_float32(rng):
    x = torch.randn(8, 6, generator=rng, requires_grad=True)
    y = torch.randn(8, 6, generator=rng)
    mw = LOSSES.build("mw", scope="per_query")
    assert isinstance(mw, MWLoss)
    sy = LOSSES.build("sycon")
    assert isinstance(sy, SyCONLoss)
    past = {"past_x": torch.randn(8, 6, generator=rng), "past_y": torch.randn(8, 6, generator=rng)}
    for value in (mw(x, y), mw(x, y, labels=torch.arange(8) // 2), sy(x, y, **past)):
        assert value.dtype == torch.float32 and torch.isfinite(value)
        (g,) = torch.autograd.grad(value, x)
        assert torch.isfinite(g).all()
    fn, kwargs = sy.pure()
    torch.testing.assert_close(fn(x, y, **kwargs, **past), sy(x, y, **past))
    with pytest.raises(InputError, match="does not use"):
        sy(x, y, labels=torch.arange(8), **past)


def test_half_precision_inputs_are_computed_in_float32(rng):
    x = torch.randn(6, 8, generator=rng)
    y = torch.randn(6, 8, generator=rng)
    past = torch.randn(6, 8, generator=rng)
    for fn, kw in ((mw_loss, {}), (sycon_loss, {"past_x": past, "past_y": past})):
        half_kw = {k: v.bfloat16() for k, v in kw.items()}
        got = fn(x.bfloat16(), y.bfloat16(), **half_kw)
        assert got.dtype == torch.float32
        want = fn(x.bfloat16().float(), y.bfloat16().float(), **{k: v.float() for k, v in half_kw.items()})
        torch.testing.assert_close(got, want)
