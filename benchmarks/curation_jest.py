"""JEST on noisy Shapes: the equal-compute comparison and what the selection picks (docs/curation.md).

Run after both studies (configs/study-curation-jest.yaml, configs/study-curation-jest-compute.yaml):

    python benchmarks/curation_jest.py

1. Equal training compute: JEST (400 steps, 448 forward-pass equivalents a step) against uniform
   random batches at 933 steps (192 a step), paired Multi-Bootstrap over seeds × test examples,
   as `contrastkit study` computes its comparisons (1,000 replicates, 95% percentile interval).
2. What JEST selects: 50 super-batches of 128 rows of the noisy training set (30% swapped captions),
   scored with the reference and a learner (the uniform 400-step run of seed 0, and a fresh
   untrained model); the share of swapped rows among the 64 selected (the base rate is 0.3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contrastkit.data import make_shapes
from contrastkit.data.shapes import swapped_images
from contrastkit.losses import from_config as build_loss
from contrastkit.models.dual_encoder import build_model
from contrastkit.studies.multibootstrap import Runs, multibootstrap, seed_means
from contrastkit.train import load_run
from contrastkit.train.jest import Jest, JestConfig, load_reference
from contrastkit.train.setup import load_run_config

METRIC = "zeroshot|shape+color|top1"
JEST = "runs/study-curation-jest/runs"
UNIFORM = "runs/study-curation-jest-compute/runs"


def scores(run: str) -> np.ndarray:
    with np.load(Path(run) / "examples.npz") as z:
        return z[METRIC]


def equal_compute() -> None:
    jest_dirs = sorted(p for p in Path(JEST).glob("jest*-s*") if "jestNone" not in p.name)
    rows = [(int(p.name[-1]), True, scores(str(p))) for p in jest_dirs]
    rows += [(s, False, scores(f"{UNIFORM}/steps933-s{s}")) for s in (0, 1, 2)]
    runs = Runs([r[0] for r in rows], [r[1] for r in rows], np.stack([r[2] for r in rows]))
    res = multibootstrap(runs, paired=True, nboot=1000)
    b, e = seed_means(runs, paired=True)
    print(f"uniform 933 steps: {b:.4f}; JEST 400 steps: {e:.4f}")
    d = res.delta
    ci = f"95% CI [{d.low:+.4f}, {d.high:+.4f}]"
    print(
        f"JEST - uniform at equal compute: {e - b:+.4f} (bootstrap {d.mean:+.4f}, {ci}, p={res.p_value:.3g})"
    )


def selection(n_batches: int = 50) -> None:
    n, noise = 4000, 0.3
    pairs = make_shapes("train", n=n, seed=0, noise=noise)
    swapped = np.zeros(n, dtype=bool)
    swapped[swapped_images("train", n=n, seed=0, noise=noise)] = True
    ref, ref_loss = load_reference(Path("runs/jest-reference"))
    _, trained, loss, _ = load_run(f"{JEST}/jestNone-s0")
    cfg = load_run_config(f"{JEST}/jestNone-s0")
    fresh = build_model(cfg.model, assets_dir=Path(f"{JEST}/jestNone-s0/assets")).eval()
    fresh_loss = build_loss(cfg.loss)
    rng = np.random.default_rng(0)
    for name, model, mloss in (("trained learner", trained, loss), ("fresh learner", fresh, fresh_loss)):
        for score in ("learnability", "hard_learner", "easy_reference"):
            jest = Jest(JestConfig("runs/jest-reference", 0.5, 16, score), 64, 0, ref, ref_loss)
            picked = []
            for step in range(n_batches):
                rows = rng.choice(n, size=128, replace=False)
                caps = [pairs.captions[i][0] for i in rows.tolist()]
                batch = {"image": pairs.images[torch.from_numpy(rows)], "text": model.tokenize(caps)}
                batch["row"] = torch.from_numpy(rows)
                with torch.no_grad():
                    out = jest.select(model, mloss, batch, step)
                picked.append(swapped[out["row"].numpy()].mean())
            print(
                f"{name}, {score}: swapped share of selected rows {np.mean(picked):.3f} (base rate {noise})"
            )


if __name__ == "__main__":
    torch.set_num_threads(1)
    equal_compute()
    selection()
