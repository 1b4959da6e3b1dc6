"""T-MULTIBOOT — the Multi-Bootstrap: inference about training *procedures*, not checkpoints.

Spec ids: T-MULTIBOOT, T-MULTIBOOT-REPORT (docs/studies.md); paper: Sellam et al. 2022,
"The MultiBERTs: BERT Reproductions for Robustness Analysis" (Sec. 3, App. E), reference
``language/multiberts/multibootstrap.py``.

A replicate resamples **both** sources of randomness: the training seeds (with replacement, per side
or — paired — the same draw for both sides) and the evaluation examples (with replacement, the same
draw for both sides). A side's value is the mean over its drawn seeds of each seed's score, where a
seed's score is the mean over that seed's runs (macro-average: several evaluations of one seed weigh
as one). Reported: bootstrap means, percentile intervals, and the one-sided p-value
``p = mean_k[δ_k ≤ 0]`` (``≥ 0`` when a negative effect is expected), floored at ``1/nboot``.
``seed_means`` gives the plain per-arm mean over seeds, which the bootstrap means estimate.

RNG: ``numpy.random.RandomState(rng)`` in the reference order per replicate — seeds (paired: one
draw; unpaired: base then expt), then examples — so numbers reproduce the reference bit for bit.
Deviation: paired seed lists are sorted (the reference uses an unsorted set intersection).
The draws are made in that order once; scoring is then vectorised for per-example metrics
(example-count matrix × score matrix) or looped for any ``score_fn`` — both give identical numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from contrastkit.core.errors import InputError

__all__ = ["BootstrapResult", "Interval", "Runs", "multibootstrap", "seed_means", "summarize"]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class BootstrapResult:
    base: Interval
    expt: Interval
    delta: Interval
    p_value: float
    base_samples: np.ndarray
    expt_samples: np.ndarray
    paired: bool
    n_seeds: tuple[int, int]
    n_examples: int
    level: float

    @property
    def delta_samples(self) -> np.ndarray:
        return self.expt_samples - self.base_samples


@dataclass(frozen=True)
class Runs:
    """Evaluated runs: one row per run. ``scores[r, j]``: run r's per-example value on example j
    (e.g. 1.0 if correct), or predictions when a ``score_fn`` is given."""

    seeds: Sequence[Hashable]
    intervention: Sequence[bool]
    scores: np.ndarray

    def __post_init__(self) -> None:
        s = np.asarray(self.scores)
        if s.ndim != 2:
            raise InputError(f"scores must be [n_runs, n_examples], got shape {s.shape}")
        if not (len(self.seeds) == len(self.intervention) == s.shape[0]):
            raise InputError(
                f"{len(self.seeds)} seeds, {len(self.intervention)} intervention flags and "
                f"{s.shape[0]} score rows must match"
            )
        if s.shape[1] == 0:
            raise InputError("scores have no examples")
        if not np.isfinite(s).all():
            raise InputError("scores contain NaN or inf")


def _sorted(keys) -> list:
    """Seed ids in a deterministic order: natural order when comparable, else by repr."""
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=repr)


def _side(runs: Runs, flag: bool) -> dict[Hashable, list[int]]:
    out: dict[Hashable, list[int]] = {}
    for r, (seed, f) in enumerate(zip(runs.seeds, runs.intervention)):
        if bool(f) == flag:
            out.setdefault(seed, []).append(r)
    if not out:
        raise InputError(f"no {'intervention' if flag else 'baseline'} runs")
    return out


def _arms(runs: Runs, paired: bool) -> tuple[dict[Hashable, list[int]], dict[Hashable, list[int]]]:
    """Each arm's run rows by seed, seeds sorted; paired: only the seeds both arms have."""
    base, expt = _side(runs, False), _side(runs, True)
    if paired:
        common = _sorted(set(base) & set(expt))
        if not common:
            raise InputError("paired bootstrap: no seed appears on both sides")
        return {s: base[s] for s in common}, {s: expt[s] for s in common}
    return {s: base[s] for s in _sorted(base)}, {s: expt[s] for s in _sorted(expt)}


def seed_means(runs: Runs, *, paired: bool = False) -> tuple[float, float]:
    """The plain (no resampling) value of each arm: the mean over its seeds of each seed's score
    (mean over the seed's runs of the mean over all examples) — the seeds the bootstrap uses.

    The bootstrap estimate (``BootstrapResult.base.mean``) is the mean of the replicates; it
    estimates this number and differs from it by Monte-Carlo noise of order ``std / sqrt(nboot)``.
    """
    per_run = np.asarray(runs.scores, dtype=np.float64).mean(1)
    base, expt = _arms(runs, paired)
    b, e = (float(np.mean([per_run[g].mean() for g in arm.values()])) for arm in (base, expt))
    return b, e


