"""D-BMM-NOISE — a two-component beta mixture fitted by EM to normalised per-sample losses.

Paper: Arazo, Ortego, Albert, O'Connor, McGuinness 2019, "Unsupervised Label Noise Modeling and
Loss Correction" (ICML). Clean samples are learnt first and have low losses, mislabelled (here:
mismatched image–caption) ones keep high losses; a beta mixture over the losses scaled to (0, 1)
separates the two, and the posterior of the high-loss component is each sample's noise probability.
The numbers below follow the authors' code (``BetaMixture1D`` of LabelNoiseCorrection).

1. **Normalisation** (:func:`loss_scaling`): ``p5, p95`` = 5th/95th percentiles (linear
   interpolation); the fit uses only losses in ``[p5, p95]``; ``lo = p5 + 1e-5``, ``hi = p95``::

       x = (ℓ − lo) / (hi − lo + 1e-6),   then x ≥ 1 → 0.999 and x ≤ 0 → 0.001

   The same ``lo, hi`` and clamps apply to every loss scored with the fit.
2. **Initialisation**: component 0 ("clean", low loss) ``Beta(1, 2)``, component 1 ("noisy")
   ``Beta(2, 1)``, weights ``π = (0.5, 0.5)``; a fresh mixture at every fit (no warm start).
3. **EM**, exactly ``max_iters`` iterations (default 10, no convergence test; data clamped to
   ``[1e-4, 1 − 1e-4]``). E-step ``r_k(x) = π_k·Beta(x; α_k, β_k)`` (entries below 1e-12 set to
   1e-12), normalised over k. M-step, weighted method of moments with ``w = r_k``::

       m = Σ w x / Σ w,   v = Σ w (x − m)² / Σ w,   α_k = m·(m(1 − m)/v − 1),   β_k = α_k(1 − m)/m
       π_k = Σ_i r_k(x_i) / n  (renormalised to sum 1)

4. **Posterior of noise** ``P(1|x) = π_1 f_1(x) / (π_0 f_0(x) + π_1 f_1(x) + 1e-12)``.
5. **Lookup** (the authors' default, ``posterior="lookup"``): ``T = P(1|g)`` on
   ``g = linspace(1e-12, 1 − 1e-12, 100)``, made non-decreasing after its maximum
   (``T[argmax T:] = max T``); x maps to ``T[clip(int(100·x), 0, 99)]``. ``posterior="exact"``
   uses step 4 on x. Either way ``B = clamp(·, 1e-4, 1 − 1e-4)``; the clean probability is ``1 − B``.
   ``monotone=True`` (not in the reference) makes the table non-decreasing everywhere: ``k`` =
   the entry of the largest ``T`` at or right of the clean component's mean, ``T[k:] = T[k]``, and
   left of ``k`` each entry becomes the minimum of itself and every entry up to ``k``
   (``T[i] = min T[i..k]``). Why: a noisy component fitted with ``α_1 < 1`` has a density spike
   at ``x → 0``, so the reference's table calls the *lowest* losses (every loss below ``p5`` maps to
   ``x = 0.001``, entry 0) noisy — and when that spike is the table's maximum, ``T[argmax T:]``
   calls *every* loss noisy. Harmless in the reference (hard bootstrapping of a sample the model
   already predicts right), but down-weighting or dropping the cleanest pairs is not.

Degenerate fits raise :class:`~contrastkit.core.errors.InputError` (a ``ValueError``) instead of the
reference's NaNs: fewer than 10 losses, all losses equal (``p95 = p5``), a component with zero
weight or variance (``eps_var`` floors the variance instead), or ``v ≥ m(1 − m)`` (no beta has
those moments). A fit whose "noisy" component ends with the lower mean is kept as the reference
keeps it, with a warning. Cost: O(n) per EM iteration, float64 throughout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from contrastkit.core.errors import InputError

__all__ = [
    "LOOKUP_SIZE",
    "BetaMixture",
    "LossScaling",
    "beta_moments",
    "fit_beta_mixture",
    "fit_noise_model",
    "loss_scaling",
    "noise_probability",
]

LOOKUP_SIZE = 100  # resolution of the posterior lookup table (reference: lookup_resolution)
_GUARD = 1e-12  # the reference's eps_nan: floor of the E-step terms and of the posterior's denominator
_FIT_CLAMP = 1e-4  # data clamp inside fit, and the clamp of the noise probability B
_MIN_LOSSES = 10


@dataclass(frozen=True)
class LossScaling:
    """Loss → ``x ∈ [0.001, 0.999]``: ``(ℓ − lo)/(hi − lo + 1e-6)``, clamped (module docstring, step 1)."""

    lo: float
    hi: float

    def apply(self, losses: np.ndarray) -> np.ndarray:
        x = (np.asarray(losses, dtype=np.float64) - self.lo) / (self.hi - self.lo + 1e-6)
        x[x >= 1] = 0.999  # the reference writes 1 - 10e-4 and 10e-4
        x[x <= 0] = 0.001
        return x


def loss_scaling(losses: np.ndarray) -> tuple[LossScaling, np.ndarray]:
    """The scaling of ``losses`` and the mask of the losses the mixture is fitted to (``p5 ≤ ℓ ≤ p95``)."""
    ell = np.asarray(losses, dtype=np.float64)
    if ell.ndim != 1 or len(ell) < _MIN_LOSSES or not np.isfinite(ell).all():
        raise InputError(f"a noise model needs >= {_MIN_LOSSES} finite losses, got {ell.shape} values")
    p5, p95 = np.percentile(ell, [5, 95])
    if p95 <= p5:
        raise InputError(f"the 5th and 95th loss percentiles are equal ({p5:g}): nothing to separate")
    return LossScaling(lo=float(p5) + 1e-5, hi=float(p95)), (ell >= p5) & (ell <= p95)


def beta_moments(
    x: np.ndarray, w: np.ndarray, eps_var: float | None = None, component: int = 0
) -> tuple[float, float]:
    """Weighted method of moments: the ``(α, β)`` whose mean and variance are ``x``'s under weights ``w``."""
    total = float(np.sum(w))
    if not total > 0:
        raise InputError(f"beta mixture component {component} has zero weight")
    m = float(np.sum(w * x)) / total
    v = float(np.sum(w * (x - m) ** 2)) / total
    if eps_var is not None:
        v = max(v, eps_var)
    if not v > 0:
        raise InputError(f"beta mixture component {component} has zero variance (set eps_var to floor it)")
    if v >= m * (1 - m):
        raise InputError(
            f"beta mixture component {component}: variance {v:.4g} >= m(1 − m) = {m * (1 - m):.4g}, "
            "which no beta distribution has"
        )
    alpha = m * (m * (1 - m) / v - 1)
    return alpha, alpha * (1 - m) / m


