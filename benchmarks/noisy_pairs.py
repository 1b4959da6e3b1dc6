"""Noisy-pair detection on Shapes with injected caption swaps: precision and recall per run.

For each run folder (trained on Shapes with ``data.splits.<train split>.noise`` > 0), the truly
noisy pairs are both captions of every swapped image (:func:`contrastkit.data.shapes.swapped_images`).
A pair is *called* noisy when its clean probability is below 0.5; two sources of probabilities:

* ``state`` — the run's own (the newest checkpoint's noisy-pair state, i.e. its last refit), for
  runs trained with ``curation.noisy_pairs``;
* ``refit`` / ``refit-monotone`` — the run's final model scores every pair afresh
  (:func:`contrastkit.train.noisy.pair_losses`, batch 128, the run's logit scale) and a mixture is
  fitted to those losses (reference lookup table, and the table flattened left of its minimum);
  this also works for a run trained without correction.

    python benchmarks/noisy_pairs.py runs/shapes-noisy-0.2-weight runs/shapes-noisy-0.2-none [--json OUT]

Prints one row per run and probability source, then mean ± sd (sample sd over the runs, i.e.
seeds) per noise level, correction and source. ``--from-json`` re-prints saved rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np


def detection(clean: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision and recall of ``clean < 0.5`` against the boolean ``truth`` (noisy pairs)."""
    called = clean < 0.5
    hits = int((called & truth).sum())
    return {
        "called": int(called.sum()),
        "precision": hits / max(int(called.sum()), 1),
        "recall": hits / max(int(truth.sum()), 1),
    }


def measure(run_dir: str) -> list[dict]:
    from contrastkit.data import open_split
    from contrastkit.data.pairs import pair_offsets
    from contrastkit.data.shapes import swapped_images
    from contrastkit.train import load_run
    from contrastkit.train.bmm import fit_noise_model, noise_probability
    from contrastkit.train.noisy import clean_probabilities, pair_losses

    cfg, model, loss, _ = load_run(run_dir)
    params = cfg.data.split_params(cfg.data.train_split)
    source = open_split(cfg.data, cfg.data.train_split)
    n_caps = np.asarray([len(c) for c in source.captions])
    truth = np.zeros(int(n_caps.sum()), dtype=bool)
    first = pair_offsets(source.captions)
    for i in swapped_images(
        cfg.data.train_split, params["n"], params.get("seed", 0), params.get("noise", 0.0)
    ):
        truth[first[i] : first[i] + n_caps[i]] = True
    noisy = cfg.curation.noisy_pairs
    base = {
        "run": run_dir,
        "noise": params.get("noise", 0.0),
        "correction": "none" if noisy is None else noisy.mode,
        "seed": cfg.train.seed,
        "pairs": len(truth),
        "noisy": int(truth.sum()),
    }
    rows = []
    if noisy is not None:
        rows.append({**base, "source": "state", **detection(clean_probabilities(run_dir), truth)})
    t0 = time.perf_counter()
    scale = float(loss.log_scale.detach().exp()) if hasattr(loss, "log_scale") else 1 / 0.07
    ell = pair_losses(model, source, scale, batch_size=128, seed=cfg.train.seed)
    scaling, mixture = fit_noise_model(ell)
    for name, monotone in (("refit", False), ("refit-monotone", True)):
        clean = 1 - noise_probability(ell, scaling, mixture, monotone=monotone)
        rows.append({**base, "source": name, **detection(clean, truth), "seconds": time.perf_counter() - t0})
    return rows


def summary(rows: list[dict]) -> str:
    """Mean ± sd over runs (seeds) of precision and recall per (noise, correction, probabilities)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["noise"], r["correction"], r["source"]), []).append(r)
    lines = [
        "| noise | correction | probabilities | runs | called noisy | precision | recall |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for (noise, corr, src), rs in sorted(groups.items()):
        cell = {k: np.array([r[k] for r in rs], dtype=float) for k in ("called", "precision", "recall")}
        sd = {k: v.std(ddof=1) if len(v) > 1 else float("nan") for k, v in cell.items()}
        lines.append(
            f"| {noise:.0%} | {corr} | {src} | {len(rs)} | {cell['called'].mean():.0f} / {rs[0]['pairs']} "
            f"({rs[0]['noisy']} noisy) | {cell['precision'].mean():.3f} ± {sd['precision']:.3f} | "
            f"{cell['recall'].mean():.3f} ± {sd['recall']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*")
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--from-json", nargs="*", default=[], help="rows saved by --json, added to the runs'")
    args = parser.parse_args(argv)
    rows = [row for path in args.from_json for row in json.loads(open(path).read())]
    rows += [row for run in args.runs for row in measure(run)]
    print("| run | noise | probabilities | called noisy | precision | recall |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['noise']:.0%} | {r['source']} | {r['called']} / {r['pairs']} "
            f"({r['noisy']} noisy) | {r['precision']:.3f} | {r['recall']:.3f} |"
        )
    print()
    print(summary(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
