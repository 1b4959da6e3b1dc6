"""CWCL, MedCLIP, multi-positive InfoNCE and the XMC decoupled softmax against naive float64 loops
(values and gradients, including the learnable scale), their reductions to CLIP and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.soft_targets import (
    CWCLLoss,
    MedCLIPLoss,
    MultiPositiveLoss,
    XMCDecoupledLoss,
    cwcl_loss,
    cwcl_weights,
    medclip_loss,
    multi_positive_loss,
    xmc_decoupled_loss,
)


def units(v):
    return [v[i] / v[i].norm() for i in range(v.shape[0])]


def logit_rows(a, b, log_s):
    """rows[i][j] = s · a_i·b_j as nested lists of 0-d tensors."""
    s = log_s.exp()
    return [[s * (a[i] @ b[j]) for j in range(len(b))] for i in range(len(a))]


def lse(vals):
    return torch.logsumexp(torch.stack(vals), 0)


def soft_ce_rows(rows, target):
    n = len(rows)
    total = 0.0
    for i in range(n):
        z = lse(rows[i])
        for j in range(len(rows[i])):
            total = total - float(target[i][j]) * (rows[i][j] - z)
    return total / n


def transpose(rows):
    return [[rows[i][j] for i in range(len(rows))] for j in range(len(rows[0]))]


def naive_cwcl(x, y, log_s, weights=None, symmetric=True):
    p, q = units(x), units(y)
    n = len(p)
    w = [
        [
            (float((q[i] @ q[j]).detach()) + 1) / 2 if weights is None else float(weights[i, j])
            for j in range(n)
        ]
        for i in range(n)
    ]
    t = [[w[i][j] / sum(w[i]) for j in range(n)] for i in range(n)]
    rows = logit_rows(p, q, log_s)
    loss = soft_ce_rows(rows, t)
    return 0.5 * (loss + soft_ce_rows(transpose(rows), t)) if symmetric else loss


def naive_medclip(x, y, log_s, sim, target="softmax", tt=1.0):
    n = x.shape[0]
    rows = logit_rows(units(x), units(y), log_s)
    if target == "softmax":
        t_img = [
            [math.exp(sim[i][j] / tt) / sum(math.exp(sim[i][k] / tt) for k in range(n)) for j in range(n)]
            for i in range(n)
        ]
        t_txt = [
            [math.exp(sim[i][j] / tt) / sum(math.exp(sim[k][j] / tt) for k in range(n)) for i in range(n)]
            for j in range(n)
        ]
    else:
        t_img = [[sim[i][j] / sum(sim[i]) for j in range(n)] for i in range(n)]
        t_txt = [[sim[i][j] / sum(sim[k][j] for k in range(n)) for i in range(n)] for j in range(n)]
    return 0.5 * (soft_ce_rows(rows, t_img) + soft_ce_rows(transpose(rows), t_txt))


def naive_multi_positive(x, y, log_s, labels, form="in"):
    n = x.shape[0]
    rows = logit_rows(units(x), units(y), log_s)
    total = 0.0
    for r in (rows, transpose(rows)):
        for i in range(n):
            pos = [j for j in range(n) if labels[i] == labels[j]]
            z = lse(r[i])
            if form == "in":
                total = total - (lse([r[i][j] for j in pos]) - z) / n
            else:
                total = total - sum(r[i][j] - z for j in pos) / len(pos) / n
    return total / 2


def naive_xmc(x, y, log_s, pos):
    n = x.shape[0]
    rows = logit_rows(units(x), units(y), log_s)
    total = 0.0
    for i in range(n):
        p_i = [j for j in range(n) if pos[i][j]]
        negs = [rows[i][k] for k in range(n) if not pos[i][k]]
        for j in p_i:
            total = total - (rows[i][j] - lse([rows[i][j], *negs])) / len(p_i)
    return total / n


def data(rng, n, d):
    x = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=True)
    y = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=True)
    ls = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    return x, y, ls


def assert_same(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


NS = [(2, 3), (5, 4), (8, 6)]


# ---------------------------------------------------------------------------------------------- CWCL
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("n,d", NS)
def test_cwcl_matches_naive(symmetric, n, d, rng):
    x, y, ls = data(rng, n, d)
    got = cwcl_loss(x, y, ls.exp(), symmetric=symmetric)
    assert_same(got, naive_cwcl(x, y, ls, symmetric=symmetric), (x, y, ls))


def test_cwcl_explicit_weights_match_naive(rng):
    x, y, ls = data(rng, 6, 4)
    w = torch.rand(6, 6, generator=rng, dtype=torch.float64)
    assert_same(cwcl_loss(x, y, ls.exp(), weights=w), naive_cwcl(x, y, ls, weights=w), (x, y, ls))


def test_cwcl_identity_weights_are_infonce(rng):
    x, y, _ = data(rng, 7, 5)
    eye = torch.eye(7, dtype=torch.float64)
    logits = 9.0 * F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    one_way = F.cross_entropy(logits, torch.arange(7))
    torch.testing.assert_close(
        cwcl_loss(x, y, 9.0, weights=eye, symmetric=False), one_way, rtol=1e-12, atol=0
    )
    torch.testing.assert_close(cwcl_loss(x, y, 9.0, weights=eye), clip_loss(x, y, 9.0), rtol=1e-12, atol=0)


def test_cwcl_weights_properties_and_no_gradient_through_weights(rng):
    x, y, _ = data(rng, 6, 4)
    w = cwcl_weights(y)
    assert not w.requires_grad
    torch.testing.assert_close(w.diagonal(), torch.ones(6, dtype=torch.float64))
    assert bool(((w >= 0) & (w <= 1)).all()) and torch.equal(w, w.T)
    # default weights == the same weights passed in as constants: identical gradient w.r.t. y
    g_default = torch.autograd.grad(cwcl_loss(x, y, 5.0), y)[0]
    g_const = torch.autograd.grad(cwcl_loss(x, y, 5.0, weights=w.clone()), y)[0]
    torch.testing.assert_close(g_default, g_const, rtol=1e-12, atol=0)
    w_req = w.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(cwcl_loss(x, y, 5.0, weights=w_req), w_req, allow_unused=True)
    assert gw is None
    # targets are w / row sums: a global rescale of the weights changes nothing
    torch.testing.assert_close(cwcl_loss(x, y, 5.0, weights=3 * w), cwcl_loss(x, y, 5.0, weights=w))


def test_cwcl_weight_fn_and_invariances(rng):
    x, y, _ = data(rng, 6, 4)
    w_fn = cwcl_loss(x, y, 5.0, weight_fn=lambda q: torch.eye(q.shape[0], dtype=q.dtype))
    torch.testing.assert_close(w_fn, clip_loss(x, y, 5.0))
    p = torch.randperm(6, generator=rng)
    torch.testing.assert_close(cwcl_loss(x[p], y[p], 5.0), cwcl_loss(x, y, 5.0))
    torch.testing.assert_close(cwcl_loss(2 * x, 7 * y, 5.0), cwcl_loss(x, y, 5.0))


# ------------------------------------------------------------------------------------------- MedCLIP
@pytest.mark.parametrize("target", ["softmax", "normalize"])
@pytest.mark.parametrize("n,d", NS)
def test_medclip_labels_match_naive(target, n, d, rng):
    x, y, ls = data(rng, n, d)
    labels = torch.randint(0, 3, (n,), generator=rng)
    sim = [[float(labels[i] == labels[j]) for j in range(n)] for i in range(n)]
    got = medclip_loss(x, y, ls.exp(), labels=labels, target=target, target_temperature=0.5)
    assert_same(got, naive_medclip(x, y, ls, sim, target, 0.5), (x, y, ls))


def test_medclip_multi_hot_similarity_through_weights(rng):
    x, y, ls = data(rng, 6, 4)
    l_img = torch.randint(0, 2, (6, 5), generator=rng).double()
    l_txt = torch.randint(0, 2, (6, 5), generator=rng).double()
    l_img[:, 0] = l_txt[:, 0] = 1  # every row/column has a shared finding (normalize needs > 0)
    s = l_img @ l_txt.T
    for target in ("softmax", "normalize"):
        got = medclip_loss(x, y, ls.exp(), weights=s, target=target)
        assert_same(got, naive_medclip(x, y, ls, s.tolist(), target), (x, y, ls))


def test_medclip_special_cases(rng):
    x, y, _ = data(rng, 6, 4)
    distinct = torch.arange(6)
    # distinct labels + normalised targets: one-hot targets = CLIP
    torch.testing.assert_close(
        medclip_loss(x, y, 8.0, labels=distinct, target="normalize"), clip_loss(x, y, 8.0)
    )
    torch.testing.assert_close(
        medclip_loss(x, y, 8.0), medclip_loss(x, y, 8.0, labels=distinct)
    )  # no labels: S = I
    # labels ≡ their same-label matrix passed as weights
    labels = torch.tensor([0, 1, 0, 2, 1, 1])
    s = (labels[:, None] == labels[None, :]).double()
    torch.testing.assert_close(medclip_loss(x, y, 8.0, labels=labels), medclip_loss(x, y, 8.0, weights=s))
    # hand value: distinct labels, softmax targets put e/(e + N − 1) on the diagonal
    logits = 8.0 * F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    t = torch.full((6, 6), 1.0 / (math.e + 5), dtype=torch.float64).fill_diagonal_(math.e / (math.e + 5))
    want = 0.5 * (-(t * logits.log_softmax(1)).sum(1).mean() - (t * logits.T.log_softmax(1)).sum(1).mean())
    torch.testing.assert_close(medclip_loss(x, y, 8.0, labels=distinct), want, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------ multi-positive
@pytest.mark.parametrize("form", ["in", "out"])
@pytest.mark.parametrize("n,d", NS)
def test_multi_positive_matches_naive(form, n, d, rng):
    x, y, ls = data(rng, n, d)
    labels = torch.randint(0, max(1, n // 2), (n,), generator=rng)
    got = multi_positive_loss(x, y, ls.exp(), labels=labels, form=form)
    assert_same(got, naive_multi_positive(x, y, ls, labels.tolist(), form), (x, y, ls))


def test_multi_positive_special_cases(rng):
    x, y, _ = data(rng, 6, 4)
    for form in ("in", "out"):
        torch.testing.assert_close(
            multi_positive_loss(x, y, 6.0, labels=torch.arange(6), form=form), clip_loss(x, y, 6.0)
        )
    torch.testing.assert_close(multi_positive_loss(x, y, 6.0), clip_loss(x, y, 6.0))
    same = torch.zeros(6, dtype=torch.long)
    assert multi_positive_loss(x, y, 6.0, labels=same).item() == pytest.approx(0.0, abs=1e-12)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    # −log Σ_pos p ≤ −(1/|P|) Σ_pos log p (Jensen + log |P| ≥ 0)
    assert multi_positive_loss(x, y, 6.0, labels=labels) <= multi_positive_loss(
        x, y, 6.0, labels=labels, form="out"
    )
    p = torch.randperm(6, generator=rng)
    torch.testing.assert_close(
        multi_positive_loss(x[p], y[p], 6.0, labels=labels[p]), multi_positive_loss(x, y, 6.0, labels=labels)
    )


# ------------------------------------------------------------------------------------- XMC decoupled
@pytest.mark.parametrize("n,d", NS)
def test_xmc_matches_naive(n, d, rng):
    x, y, ls = data(rng, n, d)
    pos = torch.rand(n, n, generator=rng) < 0.3
    pos.fill_diagonal_(True)
    got = xmc_decoupled_loss(x, y, ls.exp(), weights=pos.double())
    assert_same(got, naive_xmc(x, y, ls, pos.tolist()), (x, y, ls))


def test_xmc_special_cases(rng):
    x, y, _ = data(rng, 5, 4)
    logits = 20.0 * F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    ce = F.cross_entropy(logits, torch.arange(5))
    torch.testing.assert_close(xmc_decoupled_loss(x, y, 20.0), ce, rtol=1e-12, atol=0)
    torch.testing.assert_close(xmc_decoupled_loss(x, y, 20.0, weights=torch.eye(5)), ce, rtol=1e-12, atol=0)
    # decoupling: row 0 with positives {0, 3} = mean of two single-positive CEs, each without the other
    pos = torch.eye(5)
    pos[0, 3] = 1
    row0 = 0.5 * (
        F.cross_entropy(logits[0, [0, 1, 2, 4]][None], torch.tensor([0]))
        + F.cross_entropy(logits[0, [1, 2, 3, 4]][None], torch.tensor([2]))
    )
    rest = F.cross_entropy(logits[1:], torch.arange(1, 5), reduction="sum")
    torch.testing.assert_close(
        xmc_decoupled_loss(x, y, 20.0, weights=pos), (row0 + rest) / 5, rtol=1e-12, atol=0
    )
    # a row whose every label is positive contributes exactly 0, with finite gradients
    pos = torch.eye(5)
    pos[2] = 1
    xg = x.detach().clone().requires_grad_(True)
    loss = xmc_decoupled_loss(xg, y, 20.0, weights=pos)
    (g,) = torch.autograd.grad(loss, xg)
    assert torch.isfinite(g).all() and g[2].abs().max() == 0


# --------------------------------------------------------------------------------- shared behaviour
FNS = [
    (cwcl_loss, {}),
    (medclip_loss, {"labels": torch.arange(1)}),
    (multi_positive_loss, {}),
    (xmc_decoupled_loss, {}),
]


@pytest.mark.parametrize("fn,kw", FNS)
def test_batch_of_one(fn, kw):
    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 4, dtype=torch.float64)
    with pytest.raises(InputError, match="batch of 1 pair"):
        fn(x, y, 5.0, **kw)
    loss = fn(x, y, 5.0, allow_single=True, **kw)
    assert loss.item() == pytest.approx(0.0, abs=1e-15)
    assert torch.isfinite(torch.autograd.grad(loss, x)[0]).all()


def test_bad_input_is_a_clear_error(rng):
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(InputError, match=r"weights must have shape \[N, N\]"):
        cwcl_loss(x, y, 5.0, weights=torch.ones(4, 3))
    with pytest.raises(InputError, match="non-negative"):
        cwcl_loss(x, y, 5.0, weights=-torch.ones(4, 4))
    with pytest.raises(InputError, match="positive sum"):
        cwcl_loss(x, y, 5.0, weights=torch.zeros(4, 4))
    with pytest.raises(ConfigError, match="not both"):
        cwcl_loss(x, y, 5.0, weights=torch.ones(4, 4), weight_fn=cwcl_weights)
    with pytest.raises(InputError, match="not both"):
        medclip_loss(x, y, 5.0, labels=torch.arange(4), weights=torch.eye(4))
    with pytest.raises(InputError, match=r"labels must have shape \[N\]"):
        medclip_loss(x, y, 5.0, labels=torch.arange(3))
    with pytest.raises(InputError, match="integer tensor"):
        multi_positive_loss(x, y, 5.0, labels=torch.zeros(4))
    with pytest.raises(InputError, match="non-negative label similarity"):
        medclip_loss(x, y, 5.0, weights=-torch.eye(4), target="normalize")
    with pytest.raises(ConfigError, match="target must be"):
        medclip_loss(x, y, 5.0, labels=torch.arange(4), target="sharpen")
    with pytest.raises(ConfigError, match="form must be"):
        multi_positive_loss(x, y, 5.0, form="mid")
    with pytest.raises(InputError, match="0/1"):
        xmc_decoupled_loss(x, y, 5.0, weights=torch.full((4, 4), 0.5))
    with pytest.raises(InputError, match="at least one positive"):
        xmc_decoupled_loss(x, y, 5.0, weights=torch.zeros(4, 4))
    with pytest.raises(InputError, match="non-finite"):
        xmc_decoupled_loss(x, y, 5.0, weights=torch.full((4, 4), float("nan")))
    with pytest.raises(InputError, match="batch size mismatch"):
        cwcl_loss(x, torch.randn(3, 3), 5.0)
    with pytest.raises(InputError, match="scale must be a scalar"):
        cwcl_loss(x, y, torch.ones(2))


@pytest.mark.parametrize(
    "name,cls,aux",
    [
        ("cwcl", CWCLLoss, {"weights": torch.eye(8)}),
        ("medclip", MedCLIPLoss, {"labels": torch.arange(8) % 3}),
        ("multi_positive", MultiPositiveLoss, {"labels": torch.arange(8) // 2}),
        ("xmc_decoupled", XMCDecoupledLoss, {"weights": torch.eye(8)}),
    ],
)
def test_registry_modules_run_float32_and_learn_scale(name, cls, aux, rng):
    loss = LOSSES.build(name)
    assert isinstance(loss, cls)
    x = torch.randn(8, 6, generator=rng, requires_grad=True)
    value = loss(x, torch.randn(8, 6, generator=rng), **aux)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(x.grad).all()
    fn, kwargs = loss.pure()
    torch.testing.assert_close(fn(x, x, **kwargs, **aux), loss(x, x, **aux))
    with pytest.raises(InputError, match="does not use"):
        loss(x, x, prior=torch.ones(8))
    if name == "xmc_decoupled":  # DEXML: fixed τ = 0.05
        assert not loss.log_scale.requires_grad and loss.log_values()["logit_scale"] == pytest.approx(20.0)
    else:
        assert loss.log_scale.grad is not None and loss.log_values()["logit_scale"] == pytest.approx(1 / 0.07)
        with torch.no_grad():
            loss.log_scale.fill_(9.0)
        loss.after_optimizer_step()
        assert loss.log_scale.item() == pytest.approx(math.log(100.0))


def test_module_config_errors():
    with pytest.raises(ConfigError, match="init_temperature"):
        CWCLLoss(init_temperature=0.0)
    with pytest.raises(ConfigError, match="target must be"):
        MedCLIPLoss(target="other")
    with pytest.raises(ConfigError, match="form must be"):
        MultiPositiveLoss(form="other")


@pytest.mark.parametrize("fn,kw", FNS)
def test_half_precision_inputs_are_computed_in_float32(fn, kw, rng):
    x, y = torch.randn(6, 8, generator=rng).bfloat16(), torch.randn(6, 8, generator=rng).bfloat16()
    kw = {"labels": torch.arange(6) % 2} if "labels" in kw else {}
    got = fn(x, y, 5.0, **kw)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fn(x.float(), y.float(), 5.0, **kw))