@dataclass(frozen=True)
class BetaMixture:
    """``π_0·Beta(α_0, β_0) + π_1·Beta(α_1, β_1)``; component 0 is "clean", 1 "noisy"."""

    alphas: tuple[float, float] = (1.0, 2.0)
    betas: tuple[float, float] = (2.0, 1.0)
    weights: tuple[float, float] = (0.5, 0.5)

    def weighted_pdf(self, x: np.ndarray, k: int) -> np.ndarray:
        from scipy import stats  # scipy loads in ~0.3 s: only when a mixture is used

        return self.weights[k] * stats.beta.pdf(x, self.alphas[k], self.betas[k])

    def responsibilities(self, x: np.ndarray) -> np.ndarray:
        """E-step: ``[2, n]`` component posteriors, terms floored at 1e-12 before normalising."""
        r = np.stack([self.weighted_pdf(x, 0), self.weighted_pdf(x, 1)])
        r[r <= _GUARD] = _GUARD
        return r / r.sum(axis=0)

    def posterior(self, x: np.ndarray) -> np.ndarray:
        """``P(noisy | x)`` (step 4)."""
        f0, f1 = self.weighted_pdf(x, 0), self.weighted_pdf(x, 1)
        return f1 / (f0 + f1 + _GUARD)

    def lookup(self, monotone: bool = False) -> np.ndarray:
        """The reference's table ``T`` (step 5), non-decreasing from its maximum on; ``monotone``:
        non-decreasing everywhere (module docstring)."""
        grid = np.linspace(_GUARD, 1 - _GUARD, LOOKUP_SIZE)
        table = self.posterior(grid)
        if not monotone:
            table[np.argmax(table) :] = table.max()
            return table
        # the maximum right of the clean mean: a spike at x → 0 is no maximum to keep
        right = np.flatnonzero(grid >= self.means[0])
        top = int(right[np.argmax(table[right])]) if len(right) else int(np.argmax(table))
        table[top:] = table[top]
        table[: top + 1] = np.minimum.accumulate(table[top::-1])[::-1]  # largest non-decreasing below T
        return table

    @property
    def means(self) -> tuple[float, float]:
        return tuple(a / (a + b) for a, b in zip(self.alphas, self.betas))  # type: ignore[return-value]


