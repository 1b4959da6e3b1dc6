"""L-MAXSIM and L-QFORMER-ITC against naive float64 formulas (values and gradients), and the
Q-Former's defining properties: one query = CLIP with label smoothing 0.1, query order does not
matter, only each pair's argmax query gets gradient."""

import pytest
import torch
import torch.nn.functional as F

from contrastkit import losses
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.late_interaction import late_interaction_loss, late_interaction_scores
from tests.losses.test_maxsim import _naive


def _packed(gen, n, t, dim, min_real=1):
    """Token sets with zero padding rows (random lengths ≥ min_real), unnormalised."""
    x = torch.randn(n, t, dim, generator=gen, dtype=torch.float64)
    lengths = torch.randint(min_real, t + 1, (n,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return (x * mask[..., None]).requires_grad_(), mask


def _reference(x, xm, y, ym, scale, ls, symmetric, mode="v2"):
    s = _naive(F.normalize(y, dim=-1), F.normalize(x, dim=-1), ym, xm, mode) * scale
    target = torch.arange(x.shape[0])
    loss = F.cross_entropy(s, target, label_smoothing=ls)
    return 0.5 * (loss + F.cross_entropy(s.T, target, label_smoothing=ls)) if symmetric else loss


@pytest.mark.parametrize(
    ("symmetric", "ls", "mode"), [(False, 0.0, "v2"), (True, 0.1, "v2"), (True, 0.0, "zero_vector")]
)
def test_loss_equals_the_naive_formula(rng, symmetric, ls, mode):
    x, xm = _packed(rng, 5, 6, 4)
    y, ym = _packed(rng, 5, 3, 4)
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    got = late_interaction_loss(
        x, y, scale, symmetric=symmetric, label_smoothing=ls, doc_mask_mode=mode, tile=2
    )
    want = _reference(x, xm, y, ym, scale, ls, symmetric, mode)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    for g, r in zip(
        torch.autograd.grad(got, (x, y, scale)), torch.autograd.grad(want, (x, y, scale)), strict=True
    ):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_hard_negatives_are_extra_columns_and_colbert_v1_pairwise(rng):
    x, xm = _packed(rng, 4, 5, 3)
    y, ym = _packed(rng, 4, 3, 3)
    neg = torch.randn(4, 2, 5, 3, generator=rng, dtype=torch.float64)
    neg[:, :, 4] = 0.0  # one padding row each
    nm = torch.ones(4, 2, 5, dtype=torch.bool)
    nm[:, :, 4] = False
    yn, xn, nn_ = (F.normalize(t, dim=-1) for t in (y, x, neg))
    in_batch = _naive(yn, xn, ym, xm, "v2")
    negs = torch.stack([_naive(yn[i : i + 1], nn_[i], ym[i : i + 1], nm[i], "v2")[0] for i in range(4)])
    full = late_interaction_loss(x, y, 1.0, negatives=neg)
    torch.testing.assert_close(
        full, F.cross_entropy(torch.cat([in_batch, negs], 1), torch.arange(4)), rtol=0, atol=1e-13
    )
    pairwise = late_interaction_loss(x, y, 1.0, negatives=neg[:, :1], in_batch_negatives=False)
    logits = torch.stack([in_batch.diagonal(), negs[:, 0]], 1)  # (positive, one negative), target 0
    torch.testing.assert_close(
        pairwise, F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)), rtol=0, atol=1e-13
    )
    with pytest.raises(InputError, match="in_batch_negatives=False needs negatives"):
        late_interaction_loss(x, y, 1.0, in_batch_negatives=False)


