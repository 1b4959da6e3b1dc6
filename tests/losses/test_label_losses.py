"""Label-style losses (catlip, tagalign, mlcd, squentropy, harmonic) against naive float64 loops."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.classification import (
    harmonic_contrastive_loss,
    harmonic_logits,
    harmonic_loss,
    squentropy_contrastive_loss,
    squentropy_loss,
)
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.labels import CatLIPLoss, TagAlignLoss, catlip_loss, concept_targets, tagalign_loss
from contrastkit.losses.mlcd import MLCDLoss, assign_positives, fit_prototypes, mlcd_loss

F64 = torch.float64


def randn(*shape, rng, grad=True):
    return torch.randn(*shape, generator=rng, dtype=F64, requires_grad=grad)


def unit(v):
    return v / v.norm()


def close_all(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------------------- concept targets
def test_concept_targets_parse_lower_case_words_with_stop_words():
    vocab = ["cat", "Dog", "red", "the"]
    got = concept_targets(
        ["A RED cat, a red CAT!", "the dog's bowl", "", "t-shirt on a hotdog"], vocab, stop_words=["The"]
    )
    want = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(got, want)


def test_concept_targets_with_a_local_lexicon_map_words_to_synset_ids():
    # a tiny synthetic lexicon in the spirit of CatLIP's WordNet labelling (lemma → synset id)
    lexicon = {"dogs": "n02084071", "dog": "n02084071", "puppy": "n02084071", "cats": "n02121808"}
    vocab = ["n02121808", "n02084071"]
    got = concept_targets(["Two dogs and a puppy", "cats", "a horse"], vocab, lexicon=lexicon)
    torch.testing.assert_close(got, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]))


def test_concept_targets_errors():
    with pytest.raises(ConfigError, match="duplicate concept"):
        concept_targets(["a"], ["cat", "CAT"])
    with pytest.raises(InputError, match="list of captions"):
        concept_targets("a cat", ["cat"])


# ----------------------------------------------------------------------------- catlip
def naive_bce(x, w, b, t, reduction):
    n, c = t.shape
    total = 0.0
    for i in range(n):
        xi = unit(x[i])
        for k in range(c):
            z = (w[k] * xi).sum() + b[k]
            p = 1 / (1 + torch.exp(-z))
            total = total - (t[i, k] * torch.log(p) + (1 - t[i, k]) * torch.log(1 - p))
    return total / n if reduction == "batch_mean" else total / (n * c)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("reduction", ["batch_mean", "mean"])
def test_catlip_matches_naive(n, reduction, rng):
    x, w, b = randn(n, 4, rng=rng), randn(3, 4, rng=rng), randn(3, rng=rng)
    t = torch.rand(n, 3, generator=rng, dtype=F64).round()
    got = catlip_loss(x, t, w, b, reduction=reduction)
    close_all(got, naive_bce(x, w, b, t, reduction), (x, w, b))


def test_catlip_zero_head_gives_log2_per_concept_and_invariances(rng):
    x, t = randn(4, 3, rng=rng, grad=False), torch.rand(4, 5, generator=rng, dtype=F64).round()
    w, b = torch.zeros(5, 3, dtype=F64), torch.zeros(5, dtype=F64)
    assert catlip_loss(x, t, w, b).item() == pytest.approx(5 * math.log(2), abs=1e-12)
    assert catlip_loss(x, t, w, b, reduction="mean").item() == pytest.approx(math.log(2), abs=1e-12)
    w = randn(5, 3, rng=rng, grad=False)
    base = catlip_loss(x, t, w, b)
    p = torch.randperm(4, generator=rng)
    torch.testing.assert_close(catlip_loss(x[p], t[p], w, b), base)
    torch.testing.assert_close(catlip_loss(3.0 * x, t, w, b), base)
    torch.testing.assert_close(catlip_loss(x, t.bool(), w, b), base)


def test_catlip_module_sizes_its_head_lazily_and_matches_the_pure_function(rng):
    loss = CatLIPLoss()
    x, t = torch.randn(4, 6, generator=rng), torch.rand(4, 7, generator=rng).round()
    got = loss(x, x, targets=t)
    assert tuple(loss.head.weight.shape) == (7, 6)
    torch.testing.assert_close(got, catlip_loss(x, t, loss.head.weight, loss.head.bias))
    got.backward()
    assert loss.head.weight.grad is not None
    explicit = CatLIPLoss(vocabulary=["cat", "dog"], dim=6)
    assert tuple(explicit.head.weight.shape) == (2, 6)
    torch.testing.assert_close(explicit.targets_for(["a dog"]), torch.tensor([[0.0, 1.0]]))


def test_catlip_errors(rng):
    loss = CatLIPLoss(num_concepts=3, dim=4)
    x = torch.randn(2, 4)
    with pytest.raises(InputError, match="needs the batch field targets"):
        loss(x, x)
    with pytest.raises(InputError, match="C=3 columns"):
        loss(x, x, targets=torch.zeros(2, 5))
    with pytest.raises(InputError, match=r"shape \[N, C\] with N=2"):
        loss(x, x, targets=torch.zeros(3, 3))
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        loss(x, x, targets=torch.full((2, 3), 2.0))
    with pytest.raises(InputError, match="does not use"):
        loss(x, x, targets=torch.zeros(2, 3), labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="reduction"):
        CatLIPLoss(reduction="sum")
    with pytest.raises(ConfigError, match="vocabulary has 2"):
        CatLIPLoss(num_concepts=3, vocabulary=["a", "b"])


# ----------------------------------------------------------------------------- tagalign
def naive_clip(x, y, s):
    n = x.shape[0]
    logits = [[s * (unit(x[i]) * unit(y[j])).sum() for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        total = total - (logits[i][i] - torch.logsumexp(torch.stack(logits[i]), 0)) / (2 * n)
        col = torch.stack([logits[k][i] for k in range(n)])
        total = total - (logits[i][i] - torch.logsumexp(col, 0)) / (2 * n)
    return total


@pytest.mark.parametrize("n", [2, 5])
def test_tagalign_matches_naive(n, rng):
    x, y, w, b = randn(n, 4, rng=rng), randn(n, 4, rng=rng), randn(3, 4, rng=rng), randn(3, rng=rng)
    log_s = torch.tensor(2.0, dtype=F64, requires_grad=True)
    t = torch.rand(n, 3, generator=rng, dtype=F64).round()
    got = tagalign_loss(x, y, t, w, b, log_s.exp(), lambda_con=0.7, lambda_tag=1.3)
    want = 0.7 * naive_clip(x, y, log_s.exp()) + 1.3 * naive_bce(x, w, b, t, "mean")
    close_all(got, want, (x, y, w, b, log_s))


def test_tagalign_module_logs_both_terms_and_reduces_to_clip(rng):
    loss = TagAlignLoss(num_concepts=3, dim=4, lambda_tag=0.5).double()
    x, y = randn(5, 4, rng=rng, grad=False), randn(5, 4, rng=rng, grad=False)
    t = torch.rand(5, 3, generator=rng, dtype=F64).round()
    got = loss(x, y, targets=t)
    h, s = loss.head, loss.log_scale.exp()
    con, tag = clip_loss(x, y, s), catlip_loss(x, t, h.weight, h.bias, reduction="mean")
    torch.testing.assert_close(got, con + 0.5 * tag)
    logs = loss.log_values()
    assert logs["loss/contrastive"] == pytest.approx(con.item(), rel=1e-12)
    assert logs["loss/tag"] == pytest.approx(tag.item(), rel=1e-12)
    assert logs["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6)
    no_tag = TagAlignLoss(num_concepts=3, dim=4, lambda_tag=0.0).double()
    assert torch.equal(no_tag(x, y, targets=t), clip_loss(x, y, no_tag.log_scale.exp()))
    with torch.no_grad():
        loss.log_scale.fill_(9.0)
    loss.after_optimizer_step()
    assert loss.log_scale.item() == pytest.approx(math.log(100.0))
    with pytest.raises(InputError, match="batch of 1 pair"):
        loss(x[:1], y[:1], targets=t[:1])


# ----------------------------------------------------------------------------- mlcd
def naive_mlcd(x, w, pos, cand, s):
    total = 0.0
    n = x.shape[0]
    for i in range(n):
        c = [(unit(x[i]) * unit(w[j])).sum() for j in range(w.shape[0])]
        p = [int(j) for j in pos[i]]
        negs = [int(j) for j in cand if int(j) not in p]
        total = total + torch.log(1 + sum((torch.exp(s * c[j]) for j in negs), torch.tensor(0.0, dtype=F64)))
        total = total + torch.log(1 + sum(torch.exp(-s * c[j]) for j in p))
    return total / n


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("sampled", [False, True])
def test_mlcd_matches_naive(n, sampled, rng):
    x, w = randn(n, 4, rng=rng), randn(7, 4, rng=rng)
    pos = torch.stack([torch.randperm(7, generator=rng)[:3] for _ in range(n)])
    cand = torch.tensor([5, 0, 2, 6]) if sampled else None
    got = mlcd_loss(x, w, pos, candidates=cand, scale=4.0)
    want = naive_mlcd(x, w, pos, cand if sampled else torch.arange(7), 4.0)
    close_all(got, want, (x, w))


def test_mlcd_one_positive_no_negatives_is_softplus(rng):
    x, w = randn(3, 4, rng=rng, grad=False), randn(1, 4, rng=rng, grad=False)
    c = torch.nn.functional.cosine_similarity(x, w)
    got = mlcd_loss(x, w, torch.zeros(3, 1, dtype=torch.long), scale=32.0)
    torch.testing.assert_close(got, torch.nn.functional.softplus(-32.0 * c).mean())
    w2 = torch.cat([w, -w])  # a negative at cosine −c: exact extra term softplus(−32c)
    got2 = mlcd_loss(x, w2, torch.zeros(3, 1, dtype=torch.long), scale=32.0)
    torch.testing.assert_close(got2, 2 * torch.nn.functional.softplus(-32.0 * c).mean())


def test_mlcd_invariances(rng):
    x, w = randn(6, 4, rng=rng, grad=False), randn(9, 4, rng=rng, grad=False)
    pos = assign_positives(x, w, 2)
    base = mlcd_loss(x, w, pos)
    p = torch.randperm(6, generator=rng)
    torch.testing.assert_close(mlcd_loss(x[p], w, pos[p]), base)
    q = torch.randperm(9, generator=rng)  # relabelling the prototypes
    inv = torch.argsort(q)
    torch.testing.assert_close(mlcd_loss(2.0 * x, w[q], inv[pos]), base)


def test_assign_positives_are_the_l_nearest_centres(rng):
    x, w = randn(5, 3, rng=rng, grad=False), randn(8, 3, rng=rng, grad=False)
    got = assign_positives(x, w, 3)
    for i in range(5):
        cos = [float((unit(x[i]) * unit(w[j])).sum()) for j in range(8)]
        assert sorted(got[i].tolist()) == sorted(sorted(range(8), key=lambda j, cos=cos: -cos[j])[:3])


def naive_kmeans(z, init, iters):
    centres = [c.clone() for c in init]
    for _ in range(iters):
        groups = [[] for _ in centres]
        for v in z:
            groups[min(range(len(centres)), key=lambda k: float(((v - centres[k]) ** 2).sum()))].append(v)
        centres = [torch.stack(g).mean(0) if g else c for g, c in zip(groups, centres)]
    return torch.stack(centres)


def test_fit_prototypes_is_seeded_lloyd(rng):
    z = torch.randn(40, 3, generator=rng, dtype=F64)
    got = fit_prototypes(z, 4, iters=6, seed=3, normalize=False)
    init = z[torch.randperm(40, generator=torch.Generator().manual_seed(3))[:4]]
    torch.testing.assert_close(got, naive_kmeans(z, init, 6), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fit_prototypes(z, 4, iters=6, seed=3, normalize=False), got, rtol=0, atol=0)
    assert not torch.equal(fit_prototypes(z, 4, iters=0, seed=4, normalize=False), got)
    blobs = torch.cat([torch.randn(30, 2, generator=rng, dtype=F64) * 0.01 + c for c in (-5.0, 5.0)])
    found = fit_prototypes(blobs, 2, normalize=False).sum(1).sort().values
    torch.testing.assert_close(found, torch.tensor([-10.0, 10.0], dtype=F64), atol=0.02, rtol=0)
    with pytest.raises(ConfigError, match="1 <= k <= N"):
        fit_prototypes(z, 41)


def test_mlcd_module_prototypes_positives_and_seeded_sampling(rng):
    loss = MLCDLoss(num_positives=2, scale=8.0, sample_ratio=0.5, seed=1).double()
    x = randn(6, 4, rng=rng, grad=False)
    with pytest.raises(InputError, match="no prototypes"):
        loss(x, x)
    loss.fit(torch.randn(50, 4, generator=rng, dtype=F64), k=10)
    assert tuple(loss.prototypes.shape) == (10, 4)
    cand = loss.candidates()
    assert cand.shape == (5,) and torch.equal(cand, loss.candidates())
    got = loss(x, x)
    want = mlcd_loss(x, loss.prototypes, assign_positives(x, loss.prototypes, 2), candidates=cand, scale=8.0)
    torch.testing.assert_close(got, want)
    assert int(loss.step) == 1 and not torch.equal(loss.candidates(), cand)
    pos = torch.tensor([[0, 1]] * 6)
    loss.eval()
    torch.testing.assert_close(
        loss(x, positives=pos), mlcd_loss(x, loss.prototypes, pos, candidates=loss.candidates(), scale=8.0)
    )
    assert int(loss.step) == 1  # eval does not advance the sampler
    fresh = MLCDLoss(num_positives=2, sample_ratio=0.5, seed=1).double()
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.prototypes, loss.prototypes) and torch.equal(
        fresh.candidates(), loss.candidates()
    )


def test_mlcd_errors(rng):
    x, w = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(InputError, match=r"in \[0, 5\)"):
        mlcd_loss(x, w, torch.tensor([[0], [5]]))
    with pytest.raises(InputError, match="must not repeat"):
        mlcd_loss(x, w, torch.tensor([[1, 1], [0, 2]]))
    with pytest.raises(InputError, match=r"shape \[N, l\] with N=2"):
        mlcd_loss(x, w, torch.tensor([[1]]))
    with pytest.raises(InputError, match="d=4"):
        mlcd_loss(x, torch.randn(5, 3), torch.tensor([[0], [1]]))
    with pytest.raises(ConfigError, match="sample_ratio"):
        MLCDLoss(sample_ratio=0.0)


# ----------------------------------------------------------------------------- squentropy
@pytest.mark.parametrize("n,c", [(1, 2), (2, 3), (5, 4)])
def test_squentropy_matches_naive_and_analytic_gradient(n, c, rng):
    f = randn(n, c, rng=rng)
    target = torch.randint(0, c, (n,), generator=rng)
    got = squentropy_loss(f, target)
    want = 0.0
    for i in range(n):
        y = int(target[i])
        want = want - f[i, y] + torch.log(sum(torch.exp(f[i, j]) for j in range(c)))
        want = want + sum(f[i, j] ** 2 for j in range(c) if j != y) / (c - 1)
    close_all(got, want / n, (f,))
    (g,) = torch.autograd.grad(squentropy_loss(f, target), f)
    onehot = torch.nn.functional.one_hot(target, c).to(F64)
    analytic = (f.softmax(1) - onehot + 2 * f * (1 - onehot) / (c - 1)) / n
    torch.testing.assert_close(g, analytic, rtol=1e-10, atol=1e-12)


def test_squentropy_zero_logits_give_log_c_and_errors():
    assert squentropy_loss(torch.zeros(3, 5, dtype=F64), torch.tensor([0, 4, 2])).item() == pytest.approx(
        math.log(5), abs=1e-12
    )
    with pytest.raises(InputError, match="C >= 2"):
        squentropy_loss(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="LongTensor of shape"):
        squentropy_loss(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(InputError, match="class indices"):
        squentropy_loss(torch.zeros(2, 3), torch.tensor([0, 3]))


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("symmetric", [False, True])
def test_squentropy_contrastive_matches_naive(n, symmetric, rng):
    x, y = randn(n, 3, rng=rng), randn(n, 3, rng=rng)
    s = 5.0

    def direction(a, b):
        total = 0.0
        for i in range(n):
            f = [s * (unit(a[i]) * unit(b[j])).sum() for j in range(n)]
            total = total - f[i] + torch.logsumexp(torch.stack(f), 0)
            total = total + sum(f[j] ** 2 for j in range(n) if j != i) / (n - 1)
        return total / n

    want = 0.5 * (direction(x, y) + direction(y, x)) if symmetric else direction(x, y)
    close_all(squentropy_contrastive_loss(x, y, s, symmetric=symmetric), want, (x, y))


# ----------------------------------------------------------------------------- harmonic
def naive_harmonic_logits(x, w, n, eps):
    rows = []
    for i in range(len(x)):
        rows.append(
            torch.stack([-n * torch.log(((x[i] - w[c]) ** 2).sum().sqrt() + eps) for c in range(len(w))])
        )
    return torch.stack(rows)


@pytest.mark.parametrize("n_rows", [1, 2, 5])
def test_harmonic_matches_naive(n_rows, rng):
    x, w = randn(n_rows, 4, rng=rng), randn(3, 4, rng=rng)
    target = torch.randint(0, 3, (n_rows,), generator=rng)
    got = harmonic_loss(x, w, target, n=3.0)
    logits = naive_harmonic_logits(x, w, 3.0, 1e-8)
    want = sum(-(logits[i, target[i]] - torch.logsumexp(logits[i], 0)) for i in range(n_rows)) / n_rows
    close_all(got, want, (x, w))
    default_n = harmonic_logits(x, w)  # n = sqrt(D) = 2
    torch.testing.assert_close(default_n, naive_harmonic_logits(x, w, 2.0, 1e-8))


def test_harmonic_spec_oracles(rng):
    x, w = randn(4, 3, rng=rng, grad=False), randn(5, 3, rng=rng, grad=False)
    p = harmonic_logits(x, w, 2.0).softmax(1)
    torch.testing.assert_close(p.sum(1), torch.ones(4, dtype=F64))
    p0 = harmonic_logits(x, w, 2.0, eps=0.0).softmax(1)
    torch.testing.assert_close(harmonic_logits(7.0 * x, 7.0 * w, 2.0, eps=0.0).softmax(1), p0)
    d = torch.stack([torch.stack([(x[i] - w[c]).norm() for c in range(5)]) for i in range(4)])
    torch.testing.assert_close(p0, d**-2.0 / (d**-2.0).sum(1, keepdim=True))  # harmonic max, p_c ∝ d_c^−n
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=F64)
    uniform = harmonic_logits(torch.zeros(1, 2, dtype=F64), square, 5.0).softmax(1)
    torch.testing.assert_close(uniform, torch.full((1, 4), 0.25, dtype=F64))
    near = harmonic_logits(w[2:3] + 1e-6, w, 2.0).softmax(1)
    assert near[0, 2].item() > 1 - 1e-6
    xx = w[:2].clone().requires_grad_(True)  # distance exactly 0: finite gradient
    (g,) = torch.autograd.grad(harmonic_loss(xx, w, torch.tensor([0, 1])), xx)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("symmetric", [False, True])
def test_harmonic_contrastive_matches_naive(n, symmetric, rng):
    x, y = randn(n, 3, rng=rng), randn(n, 3, rng=rng)

    def direction(a, b):
        a = torch.stack([unit(v) for v in a])
        b = torch.stack([unit(v) for v in b])
        logits = naive_harmonic_logits(a, b, 1.5, 1e-8)
        return sum(-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(n)) / n

    want = 0.5 * (direction(x, y) + direction(y, x)) if symmetric else direction(x, y)
    close_all(harmonic_contrastive_loss(x, y, n=1.5, symmetric=symmetric), want, (x, y))
    p = torch.randperm(n, generator=rng)
    torch.testing.assert_close(
        harmonic_contrastive_loss(x[p], 2.0 * y[p], n=1.5, symmetric=symmetric),
        harmonic_contrastive_loss(x, y, n=1.5, symmetric=symmetric),
    )


def test_contrastive_classification_needs_two_rows():
    x = torch.randn(1, 3)
    with pytest.raises(InputError, match="N >= 2"):
        squentropy_contrastive_loss(x, x)
    with pytest.raises(InputError, match="N >= 2"):
        harmonic_contrastive_loss(x, x)
    with pytest.raises(InputError, match="batch size mismatch"):
        harmonic_contrastive_loss(torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ConfigError, match="n > 0"):
        LOSSES.build("harmonic", n=-1.0)


# ----------------------------------------------------------------------------- registry
def test_registered_names_build_and_run_on_float32(rng):
    x, y = torch.randn(6, 8, generator=rng), torch.randn(6, 8, generator=rng)
    t = torch.rand(6, 5, generator=rng).round()
    for name in ("squentropy", "harmonic"):
        loss = LOSSES.build(name)
        fn, kw = loss.pure()
        out = loss(x, y)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        torch.testing.assert_close(out, fn(x, y, **kw))
    assert torch.isfinite(LOSSES.build("catlip")(x, y, targets=t))
    assert torch.isfinite(LOSSES.build("tagalign")(x, y, targets=t))
    mlcd = LOSSES.build("mlcd", num_positives=2)
    mlcd.fit(torch.randn(40, 8, generator=rng), k=6)
    assert torch.isfinite(mlcd(x, y))
