"""D-BMM-NOISE: the beta mixture against closed forms, scipy, a naive EM and known mixtures."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from contrastkit.core.errors import InputError
from contrastkit.train.bmm import (
    LOOKUP_SIZE,
    BetaMixture,
    beta_moments,
    fit_beta_mixture,
    fit_noise_model,
    loss_scaling,
    noise_probability,
)


def mixture_sample(n, pi1, clean, noisy, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.random(n) < pi1
    return np.where(z, rng.beta(*noisy, n), rng.beta(*clean, n))


def test_method_of_moments_closed_form_and_recovery():
    x, w = np.array([0.1, 0.2, 0.6]), np.ones(3)
    m, v = 0.3, ((0.2**2) + (0.1**2) + (0.3**2)) / 3  # mean 0.3, variance 0.04667
    a, b = beta_moments(x, w)
    assert a == pytest.approx(m * (m * (1 - m) / v - 1), rel=1e-12)
    assert b == pytest.approx(a * (1 - m) / m, rel=1e-12)
    assert (a, b) == pytest.approx((1.05, 2.45), rel=1e-12)  # m(1−m)/v − 1 = 3.5
    draws = np.random.default_rng(1).beta(2, 5, 200_000)
    a, b = beta_moments(draws, np.ones_like(draws))
    assert a == pytest.approx(2, rel=0.03) and b == pytest.approx(5, rel=0.03)


def test_em_recovers_a_well_separated_mixture_in_ten_iterations():
    x = mixture_sample(20_000, 0.3, (2, 20), (20, 2))
    mix = fit_beta_mixture(x)
    assert mix.weights[1] == pytest.approx(0.3, abs=0.02)
    assert mix.means[0] == pytest.approx(1 / 11, abs=0.01) and mix.means[1] == pytest.approx(
        10 / 11, abs=0.01
    )
    assert mix.alphas[0] == pytest.approx(2, rel=0.05) and mix.betas[1] == pytest.approx(2, rel=0.05)


def test_em_needs_more_iterations_on_overlapping_components():
    x = mixture_sample(20_000, 0.3, (2, 8), (8, 2))
    assert fit_beta_mixture(x).weights[1] == pytest.approx(0.388, abs=0.01)  # 10 iterations under-fit
    assert fit_beta_mixture(x, max_iters=50).weights[1] == pytest.approx(0.3, abs=0.02)


def _pdf(x, a, b):  # the beta density from the gamma function, without scipy
    logc = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return np.exp(logc + (a - 1) * np.log(x) + (b - 1) * np.log1p(-x))


def naive_em(x, iters):
    x = np.clip(x, 1e-4, 1 - 1e-4)
    al, be, pi = [1.0, 2.0], [2.0, 1.0], [0.5, 0.5]
    for _ in range(iters):
        r = np.array([pi[k] * _pdf(x, al[k], be[k]) for k in (0, 1)])
        r = np.maximum(r, 1e-12)
        r = r / r.sum(0)
        for k in (0, 1):
            m = (r[k] * x).sum() / r[k].sum()
            v = (r[k] * (x - m) ** 2).sum() / r[k].sum()
            al[k] = m * (m * (1 - m) / v - 1)
            be[k] = al[k] * (1 - m) / m
        pi = list(r.sum(1) / len(x))
    return al, be, pi


def test_em_matches_a_naive_loop_to_rounding():
    x = mixture_sample(3_000, 0.4, (2, 6), (5, 2), seed=3)
    mix = fit_beta_mixture(x, max_iters=7)
    al, be, pi = naive_em(x, 7)
    np.testing.assert_allclose(mix.alphas, al, rtol=1e-9)
    np.testing.assert_allclose(mix.betas, be, rtol=1e-9)
    np.testing.assert_allclose(mix.weights, pi, rtol=1e-9)


def test_posterior_equals_a_direct_scipy_computation_and_sums_to_one():
    mix = BetaMixture((1.5, 6.0), (5.0, 1.2), (0.65, 0.35))
    x = np.linspace(0.001, 0.999, 57)
    f0 = 0.65 * stats.beta.pdf(x, 1.5, 5.0)
    f1 = 0.35 * stats.beta.pdf(x, 6.0, 1.2)
    np.testing.assert_allclose(mix.posterior(x), f1 / (f0 + f1), rtol=1e-9)
    p0 = f0 / (f0 + f1 + 1e-12)
    np.testing.assert_allclose(p0 + mix.posterior(x), 1.0, atol=1e-9)


def test_normalisation_hand_computed():
    ell = np.arange(21, dtype=float) ** 1.5  # n = 21: the percentiles fall on samples 1 and 19
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(ell)
    scaling, inner = loss_scaling(shuffled)
    assert scaling.lo == pytest.approx(1.0 + 1e-5, abs=1e-15) and scaling.hi == pytest.approx(19**1.5)
    assert inner.sum() == 19 and not inner[shuffled == 0.0].any() and not inner[shuffled == 20**1.5].any()
    x = scaling.apply(np.array([0.0, 1.0, 8.0, 19**1.5, 20**1.5]))
    width = 19**1.5 - (1.0 + 1e-5) + 1e-6
    assert x[0] == 0.001 and x[1] == 0.001  # below lo, and 1.0 − lo < 0: both clamped to 0.001
    assert x[2] == pytest.approx((8.0 - 1.00001) / width, rel=1e-12)  # 0.0857…
    assert x[3] == pytest.approx((19**1.5 - 1.00001) / width, rel=1e-12) and x[3] < 1
    assert x[4] == 0.999


def test_lookup_is_monotone_from_its_maximum_and_indexes_by_truncation():
    mix = BetaMixture((2.0, 3.0), (6.0, 1.5), (0.6, 0.4))
    table = mix.lookup()
    assert table.shape == (LOOKUP_SIZE,)
    top = int(np.argmax(table))
    assert (np.diff(table[top:]) >= 0).all()
    np.testing.assert_allclose(table[:top], mix.posterior(np.linspace(1e-12, 1 - 1e-12, 100))[:top])
    scaling = type(loss_scaling(np.arange(20.0))[0])(lo=0.0, hi=1.0 - 1e-6)  # x = ℓ exactly
    b = noise_probability(np.array([0.999, 0.001, 0.4567]), scaling, mix)
    assert b[0] == np.clip(table[99], 1e-4, 1 - 1e-4)
    assert b[1] == np.clip(table[0], 1e-4, 1 - 1e-4)
    assert b[2] == np.clip(table[45], 1e-4, 1 - 1e-4)  # int(45.67) = 45
    exact = noise_probability(np.array([0.4567]), scaling, mix, posterior="exact")
    assert exact[0] == pytest.approx(float(mix.posterior(np.array([0.4567]))[0]), rel=1e-12)


def test_noise_model_flags_high_losses_and_monotone_spares_the_lowest():
    rng = np.random.default_rng(5)
    clean, noisy = rng.gamma(2.0, 0.5, 800), 4.0 + rng.gamma(4.0, 0.3, 200)
    losses = np.concatenate([clean, noisy])
    scaling, mix = fit_noise_model(losses)
    assert mix.alphas[1] < 1  # the noisy component's density has a spike at x → 0 …
    ref = noise_probability(losses, scaling, mix)
    assert ref.min() >= 1e-4 and ref.max() <= 1 - 1e-4
    low = scaling.apply(clean) < 0.01  # … so the reference table calls the lowest losses noisy
    assert (ref[800:] > 0.5).all() and (ref[:800][low] > 0.5).all() and low.sum() == 79
    assert (ref[:800][~low] > 0.5).sum() == 37  # the clean losses' upper tail, past the noisy ones' start
    mono = noise_probability(losses, scaling, mix, monotone=True)
    assert (mono[800:] > 0.5).all() and (mono[:800] > 0.5).sum() == 37
    assert mono[:800][low] == pytest.approx(np.full(79, 0.0677804), abs=1e-7)  # the table's minimum
    table = mix.lookup(monotone=True)
    right = (scaling.apply(losses) * 100).astype(int) >= int(np.argmin(mix.lookup()))
    np.testing.assert_array_equal(mono[right], ref[right])  # only entries left of the minimum change
    assert table[0] == table.min() and (np.diff(table[int(np.argmin(table)) :]) >= 0).all()


def test_a_spike_at_zero_that_is_the_maximum_makes_the_reference_table_call_everything_noisy():
    mix = BetaMixture((2.8, 0.4), (8.0, 0.4), (0.7, 0.3))  # U-shaped noisy component, mean 0.5
    assert int(np.argmax(mix.posterior(np.linspace(1e-12, 1 - 1e-12, 100)))) == 0
    assert mix.lookup().min() > 0.9  # T[argmax T:] = max T from entry 0 on
    table = mix.lookup(monotone=True)
    assert (np.diff(table) >= 0).all()
    assert table[[0, 10, 30, 50, 70, 99]] == pytest.approx([0.085, 0.085, 0.093, 0.289, 0.907, 1.0], abs=1e-3)


def test_degenerate_inputs_raise_or_warn():
    with pytest.raises(InputError, match=">= 10"):
        fit_noise_model(np.arange(9.0))
    with pytest.raises(InputError, match="percentiles are equal"):
        fit_noise_model(np.ones(50))
    with pytest.raises(InputError, match="component 1 has zero variance"):
        beta_moments(np.full(5, 0.4), np.ones(5), component=1)
    assert beta_moments(np.full(5, 0.4), np.ones(5), eps_var=1e-3)[0] == pytest.approx(0.4 * 239)
    with pytest.raises(InputError, match="no beta distribution"):
        beta_moments(np.array([0.0, 1.0]), np.ones(2))  # v = m(1 − m) = 0.25
    with pytest.raises(InputError, match="zero weight"):
        beta_moments(np.array([0.2, 0.3]), np.zeros(2))
    # a narrow peak plus a J-shaped component near 1: the "noisy" component ends on the peak, lower
    x = mixture_sample(1_000, 0.38, (39, 19), (1.0, 0.4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mix = fit_beta_mixture(x)
    assert mix.means[1] < mix.means[0] and any("lower mean" in str(w.message) for w in caught)


def test_em_fit_agrees_with_a_scipy_maximum_likelihood_fit_of_a_known_mixture():
    """0.65·Beta(2, 9) + 0.35·Beta(7, 2), 20k draws: the EM (weighted method of moments, 50
    iterations) against the mixture's maximum-likelihood fit by scipy (L-BFGS-B on the
    negative log-likelihood with scipy.stats.beta densities); and the one-component method of
    moments against scipy.stats.beta.fit(method="MM")."""
    from scipy import optimize

    x = np.clip(mixture_sample(20_000, 0.35, (2, 9), (7, 2), seed=11), 1e-4, 1 - 1e-4)
    rng = np.random.default_rng(11)  # the same stream as mixture_sample: z is the truth
    z = rng.random(20_000) < 0.35
    mix = fit_beta_mixture(x, max_iters=50)

    def nll(t):
        a0, b0, a1, b1 = np.exp(t[:4])
        p = 1 / (1 + np.exp(-t[4]))
        return -np.log((1 - p) * stats.beta.pdf(x, a0, b0) + p * stats.beta.pdf(x, a1, b1)).sum()

    t0 = np.r_[np.log([2, 9, 7, 2]), np.log(0.35 / 0.65)]
    res = optimize.minimize(nll, t0, method="L-BFGS-B")
    assert res.success
    a0, b0, a1, b1 = np.exp(res.x[:4])
    p = 1 / (1 + np.exp(-res.x[4]))
    np.testing.assert_allclose([*mix.alphas, *mix.betas], [a0, a1, b0, b1], rtol=0.02)
    assert mix.weights[1] == pytest.approx(p, abs=0.005)
    grid = np.linspace(0.01, 0.99, 99)
    f0, f1 = (1 - p) * stats.beta.pdf(grid, a0, b0), p * stats.beta.pdf(grid, a1, b1)
    assert np.abs(mix.posterior(grid) - f1 / (f0 + f1)).max() < 0.01
    f0, f1 = (1 - p) * stats.beta.pdf(x, a0, b0), p * stats.beta.pdf(x, a1, b1)
    assert ((mix.posterior(x) > 0.5) == (f1 / (f0 + f1) > 0.5)).mean() > 0.999
    assert ((mix.posterior(x) > 0.5) == z).mean() > 0.97  # the known components are separated
    draws = np.random.default_rng(2).beta(2, 5, 1_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's MM start evaluates a bad skew
        a_ref, b_ref, _, _ = stats.beta.fit(draws, method="MM", floc=0, fscale=1)
    np.testing.assert_allclose(beta_moments(draws, np.ones_like(draws)), (a_ref, b_ref), rtol=1e-4)