def test_one_query_is_clip_with_label_smoothing(rng):
    x = torch.randn(6, 8, generator=rng, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 8, generator=rng, dtype=torch.float64, requires_grad=True)
    temp = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    qf = late_interaction_loss(x[:, None, :], y, 1.0 / temp, symmetric=True, label_smoothing=0.1)
    logits = (F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T) / temp
    target = torch.arange(6)
    ref = 0.5 * (
        F.cross_entropy(logits, target, label_smoothing=0.1)
        + F.cross_entropy(logits.T, target, label_smoothing=0.1)
    )
    torch.testing.assert_close(qf, ref, rtol=0, atol=1e-13)
    for g, r in zip(
        torch.autograd.grad(qf, (x, y, temp)), torch.autograd.grad(ref, (x, y, temp)), strict=True
    ):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)
    # without smoothing: contrastkit's own CLIP loss (module form, one query vector per image)
    module = losses.build("qformer_itc", label_smoothing=0.0).double()
    a = module(x[:, None, :], y)
    b = clip_loss(x, y, 1.0 / module.temp)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    for g, r in zip(torch.autograd.grad(a, (x, y)), torch.autograd.grad(b, (x, y)), strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_permuting_the_queries_leaves_the_loss_unchanged(rng):
    x = torch.randn(5, 4, 6, generator=rng, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 6, generator=rng, dtype=torch.float64)
    loss = losses.build("qformer_itc").double()
    perm = torch.tensor([2, 0, 3, 1])
    xp = x.detach()[:, perm].requires_grad_()
    a, b = loss(x, y), loss(xp, y)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    (ga,), (gb,) = torch.autograd.grad(a, (x,)), torch.autograd.grad(b, (xp,))
    torch.testing.assert_close(ga[:, perm], gb, rtol=0, atol=1e-14)  # the gradient moves with its query


def test_gradient_reaches_only_each_pairs_argmax_query(rng):
    n, k, d = 4, 3, 5
    # texts and queries 0, 1 in the positive orthant (positive similarities); query 2 of every
    # image in the negative one: it never wins a max
    y = F.normalize(torch.randn(n, d, generator=rng, dtype=torch.float64).abs(), dim=-1)
    x = F.normalize(torch.randn(n, k, d, generator=rng, dtype=torch.float64).abs(), dim=-1)
    x[:, 2] = -x[:, 2]
    x.requires_grad_()
    sims = torch.einsum("ikd,jd->ijk", x.detach(), y)  # [image, text, query]
    best = sims.argmax(-1)
    loss = late_interaction_loss(x, y, 1 / 0.07, symmetric=True, label_smoothing=0.1)
    (g,) = torch.autograd.grad(loss, (x,))
    winners = torch.zeros(n, k, dtype=torch.bool)
    winners[torch.arange(n)[:, None].expand(n, n), best] = True
    assert not g[~winners].any()  # exactly zero for every query that wins no pair
    assert bool((g[winners].abs().sum(-1) > 0).all())
    assert not winners[:, 2].any()
    for i in range(n):  # one score s(i, j): gradient only into query argmax_k of (i, j)
        for j in range(n):
            (gs,) = torch.autograd.grad(late_interaction_scores(x, y)[j, i], (x,))
            nz = gs.abs().sum(-1) > 0
            assert nz.sum() == 1 and bool(nz[i, best[i, j]])


def test_modules_scalars_and_errors(rng):
    m = losses.build("maxsim")
    assert m.log_values() == {"logit_scale": 1.0} and not m.log_scale.requires_grad  # ColBERT: τ = 1
    learn = losses.build("maxsim", tau=0.5, learnable=True, max_scale=10.0)
    with torch.no_grad():
        learn.log_scale.fill_(5.0)
    learn.after_optimizer_step()
    assert learn.log_values()["logit_scale"] == pytest.approx(10.0)
    q = losses.build("qformer_itc")
    assert q.temp.requires_grad and float(q.temp.detach()) == pytest.approx(0.07)
    with torch.no_grad():
        q.temp.fill_(-1.0)
    q.after_optimizer_step()
    assert float(q.temp.detach()) == pytest.approx(0.001)  # never a sign flip of the logits
    with pytest.raises(ConfigError, match="label_smoothing"):
        losses.build("qformer_itc", label_smoothing=1.0)
    with pytest.raises(ConfigError, match="below min_temperature"):
        losses.build("qformer_itc", init_temperature=0.0005)
    with pytest.raises(ConfigError, match="doc_mask_mode"):
        losses.build("maxsim", doc_mask_mode="v1")
    x = torch.randn(1, 3, 4)
    with pytest.raises(InputError, match="batch of 1 pair"):
        m(x, x)
    with pytest.raises(InputError, match="pair row by row"):
        m(torch.randn(3, 2, 4), torch.randn(2, 4))
