"""MedCLIP on unpaired data vs CLIP on the paired data it would otherwise need (docs/curation.md).

The two arms come from two studies with the same base config (configs/shapes-clip-small.yaml),
seeds and test split: CLIP with random batches of the paired data = the ``random`` arm of
configs/study-curation-b3.yaml; unpaired_labels + medclip = the ``medclip`` arm of
configs/study-curation-unpaired.yaml. Run both studies first, then:

    python benchmarks/curation_unpaired_vs_paired.py

It prints the Multi-Bootstrap comparison (paired by seed, 1,000 replicates, the studies' settings)
of ``zeroshot/shape+color/top1`` on the test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from contrastkit.studies.multibootstrap import Runs, multibootstrap, seed_means

METRIC = "zeroshot|shape+color|top1"  # as stored in a run's examples.npz
ARMS = {
    "CLIP, paired data (random batches)": Path("runs/study-curation-b3/runs/samplerrandom-s{seed}"),
    "MedCLIP, unpaired halves": Path("runs/study-curation-unpaired/runs/medclip-s{seed}"),
}
SEEDS = (0, 1, 2)


def scores(pattern: Path, seed: int) -> np.ndarray:
    path = Path(str(pattern).format(seed=seed)) / "examples.npz"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run both studies first (see the docstring)")
    with np.load(path) as z:
        return np.asarray(z[METRIC], dtype=np.float64)


def main() -> None:
    (base_name, base), (expt_name, expt) = ARMS.items()
    rows = [(s, False, scores(base, s)) for s in SEEDS] + [(s, True, scores(expt, s)) for s in SEEDS]
    runs = Runs([r[0] for r in rows], [r[1] for r in rows], np.stack([r[2] for r in rows]))
    res = multibootstrap(runs, paired=True, nboot=1000)
    mean_b, mean_e = seed_means(runs, paired=True)
    for name, arm, iv in ((base_name, mean_b, res.base), (expt_name, mean_e, res.expt)):
        print(f"{name}: mean over seeds {arm:.3f}, bootstrap {iv.mean:.3f} [{iv.low:.3f}, {iv.high:.3f}]")
    d = res.delta
    print(
        f"δ (MedCLIP unpaired − CLIP paired): {mean_e - mean_b:+.3f}, bootstrap {d.mean:+.3f} "
        f"[{d.low:+.3f}, {d.high:+.3f}], one-sided p = {res.p_value:.3f}"
    )


if __name__ == "__main__":
    main()
