"""Multi-Bootstrap speed: 25 seeds × 10,000 examples × 1,000 replicates, paired and unpaired,
vectorised (contrastkit) vs a straightforward loop over replicates and seeds, in one run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/multibootstrap_speed.py [--loop-replicates 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from contrastkit.studies.multibootstrap import Runs, multibootstrap


def loop_bootstrap(runs: Runs, paired: bool, nboot: int, rng: int) -> np.ndarray:
    """The obvious implementation: per replicate, per seed, index and average."""
    rs = np.random.RandomState(rng)
    scores = np.asarray(runs.scores)
    seeds = sorted(set(runs.seeds))
    pairs = list(enumerate(zip(runs.seeds, runs.intervention)))
    rows = {(s, f): [i for i, (t, g) in pairs if t == s and g == f] for s in seeds for f in (False, True)}
    out = []
    for _ in range(nboot):
        sb = rs.choice(len(seeds), size=len(seeds), replace=True)
        se = sb if paired else rs.choice(len(seeds), size=len(seeds), replace=True)
        j = rs.choice(scores.shape[1], size=scores.shape[1], replace=True)
        b = np.mean([np.mean([scores[r, j].mean() for r in rows[(seeds[k], False)]]) for k in sb])
        e = np.mean([np.mean([scores[r, j].mean() for r in rows[(seeds[k], True)]]) for k in se])
        out.append(e - b)
    return np.array(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=25)
    p.add_argument("--examples", type=int, default=10_000)
    p.add_argument("--nboot", type=int, default=1000)
    p.add_argument("--loop-replicates", type=int, default=100, help="loop replicates timed (scaled up)")
    a = p.parse_args()
    r = np.random.RandomState(0)
    n = a.seeds
    scores = (r.rand(2 * n, a.examples) < np.where(np.arange(2 * n) < n, 0.70, 0.72)[:, None]).astype(float)
    runs = Runs(list(range(n)) * 2, [False] * n + [True] * n, scores)
    print(f"{n} seeds per side x {a.examples} examples x {a.nboot} replicates")
    print(f"{'mode':<9} {'vectorised s':>13} {'loop s (est.)':>14} {'speed-up':>9}")
    multibootstrap(runs, nboot=10)  # warm-up (BLAS threads, allocator)
    for paired in (False, True):
        t0 = time.perf_counter()
        multibootstrap(runs, paired=paired, nboot=a.nboot, rng=0)
        fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop_bootstrap(runs, paired, a.loop_replicates, 0)
        slow = (time.perf_counter() - t0) * a.nboot / a.loop_replicates
        print(f"{'paired' if paired else 'unpaired':<9} {fast:>13.3f} {slow:>14.1f} {slow / fast:>8.0f}x")


if __name__ == "__main__":
    main()
