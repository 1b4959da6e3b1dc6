"""LLaVE, HN-NCE, HCL, explicit hard-negative loss and CLIP-IN against naive float64 loops
(values and gradients) and the spec's oracles."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses import clip_loss
from contrastkit.losses.base import LOSSES
from contrastkit.losses.hard_negatives import (
    CLIPINLoss,
    HNNCELoss,
    clip_in_loss,
    hard_negative_penalty_loss,
    hcl_loss,
    hn_nce_loss,
    llave_loss,
)

F64 = torch.float64


def unit(v):
    return v / v.norm()


def nll(pos, terms):
    """−log(e^pos / Σ_t e^t) from a python list of 0-d tensors (terms include the positive)."""
    return -(pos - torch.logsumexp(torch.stack(terms), 0))


# ----------------------------------------------------------------------------- naive oracles


def naive_llave(x, y, s, alpha):
    n = x.shape[0]
    c = [[unit(x[i]) @ unit(y[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):  # query i against all targets, then target i against all queries
        for get in (lambda a, b: c[a][b], lambda a, b: c[b][a]):
            den = 0.0
            for j in range(n):
                w = 1.0 if j == i else torch.exp(alpha * get(i, j).detach())
                den = den + w * torch.exp(s * get(i, j))
            total = total - torch.log(torch.exp(s * get(i, i)) / den)
    return total / (2 * n)


def naive_hn_nce(x, y, log_s, alpha, beta, beta2, detach=False):
    n = x.shape[0]
    s = log_s.exp()
    c = [[unit(x[i]) @ unit(y[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for get, b in ((lambda a, k: c[a][k], beta), (lambda a, k: c[k][a], beta2)):
        for i in range(n):
            z = sum(torch.exp(b * s * get(i, k)) for k in range(n) if k != i)
            den = alpha * torch.exp(s * get(i, i))
            for j in range(n):
                if j != i:
                    w = (n - 1) * torch.exp(b * s * get(i, j)) / z
                    den = den + (w.detach() if detach else w) * torch.exp(s * get(i, j))
            total = total - torch.log(torch.exp(s * get(i, i)) / den)
    return total / (2 * n)


def two_views(x, y):
    z = [unit(v) for v in torch.cat([x, y])]
    n = x.shape[0]
    return z, [(a + n) % (2 * n) for a in range(2 * n)]


def naive_hcl(x, y, tau, tau_plus, beta, detach=False):
    z, partner = two_views(x, y)
    m = len(z) - 2
    total = 0.0
    for a in range(len(z)):
        pos = torch.exp(z[a] @ z[partner[a]] / tau)
        negs = [torch.exp(z[a] @ z[b] / tau) for b in range(len(z)) if b not in (a, partner[a])]
        imps = [torch.exp(beta * z[a] @ z[b] / tau) for b in range(len(z)) if b not in (a, partner[a])]
        if detach:
            imps = [i.detach() for i in imps]
        r = sum(i * g for i, g in zip(imps, negs)) / (sum(imps) / m)
        ng = (-tau_plus * m * pos + r) / (1 - tau_plus)
        ng = torch.maximum(ng, torch.tensor(m * math.exp(-1 / tau), dtype=F64))
        total = total - torch.log(pos / (pos + ng))
    return total / len(z)


def naive_hard_negative(x, y, tau, k):
    z, partner = two_views(x, y)
    total = 0.0
    for a in range(len(z)):
        pos = z[a] @ z[partner[a]] / tau
        negs = sorted((z[a] @ z[b] / tau for b in range(len(z)) if b not in (a, partner[a])), reverse=True)
        total = total + nll(pos, [pos, *negs[:k]])
    return total / len(z)


def naive_clip_in(x, y, negatives, log_s):
    n = x.shape[0]
    s = log_s.exp()
    total = 0.0
    for i in range(n):
        row = [s * unit(x[i]) @ unit(y[j]) for j in range(n)]
        row += [s * unit(x[i]) @ unit(negatives[i, k]) for k in range(negatives.shape[1])]
        total = total + nll(row[i], row)
        col = [s * unit(x[j]) @ unit(y[i]) for j in range(n)]
        total = total + nll(col[i], col)
    return total / (2 * n)


def rand(rng, *shape, grad=True):
    return torch.randn(*shape, generator=rng, dtype=F64, requires_grad=grad)


def assert_values_and_grads(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    gg = torch.autograd.grad(got, inputs)
    wg = torch.autograd.grad(want, inputs)
    for a, b in zip(gg, wg):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------------------- LLaVE


@pytest.mark.parametrize("n,d,alpha", [(2, 3, 0.5), (5, 8, 0.5), (9, 4, 2.0)])
def test_llave_matches_naive(n, d, alpha, rng):
    x, y = rand(rng, n, d), rand(rng, n, d)
    assert_values_and_grads(llave_loss(x, y, 50.0, alpha), naive_llave(x, y, 50.0, alpha), (x, y))


def test_llave_alpha_zero_is_clip_at_scale_50_and_weights_carry_no_gradient(rng):
    x, y = rand(rng, 6, 5), rand(rng, 6, 5)
    torch.testing.assert_close(llave_loss(x, y, alpha=0.0), clip_loss(x, y, 50.0), rtol=1e-12, atol=0)
    # with gradient through the weights the result would differ: the oracle above detaches them
    got = torch.autograd.grad(llave_loss(x, y, 50.0, 1.0), x)[0]
    c = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(y, dim=1).T
    eye = torch.eye(6, dtype=torch.bool)
    no_sg = 50.0 * c + (1.0 * c).masked_fill(eye, 0.0)
    t = torch.arange(6)
    ce = torch.nn.functional.cross_entropy
    other = torch.autograd.grad(0.5 * (ce(no_sg, t) + ce(no_sg.T, t)), x)[0]
    assert not torch.allclose(got, other, rtol=1e-3)


# ----------------------------------------------------------------------------- HN-NCE


@pytest.mark.parametrize(
    "n,d,alpha,beta,beta2,detach",
    [
        (2, 3, 1.0, 0.5, None, False),
        (5, 8, 1.0, 0.5, 1.5, False),
        (7, 4, 0.0, 2.0, None, True),
        (4, 6, 0.3, 0.5, 0.0, False),
    ],
)
def test_hn_nce_matches_naive(n, d, alpha, beta, beta2, detach, rng):
    x, y = rand(rng, n, d), rand(rng, n, d)
    t = torch.tensor(math.log(1 / 0.2), dtype=F64, requires_grad=True)
    got = hn_nce_loss(x, y, t.exp(), alpha=alpha, beta=beta, beta_t2i=beta2, detach_weights=detach)
    want = naive_hn_nce(x, y, t, alpha, beta, beta if beta2 is None else beta2, detach)
    assert_values_and_grads(got, want, (x, y, t))


def test_hn_nce_alpha_one_beta_zero_is_clip(rng):
    x, y = rand(rng, 7, 5), rand(rng, 7, 5)
    t = torch.tensor(2.0, dtype=F64, requires_grad=True)
    assert_values_and_grads(
        hn_nce_loss(x, y, t.exp(), alpha=1.0, beta=0.0), clip_loss(x, y, t.exp()), (x, y, t)
    )


def test_hn_nce_large_beta_concentrates_weight_on_the_hardest_negative():
    # row 0: positive cos 1, negatives cos 0.5 and −0.5 → all N−1 = 2 weight on the 0.5 one
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=F64)
    y = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(0.75)], [-0.5, math.sqrt(0.75)]], dtype=F64)
    got = hn_nce_loss(x, y, 1.0, beta=400.0, beta_t2i=0.0)
    row0 = math.log(math.e + 2 * math.exp(0.5)) - 1.0
    # every row of x is e1, so each row has the same logits; text→image columns are all equal (β₂=0)
    want_i2t = (
        row0
        + (math.log(math.exp(0.5) + 2 * math.exp(1.0)) - 0.5)
        + (math.log(math.exp(-0.5) + 2 * math.e) + 0.5)
    ) / 3
    want_t2i = math.log(3)  # each column holds 3 identical logits and β₂ = 0 gives weights 1
    assert got.item() == pytest.approx(0.5 * (want_i2t + want_t2i), rel=1e-9)


# ----------------------------------------------------------------------------- HCL


@pytest.mark.parametrize(
    "n,d,tau,tp,beta,detach",
    [
        (2, 3, 0.5, 0.1, 1.0, False),
        (5, 8, 0.5, 0.1, 1.0, False),
        (6, 4, 0.3, 0.2, 0.0, False),
        (4, 5, 0.5, 0.1, 2.0, True),
    ],
)
def test_hcl_matches_naive(n, d, tau, tp, beta, detach, rng):
    x, y = rand(rng, n, d), rand(rng, n, d)
    got = hcl_loss(x, y, tau, tp, beta, detach_weights=detach)
    assert_values_and_grads(got, naive_hcl(x, y, tau, tp, beta, detach), (x, y))


def test_hcl_without_debiasing_or_hardness_is_ntxent(rng):
    x, y = rand(rng, 5, 6), rand(rng, 5, 6)
    want = naive_hard_negative(x, y, 0.5, k=8)  # k = M: every negative, i.e. NT-Xent
    assert_values_and_grads(hcl_loss(x, y, 0.5, tau_plus=0.0, beta=0.0), want, (x, y))


def test_hcl_clamp_gives_hand_value_when_debiasing_overshoots():
    # identical views, orthonormal samples: pos = e^{1/τ}, R = M, τ⁺ M pos > R → Ng = M e^{−1/τ}
    e = torch.eye(4, dtype=F64, requires_grad=True)
    tau, m = 0.5, 6
    got = hcl_loss(e, e, tau, tau_plus=0.5, beta=1.0)
    assert got.item() == pytest.approx(math.log1p(m * math.exp(-2 / tau)), rel=1e-12)
    assert_values_and_grads(hcl_loss(e, e, tau, 0.5, 1.0), naive_hcl(e, e, tau, 0.5, 1.0), (e,))


# ----------------------------------------------------------------------------- explicit hard negatives


@pytest.mark.parametrize(
    "n,d,top_k,frac", [(2, 3, None, 0.25), (5, 8, 3, 0.25), (6, 4, None, 0.5), (4, 5, 100, 0.25)]
)
def test_hard_negative_penalty_matches_naive(n, d, top_k, frac, rng):
    x, y = rand(rng, n, d), rand(rng, n, d)
    m = 2 * n - 2
    k = min(m, top_k if top_k is not None else max(1, math.ceil(frac * m)))
    got = hard_negative_penalty_loss(x, y, 0.5, top_k=top_k, hard_fraction=frac)
    assert_values_and_grads(got, naive_hard_negative(x, y, 0.5, k), (x, y))


def test_hard_negative_penalty_top_one_hand_value():
    # 2 pairs, both views identical, samples at 90°: each anchor's negatives have cos 0 → ℓ = log(1+e^{-2})
    e = torch.eye(2, dtype=F64)
    assert hard_negative_penalty_loss(e, e, 0.5, top_k=1).item() == pytest.approx(
        math.log1p(math.exp(-2.0)), rel=1e-12
    )
    assert hard_negative_penalty_loss(e, e, 0.5, hard_fraction=1.0).item() == pytest.approx(
        math.log1p(2 * math.exp(-2.0)), rel=1e-12
    )


def test_hard_negative_penalty_is_at_most_ntxent(rng):
    x, y = rand(rng, 8, 4, grad=False), rand(rng, 8, 4, grad=False)
    full = hard_negative_penalty_loss(x, y, hard_fraction=1.0)
    assert hard_negative_penalty_loss(x, y, top_k=2) < full
    torch.testing.assert_close(full, hcl_loss(x, y, 0.5, 0.0, 0.0), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- CLIP-IN


@pytest.mark.parametrize("n,k,d", [(1, 2, 3), (2, 1, 3), (5, 3, 8), (6, 0, 4)])
def test_clip_in_matches_naive(n, k, d, rng):
    x, y, negs = rand(rng, n, d), rand(rng, n, d), rand(rng, n, k, d)
    t = torch.tensor(2.5, dtype=F64, requires_grad=True)
    got = clip_in_loss(x, y, t.exp(), negatives=negs, neg_scope="own")
    assert_values_and_grads(got, naive_clip_in(x, y, negs, t), (x, y, negs, t) if k else (x, y, t))


@pytest.mark.parametrize("n,k,d", [(1, 2, 3), (2, 1, 3), (5, 3, 8)])
def test_clip_in_batch_scope_matches_naive_and_the_concatenated_matrix(n, k, d, rng):
    """neg_scope="batch": image→text is CE over the N × N(1+K) matrix of every caption and every
    negative caption; text→image is unchanged by the negatives."""
    x, y, negs = rand(rng, n, d), rand(rng, n, d), rand(rng, n, k, d)
    t = torch.tensor(2.5, dtype=F64, requires_grad=True)
    got = clip_in_loss(x, y, t.exp(), negatives=negs)
    pool = negs.reshape(1, n * k, d).expand(n, n * k, d)  # every image sees every negative
    assert_values_and_grads(got, naive_clip_in(x, y, pool, t), (x, y, negs, t))
    s = t.exp()
    xn, yn, nn = (F.normalize(v, dim=-1) for v in (x, y, negs.reshape(n * k, d)))
    logits = s * xn @ torch.cat([yn, nn]).T
    target = torch.arange(n)
    i2t = F.cross_entropy(logits, target)
    t2i = F.cross_entropy(s * yn @ xn.T, target)
    torch.testing.assert_close(got, 0.5 * (i2t + t2i), rtol=1e-12, atol=1e-12)


def test_clip_in_without_negatives_is_clip(rng):
    x, y = rand(rng, 5, 4), rand(rng, 5, 4)
    torch.testing.assert_close(clip_in_loss(x, y, 10.0), clip_loss(x, y, 10.0), rtol=1e-12, atol=0)
    empty = torch.zeros(5, 0, 4, dtype=F64)
    torch.testing.assert_close(
        clip_in_loss(x, y, 10.0, negatives=empty), clip_loss(x, y, 10.0), rtol=1e-12, atol=0
    )


def test_clip_in_duplicate_caption_as_negative_hand_value():
    # 2 orthonormal pairs at s = 1; image 0's extra negative is text 1 again (and vice versa)
    e = torch.eye(2, dtype=F64)
    negs = torch.stack([e[1:2], e[0:1]])  # image 0 ↦ text 1, image 1 ↦ text 0
    got = clip_in_loss(e, e, 1.0, negatives=negs, neg_scope="own")
    i2t = math.log(math.e + 2) - 1
    t2i = math.log(math.e + 1) - 1
    assert got.item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-12)


# ----------------------------------------------------------------------------- shared properties

FUNCS = {
    "llave": lambda x, y, **kw: llave_loss(x, y),
    "hn_nce": lambda x, y, **kw: hn_nce_loss(x, y, 5.0),
    "hcl": lambda x, y, **kw: hcl_loss(x, y),
    "hard_negative_penalty": lambda x, y, **kw: hard_negative_penalty_loss(x, y, top_k=3),
    "clip_in": lambda x, y, negatives=None: clip_in_loss(x, y, 5.0, negatives=negatives),
}


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_permutation_and_scale_invariance(name, rng):
    x, y, negs = rand(rng, 7, 5, grad=False), rand(rng, 7, 5, grad=False), rand(rng, 7, 2, 5, grad=False)
    kw = {"negatives": negs} if name == "clip_in" else {}
    base = FUNCS[name](x, y, **kw)
    p = torch.randperm(7, generator=rng)
    kw_p = {"negatives": negs[p].flip(1)} if name == "clip_in" else {}
    torch.testing.assert_close(FUNCS[name](x[p], y[p], **kw_p), base, rtol=1e-10, atol=0)
    scales = torch.rand(7, 1, generator=rng, dtype=F64) * 5 + 0.1
    torch.testing.assert_close(FUNCS[name](x * scales, y * 3.0, **kw), base, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", ["llave", "hn_nce", "hcl", "hard_negative_penalty", "clip_in"])
def test_bad_input_is_a_clear_error(name):
    fn = FUNCS[name]
    with pytest.raises(InputError, match="batch size mismatch"):
        fn(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(InputError, match="embedding dimension mismatch"):
        fn(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(InputError, match="empty batch"):
        fn(torch.randn(0, 4), torch.randn(0, 4))
    with pytest.raises(InputError, match="non-finite"):
        fn(torch.full((2, 4), float("nan")), torch.randn(2, 4))
    with pytest.raises(InputError, match="N=1"):
        fn(torch.randn(1, 4), torch.randn(1, 4))


def test_bad_config_and_negatives_are_clear_errors():
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(InputError, match=r"negatives must have shape \[N, K, d\]"):
        clip_in_loss(x, y, 5.0, negatives=torch.randn(3, 4))
    with pytest.raises(InputError, match="negatives contains 1 non-finite"):
        clip_in_loss(x, y, 5.0, negatives=_one_inf())
    with pytest.raises(ConfigError, match=r"tau_plus must be in \[0, 1\)"):
        hcl_loss(x, y, tau_plus=1.0)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        hcl_loss(x, y, temperature=0.0)
    with pytest.raises(ConfigError, match="alpha must be >= 0"):
        hn_nce_loss(x, y, 5.0, alpha=-1.0)
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        hard_negative_penalty_loss(x, y, top_k=0)
    with pytest.raises(ConfigError, match=r"hard_fraction must be in \(0, 1\]"):
        LOSSES.build("hard_negative_penalty", hard_fraction=1.5)


def _one_inf():
    negs = torch.zeros(3, 1, 4)
    negs[1, 0, 2] = float("inf")
    return negs


# ----------------------------------------------------------------------------- modules


@pytest.mark.parametrize("name", ["llave", "hn_nce", "hcl", "hard_negative_penalty", "clip_in"])
def test_registered_modules_build_and_match_their_pure_function(name, rng):
    import contrastkit.losses.hard_negatives  # noqa: F401  (registers the names)

    loss = LOSSES.build(name)
    x, y = torch.randn(6, 16, generator=rng), torch.randn(6, 16, generator=rng)
    got = loss(x, y)
    fn, kwargs = loss.pure()
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got, fn(x, y, **kwargs))
    with pytest.raises(InputError, match="does not use"):
        loss(x, y, labels=torch.arange(6))


def test_defaults_follow_the_papers():
    assert LOSSES.build("llave").pure()[1] == {"scale": 50.0, "alpha": 0.5}
    hcl = LOSSES.build("hcl").pure()[1]
    assert (hcl["temperature"], hcl["tau_plus"], hcl["beta"], hcl["detach_weights"]) == (0.5, 0.1, 1.0, False)
    hn = HNNCELoss()
    kw = hn.pure()[1]
    assert (kw["alpha"], kw["beta"], kw["detach_weights"]) == (1.0, 0.5, False)
    assert kw["scale"].item() == pytest.approx(1 / 0.07, rel=1e-6)


@pytest.mark.parametrize("cls", [HNNCELoss, CLIPINLoss])
def test_learnable_scale_gradient_and_clamp(cls, rng):
    loss = cls().double()
    x, y = rand(rng, 5, 4), rand(rng, 5, 4)
    got = loss(x, y)
    want = (
        naive_hn_nce(x, y, loss.log_scale, 1.0, 0.5, 0.5)
        if cls is HNNCELoss
        else naive_clip_in(x, y, torch.zeros(5, 0, 4, dtype=F64), loss.log_scale)
    )
    assert_values_and_grads(got, want, (x, y, loss.log_scale))
    with torch.no_grad():
        loss.log_scale.fill_(10.0)
    loss.after_optimizer_step()
    assert loss.log_values()["logit_scale"] == pytest.approx(100.0, rel=1e-9)
    with torch.no_grad():
        loss.log_scale.fill_(-1.0)
    loss.after_optimizer_step()
    assert loss.log_scale.item() == 0.0


def test_clip_in_module_takes_negatives_as_a_batch_field(rng):
    loss = CLIPINLoss()
    x, y, negs = (
        torch.randn(4, 8, generator=rng),
        torch.randn(4, 8, generator=rng),
        torch.randn(4, 3, 8, generator=rng),
    )
    assert "negatives" in loss.accepts
    torch.testing.assert_close(
        loss(x, y, negatives=negs), clip_in_loss(x, y, loss.log_scale.exp(), negatives=negs)
    )
    assert loss(x, y, negatives=negs) > loss(x, y)  # extra negatives only add denominator mass


def test_half_precision_is_computed_in_float32(rng):
    x, y = torch.randn(6, 8, generator=rng), torch.randn(6, 8, generator=rng)
    for fn in FUNCS.values():
        got = fn(x.bfloat16(), y.bfloat16())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, fn(x.bfloat16().float(), y.bfloat16().float()))
