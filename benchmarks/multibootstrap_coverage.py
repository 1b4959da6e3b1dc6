"""Coverage of the study report's 95% Multi-Bootstrap interval, by simulation with a known truth.

Each simulated study is what ``contrastkit study`` compares: two arms (baseline, intervention),
the same seeds in both, 0/1 per-example hits on one test split, and the interval of
``contrastkit.studies.multibootstrap`` exactly as the study report calls it (paired, 1,000
replicates, 95% percentile interval). The hits come from a logistic model

    P(hit | arm a, seed s, example j) = sigmoid(mu + delta*a + v_j + u_{a,s})

with example difficulty ``v_j ~ N(0, ex_sd^2)`` (shared by every run: the examples are paired) and
a training-seed effect ``u_{a,s} ~ N(0, seed_sd^2)``, independent between the arms (the worst case
for a paired design: the same seed buys no shared luck). Every study draws fresh seeds and fresh
examples, so the truth is the procedure-level difference over the populations of seeds and
examples, ``E[sigmoid(mu + delta + Z)] - E[sigmoid(mu + Z)]``, ``Z ~ N(0, seed_sd^2 + ex_sd^2)``
(Gauss-Hermite quadrature): +0.043 at a baseline accuracy of 0.61 in every scenario. The three
scenarios differ in the seed effect only: the spread (sd over seeds) of a seed's accuracy is about
the test-set noise alone (0.014 against 0.012), 1.7 times it and 4.5 times it; docs/studies.md
shows where the demo study's settings fall.

Runtime: 9 cells x 800 studies take about 3 min of CPU on one core (~30 ms per study, nearly all
in ``multibootstrap``); ``--studies 200`` takes under a minute at a standard error of about 0.02.

    OMP_NUM_THREADS=1 python benchmarks/multibootstrap_coverage.py [--studies 800] [--seeds 3 5 10]

Prints, per scenario and seed count: coverage with its Monte-Carlo standard error
``sqrt(c(1-c)/studies)``, the mean interval width, and the width ratio (mean interval width over
the central 95% range of the estimate across studies; below 1: the interval is too narrow).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from contrastkit.studies.multibootstrap import Runs, multibootstrap

# name: (seed_sd, ex_sd, mu, delta) on the logit scale.
SCENARIOS = {
    "example-dominated": (0.05, 3.0, 1.0, 0.4),
    "balanced": (0.15, 3.0, 1.0, 0.4),
    "seed-dominated": (0.50, 3.0, 1.0, 0.4),
}


def true_difference(mu: float, delta: float, sd: float) -> float:
    """E[sigmoid(mu + delta + Z)] - E[sigmoid(mu + Z)], Z ~ N(0, sd^2), by 80-point quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()

    def acc(m: float) -> float:
        return float(w @ (1 / (1 + np.exp(-(m + sd * x)))))

    return acc(mu + delta) - acc(mu)


def simulate(rs: np.random.RandomState, n_seeds: int, n_ex: int, scenario: tuple) -> Runs:
    """One study: ``n_seeds`` baseline and ``n_seeds`` intervention runs of 0/1 hits."""
    seed_sd, ex_sd, mu, delta = scenario
    v = rs.normal(0, ex_sd, n_ex)
    u = rs.normal(0, seed_sd, (2, n_seeds, 1))
    logit = mu + np.array([0.0, delta])[:, None, None] + u + v
    hits = (rs.rand(2, n_seeds, n_ex) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return Runs(
        list(range(n_seeds)) * 2, [False] * n_seeds + [True] * n_seeds, hits.reshape(2 * n_seeds, n_ex)
    )


def coverage(name: str, n_seeds: int, n_studies: int, n_ex: int, nboot: int, rng: int) -> dict[str, float]:
    """Run ``n_studies`` simulated studies of one scenario; the study's seed is (rng, scenario, seeds)."""
    scenario = SCENARIOS[name]
    seed_sd, ex_sd, mu, delta = scenario
    truth = true_difference(mu, delta, float(np.hypot(seed_sd, ex_sd)))
    rs = np.random.RandomState([rng, list(SCENARIOS).index(name), n_seeds])
    hit, widths, estimates, seed_spread = 0, [], [], []
    for i in range(n_studies):
        runs = simulate(rs, n_seeds, n_ex, scenario)
        # as contrastkit/studies/report.py::_compare calls it (paired is the comparison default)
        res = multibootstrap(runs, paired=True, nboot=nboot, level=0.95, rng=i)
        hit += res.delta.low <= truth <= res.delta.high
        widths.append(res.delta.high - res.delta.low)
        per_run = runs.scores.mean(1)
        estimates.append(per_run[n_seeds:].mean() - per_run[:n_seeds].mean())
        seed_spread.append(per_run[:n_seeds].var(ddof=1))
    c = hit / n_studies
    lo, hi = np.quantile(estimates, [0.025, 0.975])
    return {
        "truth": truth,
        "coverage": c,
        "mcse": float(np.sqrt(c * (1 - c) / n_studies)),
        "width": float(np.mean(widths)),
        "width_ratio": float(np.mean(widths) / (hi - lo)),
        "seed_sd_acc": float(np.sqrt(np.mean(seed_spread))),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=800, help="simulated studies per cell")
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10], help="seeds per arm")
    p.add_argument("--examples", type=int, default=714, help="test examples (the demo's test split)")
    p.add_argument("--nboot", type=int, default=1000, help="replicates (the study default)")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--rng", type=int, default=0)
    a = p.parse_args()
    t0 = time.perf_counter()
    print(
        f"{a.studies} studies per cell, {a.examples} examples, {a.nboot} replicates, paired, "
        f"95% percentile interval; truth = procedure-level difference in accuracy"
    )
    print(
        f"{'scenario':<18} {'seeds':>5} {'truth':>7} {'per-seed sd':>11} {'coverage':>8} {'± MCSE':>7} "
        f"{'width':>7} {'width ratio':>11}"
    )
    for name in a.scenarios:
        for n in a.seeds:
            r = coverage(name, n, a.studies, a.examples, a.nboot, a.rng)
            print(
                f"{name:<18} {n:>5} {r['truth']:>7.4f} {r['seed_sd_acc']:>11.4f} {r['coverage']:>8.3f} "
                f"{r['mcse']:>7.3f} {r['width']:>7.4f} {r['width_ratio']:>11.2f}",
                flush=True,
            )
    print(f"wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
