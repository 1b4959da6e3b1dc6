"""Multi-Bootstrap speed: 25 seeds × 10,000 examples × 1,000 replicates, paired and unpaired,
vectorised (contrastkit) vs a straightforward loop over replicates and seeds, in one process.

The two alternate over ``--rounds`` rounds (vectorised, loop; the next round loop, vectorised) so
load on a shared machine hits both alike; printed: median seconds of each (the loop timed on
``--loop-replicates`` and scaled to ``--nboot``), the median of the per-round speed-ups with their
min–max, and the 1-minute load average before and after.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/multibootstrap_speed.py [--loop-replicates 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    a = p.parse_args()
    r = np.random.RandomState(0)
    n = a.seeds
    scores = (r.rand(2 * n, a.examples) < np.where(np.arange(2 * n) < n, 0.70, 0.72)[:, None]).astype(float)
    runs = Runs(list(range(n)) * 2, [False] * n + [True] * n, scores)
    print(f"{n} seeds per side x {a.examples} examples x {a.nboot} replicates, {a.rounds} interleaved rounds")
    print("| mode | vectorised s | loop s (est.) | speed-up, median (min–max) | load |")
    print("|---|---:|---:|---:|---|")
    multibootstrap(runs, nboot=10)  # warm-up (BLAS threads, allocator)

    def fast(paired: bool) -> float:
        t0 = time.perf_counter()
        multibootstrap(runs, paired=paired, nboot=a.nboot, rng=0)
        return time.perf_counter() - t0

    def slow(paired: bool) -> float:
        t0 = time.perf_counter()
        loop_bootstrap(runs, paired, a.loop_replicates, 0)
        return (time.perf_counter() - t0) * a.nboot / a.loop_replicates

    for paired in (False, True):
        load0, times = os.getloadavg()[0], []
        for r in range(a.rounds):  # A B, B A, ...: neither side always runs first
            if r % 2 == 0:
                t_fast = fast(paired)
                t_slow = slow(paired)
            else:
                t_slow = slow(paired)
                t_fast = fast(paired)
            times.append((t_fast, t_slow))
        up = [s / f for f, s in times]
        med = statistics.median
        cells = [f"{med(f for f, _ in times):.3f}", f"{med(s for _, s in times):.1f}"]
        cells += [f"{med(up):.0f}× ({min(up):.0f}–{max(up):.0f})", f"{load0:.1f}→{os.getloadavg()[0]:.1f}"]
        print(f"| {'paired' if paired else 'unpaired'} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