def fit_beta_mixture(x: np.ndarray, max_iters: int = 10, eps_var: float | None = None) -> BetaMixture:
    """EM from the reference initialisation, exactly ``max_iters`` iterations (step 3)."""
    if max_iters < 1:
        raise InputError(f"max_iters must be >= 1, got {max_iters}")
    x = np.clip(np.asarray(x, dtype=np.float64), _FIT_CLAMP, 1 - _FIT_CLAMP)
    if len(x) < _MIN_LOSSES:
        raise InputError(f"a beta mixture needs >= {_MIN_LOSSES} values, got {len(x)}")
    mix = BetaMixture()
    for _ in range(max_iters):
        r = mix.responsibilities(x)
        (a0, b0), (a1, b1) = (beta_moments(x, r[k], eps_var, k) for k in (0, 1))
        pi = r.sum(axis=1) / len(x)
        pi = pi / pi.sum()
        mix = BetaMixture((a0, a1), (b0, b1), (float(pi[0]), float(pi[1])))
    m0, m1 = mix.means
    if m1 < m0:  # the reference keeps such a fit (no swap); say so
        warnings.warn(
            f"beta mixture: the 'noisy' component has the lower mean ({m1:.3f} < {m0:.3f}); kept as fitted",
            stacklevel=2,
        )
    return mix


def fit_noise_model(
    losses: np.ndarray, max_iters: int = 10, eps_var: float | None = None
) -> tuple[LossScaling, BetaMixture]:
    """Steps 1–3 on raw per-sample losses: the scaling and the mixture fitted to the inner 90%."""
    scaling, inner = loss_scaling(losses)
    return scaling, fit_beta_mixture(scaling.apply(np.asarray(losses)[inner]), max_iters, eps_var)


def noise_probability(
    losses: np.ndarray,
    scaling: LossScaling,
    mixture: BetaMixture,
    posterior: Literal["lookup", "exact"] = "lookup",
    monotone: bool = False,
) -> np.ndarray:
    """``B`` of each loss (steps 1, 4/5): its noise probability, clamped to ``[1e-4, 1 − 1e-4]``;
    ``monotone`` as in :meth:`BetaMixture.lookup` (lookup only)."""
    x = scaling.apply(losses)
    if posterior == "lookup":
        b = mixture.lookup(monotone)[np.clip((LOOKUP_SIZE * x).astype(np.int64), 0, LOOKUP_SIZE - 1)]
    elif posterior == "exact":
        b = mixture.posterior(x)
    else:
        raise InputError(f"posterior must be 'lookup' or 'exact', got {posterior!r}")
    return np.clip(b, _FIT_CLAMP, 1 - _FIT_CLAMP)
