"""L-M3COL (MixCo, SoftCLIP, schedule) and L-METRIX against naive float64 loops and spec oracles."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.mixup import (
    M3CoLLoss,
    MetrixLoss,
    metrix_loss,
    mixco_loss,
    mixco_targets,
    softclip_loss,
)

F64 = torch.float64


def unit(v):
    return v / v.norm()


def naive_mix(v, partner, lam):
    """Normalise, mix row k with row partner[k] at weight lam[k], normalise again (loops)."""
    vn = [unit(v[k]) for k in range(v.shape[0])]
    return [unit(lam[k] * vn[k] + (1 - lam[k]) * vn[int(partner[k])]) for k in range(v.shape[0])]


def lse(values):
    return torch.logsumexp(torch.stack(values), 0)


def naive_mixco(x, y, perm, lam, tau):
    n = x.shape[0]
    a = naive_mix(x, perm, lam)
    b = [unit(y[j]) for j in range(n)]
    t = [[0.0] * n for _ in range(n)]
    for i in range(n):
        t[i][i] += float(lam[i])
        t[i][int(perm[i])] += 1 - float(lam[i])
    logit = [[(a[i] * b[j]).sum() / tau for j in range(n)] for i in range(n)]
    rows, cols = 0.0, 0.0
    for i in range(n):
        row_lse = lse(logit[i])
        for j in range(n):
            col_lse = lse([logit[k][j] for k in range(n)])
            rows = rows - t[i][j] * (logit[i][j] - row_lse)
            cols = cols - t[i][j] * (logit[i][j] - col_lse)
    return 0.5 * (rows / n + cols / n)


def naive_softclip(x, y, tau):
    n = x.shape[0]
    a = [unit(x[i]) for i in range(n)]
    b = [unit(y[i]) for i in range(n)]
    total = 0.0
    for i in range(n):
        bb = [(b[i] * b[j]).sum() / tau for j in range(n)]
        ab = [(a[i] * b[j]).sum() / tau for j in range(n)]
        ba = [(b[i] * a[j]).sum() / tau for j in range(n)]
        for j in range(n):
            p = torch.exp(bb[j] - lse(bb))
            total = total - 0.5 * p * ((ab[j] - lse(ab)) + (ba[j] - lse(ba))) / n
    return total


def naive_metrix(x, y, lam, neg, labels, tau, w):
    n = x.shape[0]
    same = [
        [i == j if labels is None else int(labels[i]) == int(labels[j]) for j in range(n)] for i in range(n)
    ]
    xs, ys = [unit(x[i]) for i in range(n)], [unit(y[i]) for i in range(n)]
    xm, ym = naive_mix(x, neg, lam), naive_mix(y, neg, lam)

    def soft_ce(anchors, cands, target):
        total, rows = 0.0, 0
        for i in range(n):
            mass = sum(target(i, k) for k in range(n))
            if mass == 0:
                continue
            logit = [(anchors[i] * cands[k]).sum() / tau for k in range(n)]
            z = lse(logit)
            total = total - sum(target(i, k) / mass * (logit[k] - z) for k in range(n))
            rows += 1
        return total / rows

    def clean_t(i, k):
        return float(same[i][k])

    def mix_t(i, k):
        return float(lam[k]) * same[i][k] + (1 - float(lam[k])) * same[i][int(neg[k])]

    clean = 0.5 * (soft_ce(xs, ys, clean_t) + soft_ce(ys, xs, clean_t))
    mix = 0.5 * (soft_ce(xs, ym, mix_t) + soft_ce(ys, xm, mix_t))
    return clean + w * mix


def grads_close(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def pair(n, d, rng):
    x = torch.randn(n, d, generator=rng, dtype=F64, requires_grad=True)
    y = torch.randn(n, d, generator=rng, dtype=F64, requires_grad=True)
    return x, y


# ------------------------------------------------------------------ MixCo / SoftCLIP


@pytest.mark.parametrize("n,d", [(1, 3), (2, 3), (5, 4), (8, 6)])
def test_mixco_matches_naive(n, d, rng):
    x, y = pair(n, d, rng)
    perm = torch.randperm(n, generator=rng)
    lam = torch.rand(n, generator=rng, dtype=F64)
    lam[0] = 1.0  # an unmixed row
    got = mixco_loss(x, y, perm, lam, temperature=0.1, allow_single=True)
    grads_close(got, naive_mixco(x, y, perm, lam, 0.1), (x, y))


def test_mixco_fixed_point_uses_plus_equals(rng):
    """π(i) = i with λ_i < 1: target T_ii = λ_i + (1 − λ_i) = 1 (the reference would give 1 − λ_i)."""
    perm = torch.tensor([0, 2, 1, 3])
    lam = torch.tensor([0.3, 0.6, 1.0, 0.2], dtype=F64)
    t = mixco_targets(perm, lam)
    torch.testing.assert_close(t.sum(1), torch.ones(4, dtype=F64))
    assert t[0, 0].item() == 1.0 and t[3, 3].item() == 1.0
    assert t[1, 1].item() == pytest.approx(0.6) and t[1, 2].item() == pytest.approx(0.4)
    x, y = pair(4, 5, rng)
    grads_close(mixco_loss(x, y, perm, lam), naive_mixco(x, y, perm, lam, 0.1), (x, y))


def test_mixco_all_beta_one_is_clip(rng):
    x, y = pair(7, 5, rng)
    perm = torch.randperm(7, generator=rng)
    got = mixco_loss(x, y, perm, torch.ones(7, dtype=F64), temperature=0.1)
    grads_close(got, clip_loss(x, y, 1 / 0.1), (x, y))


def test_mixco_targets_rows_sum_to_one_for_random_draws(rng):
    perm, lam = M3CoLLoss(seed=3).draw(50)
    torch.testing.assert_close(mixco_targets(perm, lam).sum(1), torch.ones(50, dtype=F64))


@pytest.mark.parametrize("n", [2, 6])
def test_softclip_matches_naive(n, rng):
    x, y = pair(n, 4, rng)
    grads_close(softclip_loss(x, y, temperature=0.125), naive_softclip(x, y, 0.125), (x, y))


def test_softclip_orthonormal_limit():
    """Orthonormal b at small τ′: targets → identity, loss → CLIP at scale 1/τ′ (≈ 0)."""
    e = torch.eye(4, dtype=F64)
    got = softclip_loss(e, e, temperature=0.01)
    assert got.item() == pytest.approx(clip_loss(e, e, 100.0).item(), abs=1e-30)
    assert got.item() < 1e-40


def test_mixco_and_softclip_invariances(rng):
    x, y = pair(6, 4, rng)
    perm = torch.randperm(6, generator=rng)
    lam = torch.rand(6, generator=rng, dtype=F64)
    base = mixco_loss(x, y, perm, lam)
    q = torch.randperm(6, generator=rng)
    q_inv = torch.argsort(q)
    # relabel the batch by q: the permutation is conjugated, λ follows its row
    torch.testing.assert_close(mixco_loss(x[q], y[q], q_inv[perm[q]], lam[q]), base)
    torch.testing.assert_close(mixco_loss(3.0 * x, 0.5 * y, perm, lam), base)
    torch.testing.assert_close(softclip_loss(x[q], y[q]), softclip_loss(x, y))
    torch.testing.assert_close(softclip_loss(2.0 * x, 7.0 * y), softclip_loss(x, y))


def test_mixco_single_pair_error_and_bad_draws(rng):
    x, y = pair(3, 4, rng)
    lam = torch.ones(3, dtype=F64)
    with pytest.raises(InputError, match="batch of 1 pair"):
        mixco_loss(x[:1], y[:1], torch.tensor([0]), lam[:1])
    with pytest.raises(InputError, match="batch of 1 pair"):
        softclip_loss(x[:1], y[:1])
    with pytest.raises(InputError, match="permutation"):
        mixco_loss(x, y, torch.tensor([0, 0, 1]), lam)
    with pytest.raises(InputError, match="outside"):
        mixco_loss(x, y, torch.tensor([0, 1, 3]), lam)
    with pytest.raises(InputError, match=r"lam must lie in \[0, 1\]"):
        mixco_loss(x, y, torch.tensor([0, 1, 2]), torch.tensor([0.5, 1.5, 1.0], dtype=F64))
    with pytest.raises(InputError, match=r"lam must be a float tensor of shape \[N\]"):
        mixco_loss(x, y, torch.tensor([0, 1, 2]), torch.ones(2, dtype=F64))
    with pytest.raises(InputError, match="batch size mismatch"):
        mixco_loss(x, y[:2], torch.tensor([0, 1, 2]), lam)


# ------------------------------------------------------------------ M3CoL module


def test_m3col_draws_follow_beta_and_bernoulli():
    perm, lam = M3CoLLoss(seed=1).draw(20000)
    assert torch.equal(perm.sort().values, torch.arange(20000))
    mixed = lam[lam < 1]
    assert abs(len(mixed) / 20000 - 0.5) < 0.02  # Bernoulli(0.5)
    var = 0.15 * 0.15 / (0.3**2 * 1.3)  # Beta(0.15, 0.15): mean 1/2, variance αβ/((α+β)²(α+β+1))
    assert abs(mixed.mean().item() - 0.5) < 0.02
    assert abs(mixed.var().item() - var) < 0.01


def test_m3col_schedule_determinism_and_resume(rng):
    x, y = (torch.randn(6, 4, generator=rng, dtype=F64) for _ in range(2))
    loss = M3CoLLoss(total_steps=10, mixup_pct=0.3)
    twin = M3CoLLoss(total_steps=10, mixup_pct=0.3)
    perm, lam = loss.draw(6)
    torch.testing.assert_close(loss(x, y), mixco_loss(x, y, perm, lam))
    assert loss(x, y).item() == loss(x, y).item() == twin(x, y).item()  # same step, same draws
    loss.after_optimizer_step()
    assert loss(x, y).item() != twin(x, y).item()  # the next step draws anew
    twin.load_state_dict(loss.state_dict())  # resume: the step is a buffer
    assert twin(x, y).item() == loss(x, y).item()
    phases = []
    for _ in range(5):
        phases.append(loss.current_phase())
        loss.after_optimizer_step()
    assert phases == ["mixco", "mixco", "softclip", "softclip", "softclip"]  # steps 1..5, mix < 3
    torch.testing.assert_close(loss(x, y), softclip_loss(x, y))
    assert loss.log_values() == {"m3col_mixco": 0.0}
    fixed = M3CoLLoss(phase="softclip")
    torch.testing.assert_close(fixed(x, y), softclip_loss(x, y))


def test_m3col_different_seeds_draw_differently():
    assert not torch.equal(M3CoLLoss(seed=0).draw(30)[0], M3CoLLoss(seed=1).draw(30)[0])


def test_m3col_config_errors():
    with pytest.raises(ConfigError, match="phase"):
        M3CoLLoss(phase="mix")
    with pytest.raises(ConfigError, match="total_steps"):
        M3CoLLoss(total_steps=0)
    with pytest.raises(ConfigError, match="mixup_pct"):
        M3CoLLoss(mixup_pct=1.5)


# ------------------------------------------------------------------ Metrix


@pytest.mark.parametrize("n,with_labels", [(2, False), (5, False), (6, True), (8, True)])
def test_metrix_matches_naive(n, with_labels, rng):
    x, y = pair(n, 4, rng)
    labels = torch.randint(0, 3, (n,), generator=rng) if with_labels else None
    lam, neg = MetrixLoss(seed=2).draw(n, labels)
    got = metrix_loss(x, y, lam, neg, labels, temperature=0.2, weight=0.7)
    grads_close(got, naive_metrix(x, y, lam, neg, labels, 0.2, 0.7), (x, y))


def test_metrix_lambda_one_and_zero_reduce_to_the_clean_loss(rng):
    x, y = pair(6, 5, rng)
    neg = torch.tensor([1, 2, 3, 4, 5, 0])

    def clip():
        return clip_loss(x, y, 1 / 0.1)

    # λ ≡ 1: the mixed examples are the positives themselves
    grads_close(metrix_loss(x, y, torch.ones(6, dtype=F64), neg), 2 * clip(), (x, y))
    # λ ≡ 0 with a permutation of negatives: the unmixed negatives with their own targets
    grads_close(metrix_loss(x, y, torch.zeros(6, dtype=F64), neg, weight=0.5), 1.5 * clip(), (x, y))
    grads_close(metrix_loss(x, y, torch.full((6,), 0.3, dtype=F64), neg, weight=0.0), clip(), (x, y))


def test_metrix_distinct_labels_equal_no_labels(rng):
    x, y = pair(5, 4, rng)
    lam, neg = MetrixLoss().draw(5)
    want = metrix_loss(x, y, lam, neg)
    torch.testing.assert_close(metrix_loss(x, y, lam, neg, torch.tensor([4, 1, 0, 2, 3])), want)


def test_metrix_draws_negatives(rng):
    n = 40
    lam, neg = MetrixLoss(seed=4).draw(n)
    assert bool((neg != torch.arange(n)).all()) and bool(((lam > 0) & (lam < 1)).all())
    labels = torch.randint(0, 4, (n,), generator=rng)
    labels[-1] = 9  # the only one of its class: every other row can use it
    lam, neg = MetrixLoss(seed=4).draw(n, labels)
    assert bool((labels[neg] != labels).all())
    lam, neg = MetrixLoss().draw(3, torch.tensor([1, 1, 1]))  # no negatives anywhere: unmixed
    assert torch.equal(neg, torch.arange(3)) and bool((lam == 1).all())
    big = MetrixLoss(seed=0).draw(20000)[0]
    assert abs(big.mean().item() - 0.5) < 0.01 and abs(big.var().item() - 0.05) < 0.003  # Beta(2, 2)


def test_metrix_module_matches_pure_and_permutation_invariance(rng):
    x, y = pair(6, 4, rng)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    loss = MetrixLoss(alpha=2.0, weight=1.0)
    lam, neg = loss.draw(6, labels)
    torch.testing.assert_close(loss(x, y, labels=labels), metrix_loss(x, y, lam, neg, labels))
    q = torch.randperm(6, generator=rng)
    q_inv = torch.argsort(q)
    got = metrix_loss(x[q], y[q], lam[q], q_inv[neg[q]], labels[q])
    torch.testing.assert_close(got, metrix_loss(x, y, lam, neg, labels))


def test_metrix_bad_input(rng):
    x, y = pair(4, 3, rng)
    lam = torch.ones(4, dtype=F64)
    neg = torch.tensor([1, 2, 3, 0])
    with pytest.raises(InputError, match="N >= 2"):
        metrix_loss(x[:1], y[:1], lam[:1], neg[:1] * 0)
    with pytest.raises(InputError, match="N >= 2"):
        MetrixLoss()(x[:1], y[:1])
    with pytest.raises(InputError, match=r"labels must be an integer tensor of shape \[N\]"):
        metrix_loss(x, y, lam, neg, torch.tensor([0, 1]))
    with pytest.raises(InputError, match="neg holds indices outside"):
        metrix_loss(x, y, lam, torch.tensor([1, 2, 3, 4]))
    with pytest.raises(InputError, match="does not use"):
        M3CoLLoss()(x, y, labels=torch.arange(4))


# ------------------------------------------------------------------ registry


@pytest.mark.parametrize("name", ["m3col", "metrix"])
def test_registered_and_runs_on_float32(name, rng):
    loss = LOSSES.build(name)
    x, y = torch.randn(16, 8, generator=rng), torch.randn(16, 8, generator=rng)
    value = loss(x, y)
    assert value.dtype == torch.float32 and math.isfinite(value.item()) and value.item() > 0
    half = loss(x.bfloat16(), y.bfloat16())
    assert half.dtype == torch.float32