def _draws(
    n_base: int,
    n_expt: int,
    n_ex: int,
    paired: bool,
    sample_seeds: bool,
    sample_examples: bool,
    nboot: int,
    rng: int,
):
    """All replicates' seed and example indices, in the reference RNG order."""
    rs = np.random.RandomState(rng)
    sb = np.empty((nboot, n_base), dtype=np.int64)
    se = np.empty((nboot, n_expt), dtype=np.int64)
    ex = np.empty((nboot, n_ex), dtype=np.int64)
    for k in range(nboot):
        if not sample_seeds:
            sb[k], se[k] = np.arange(n_base), np.arange(n_expt)
        elif paired:
            sb[k] = se[k] = rs.choice(n_base, size=n_base, replace=True)
        else:
            sb[k] = rs.choice(n_base, size=n_base, replace=True)
            se[k] = rs.choice(n_expt, size=n_expt, replace=True)
        ex[k] = rs.choice(n_ex, size=n_ex, replace=True) if sample_examples else np.arange(n_ex)
    return sb, se, ex


def _per_run_means(scores: np.ndarray, ex: np.ndarray) -> np.ndarray:
    """[nboot, n_runs]: every run's mean over each replicate's drawn examples, as one product of the
    example-count matrix (how often each example was drawn) with the score matrix."""
    nboot, n = ex.shape
    flat = (ex + np.arange(nboot)[:, None] * n).ravel()
    counts = np.bincount(flat, minlength=nboot * n).reshape(nboot, n)
    if _exact32(scores):  # integer sums below 2^24: float32 is exact and twice as fast
        sums = (counts.astype(np.float32) @ scores.T.astype(np.float32)).astype(np.float64)
    else:
        sums = counts.astype(np.float64) @ scores.T
    return sums / n


def _exact32(scores: np.ndarray) -> bool:
    """0/1 (or small-integer) scores sum exactly in float32 up to 2^24 — the common case (hits)."""
    return bool(np.all(scores == np.round(scores)) and np.abs(scores).max() <= 1 and scores.shape[1] < 2**24)


def _group_means(per_run: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    return np.stack([per_run[:, g].mean(1) for g in groups], axis=1)


def _seed_scores_generic(scores, labels, groups, ex, score_fn) -> np.ndarray:
    out = np.empty((ex.shape[0], len(groups)))
    for k, idx in enumerate(ex):
        lab = None if labels is None else labels[idx]
        for s, g in enumerate(groups):
            out[k, s] = np.mean([score_fn(lab, scores[r, idx]) for r in g])
    return out


def multibootstrap(
    runs: Runs,
    *,
    labels: np.ndarray | None = None,
    score_fn: Callable[[np.ndarray | None, np.ndarray], float] | None = None,
    paired: bool = False,
    sample_seeds: bool = True,
    sample_examples: bool = True,
    nboot: int = 1000,
    rng: int = 0,
    level: float = 0.95,
    expect_negative_effect: bool = False,
) -> BootstrapResult:
    """Multi-Bootstrap of baseline (``intervention=False``) vs intervention runs.

    Without ``score_fn`` a run's score on a resample is the mean of its per-example ``scores``
    (vectorised); with ``score_fn(labels[J], preds[r, J])`` any metric (F1, AUC…) is used.
    """
    if nboot < 1 or not 0 < level < 1:
        raise InputError(f"nboot must be >= 1 and level in (0, 1), got {nboot}, {level}")
    scores = np.asarray(runs.scores, dtype=np.float64)
    base, expt = _arms(runs, paired)
    n_ex = scores.shape[1]
    if sample_seeds and sample_examples and n_ex == 1 and len(base) == 1 and len(expt) == 1:
        raise InputError("one seed per side and one example: there is nothing to resample")
    sb, se, ex = _draws(len(base), len(expt), n_ex, paired, sample_seeds, sample_examples, nboot, rng)
    groups_b, groups_e = list(base.values()), list(expt.values())
    if score_fn is None:
        per_run = _per_run_means(scores, ex)
        seed_b, seed_e = _group_means(per_run, groups_b), _group_means(per_run, groups_e)
    else:
        seed_b = _seed_scores_generic(scores, labels, groups_b, ex, score_fn)
        seed_e = _seed_scores_generic(scores, labels, groups_e, ex, score_fn)
    b = np.take_along_axis(seed_b, sb, axis=1).mean(1)
    e = np.take_along_axis(seed_e, se, axis=1).mean(1)
    return summarize(b, e, paired, (len(base), len(expt)), n_ex, level, expect_negative_effect)


def summarize(
    b: np.ndarray,
    e: np.ndarray,
    paired: bool,
    n_seeds: tuple[int, int],
    n_examples: int,
    level: float = 0.95,
    expect_negative_effect: bool = False,
) -> BootstrapResult:
    """T-MULTIBOOT-REPORT: bootstrap means, percentile intervals, floored one-sided p-value."""
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2

    def iv(v: np.ndarray) -> Interval:
        return Interval(float(v.mean()), float(np.quantile(v, lo)), float(np.quantile(v, hi)))

    d = e - b
    p = float(np.mean(d >= 0) if expect_negative_effect else np.mean(d <= 0))
    p = max(p, 1.0 / len(d))
    return BootstrapResult(iv(b), iv(e), iv(d), p, b, e, paired, n_seeds, n_examples, level)
