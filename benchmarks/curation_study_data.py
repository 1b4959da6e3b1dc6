"""Rebuild the data sources of the filter studies (docs/curation.md, "Filters").

Writes everything under ``runs/curation-study-data/`` (ignored by git), each a ``csv`` source that
a study config names in ``data.sources``:

* ``noisy/pairs.csv``: Shapes ``train`` (n = 4,000, data seed 0: the images of
  configs/shapes-clip-small.yaml) with 20% of the captions swapped to other images
  (``noise: 0.2``), plus a ``swapped`` column (the truth);
* ``clip-score-0.8/pairs.csv``: ``contrastkit curate`` of the noisy pool, ``clip_score keep=0.8``,
  with a curation model trained on clean Shapes of another data seed and train seed
  (``runs/curation-study-model``; it never saw the pool's images);
* ``clean/pairs.csv``: the same 4,000 images with their true captions;
* ``dups/pairs.csv``: the first 2,800 clean rows plus 1,200 copies of rows drawn from them
  (``default_rng(0)``, with replacement) whose pixels get uniform integer noise in [−4, 4] (of
  255): 30% of the pool are near duplicates; ``copy_of`` names the original;
* ``dedup/pairs.csv``: ``near_duplicates threshold=0.99`` of ``dups``;
* ``complex5/pairs.csv``: ``complexity min_complexity=5`` of ``clean``;
* ``random-same-size/pairs.csv``: as many rows of ``clean`` as ``complex5`` kept, drawn uniformly
  (``default_rng(0)``), in source order.

Usage (about 2 minutes on 2 busy cores, most of it the curation model's training)::

    python benchmarks/curation_study_data.py            # skips what exists
    python benchmarks/curation_study_data.py --force    # rebuilds everything

then ``contrastkit study configs/study-curation-clip-score.yaml --jobs 1`` and
``contrastkit study configs/study-curation-dedup-complexity.yaml --jobs 1``.

A finished study reported on another per-example metric of its runs (``examples.npz`` holds every
metric the runs were evaluated on), into ``<study folder>/metric-<metric>/``::

    python benchmarks/curation_study_data.py --report configs/study-curation-hard-negatives.yaml \
        zeroshot/shape+color/top1
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path("runs/curation-study-data")
MODEL = Path("runs/curation-study-model")
CAPS = "caption_columns=[caption, caption_1]"
N, N_UNIQUE, NOISE = 4000, 2800, 0.2


def _ck(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("contrastkit")), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _absolute(rows: list[dict[str, str]], folder: Path) -> list[dict[str, str]]:
    return [{**r, "image": str((folder / r["image"]).resolve())} for r in rows]


def _export(out: Path, noise: float) -> None:
    params = ["--param", f"n={N}", "--param", "image_size=32", "--param", "seed=0"]
    _ck(
        "data",
        "export",
        "shapes:train",
        *params,
        "--param",
        f"noise={noise}",
        "--out",
        str(out),
        "--no-progress",
    )


def _model() -> None:
    _ck(
        "train", "--config", "configs/shapes-clip-small.yaml", "--set", "train.seed=3",
        "--set", "data.params.seed=1", "--name", MODEL.name, "--overwrite",
    )  # fmt: skip


def _noisy() -> None:
    from contrastkit.data.shapes import swapped_images

    _export(ROOT / "noisy", NOISE)
    rows = _read(ROOT / "noisy" / "pairs.csv")
    swapped = set(swapped_images("train", N, seed=0, noise=NOISE).tolist())
    _write(ROOT / "noisy" / "pairs.csv", [{**r, "swapped": int(i in swapped)} for i, r in enumerate(rows)])


def _dups() -> None:
    from PIL import Image

    clean = _absolute(_read(ROOT / "clean" / "pairs.csv"), ROOT / "clean")
    rng = np.random.default_rng(0)
    originals = rng.integers(0, N_UNIQUE, N - N_UNIQUE)
    rows = [{**r, "copy_of": -1} for r in clean[:N_UNIQUE]]
    (ROOT / "dups" / "images").mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(originals):
        img = np.asarray(Image.open(clean[i]["image"]).convert("RGB"), dtype=np.int16)
        noisy = np.clip(img + rng.integers(-4, 5, img.shape), 0, 255).astype(np.uint8)
        path = (ROOT / "dups" / "images" / f"copy-{k:05d}.png").resolve()
        Image.fromarray(noisy).save(path)
        rows.append({**clean[i], "image": str(path), "copy_of": int(i)})
    _write(ROOT / "dups" / "pairs.csv", rows)


def _random_same_size() -> None:
    clean = _absolute(_read(ROOT / "clean" / "pairs.csv"), ROOT / "clean")
    n_keep = len(_read(ROOT / "complex5" / "pairs.csv"))
    pick = np.sort(np.random.default_rng(0).choice(len(clean), n_keep, replace=False))
    _write(ROOT / "random-same-size" / "pairs.csv", [clean[i] for i in pick])


def _curate(src: str, out: str, *filt: str, extra: str = "") -> None:
    params = ["--data-param", CAPS] + (["--data-param", f"extra_columns=[{extra}]"] if extra else [])
    model = ["--model", str(MODEL)] if "complexity" not in filt else []
    _ck(
        "curate",
        str(ROOT / src / "pairs.csv"),
        *params,
        *filt,
        *model,
        "--out",
        str(ROOT / out),
        "--no-progress",
    )


STEPS = {
    "model": (MODEL / "config.yaml", _model),
    "noisy": (ROOT / "noisy" / "pairs.csv", _noisy),
    "clip-score-0.8": (
        ROOT / "clip-score-0.8" / "pairs.csv",
        lambda: _curate(
            "noisy", "clip-score-0.8", "--filter", "clip_score", "--param", "keep=0.8", extra="swapped"
        ),
    ),
    "clean": (ROOT / "clean" / "pairs.csv", lambda: _export(ROOT / "clean", 0.0)),
    "dups": (ROOT / "dups" / "pairs.csv", _dups),
    "dedup": (
        ROOT / "dedup" / "pairs.csv",
        lambda: _curate(
            "dups", "dedup", "--filter", "near_duplicates", "--param", "threshold=0.99", extra="copy_of"
        ),
    ),
    "complex5": (
        ROOT / "complex5" / "pairs.csv",
        lambda: _curate("clean", "complex5", "--filter", "complexity", "--param", "min_complexity=5"),
    ),
    "random-same-size": (ROOT / "random-same-size" / "pairs.csv", _random_same_size),
}


def _summary() -> None:
    removed = _read(ROOT / "clip-score-0.8" / "removed.csv")
    noisy = _read(ROOT / "noisy" / "pairs.csv")
    bad = {i for i, r in enumerate(noisy) if r["swapped"] == "1"}
    hit = sum(int(r["source_row"]) in bad for r in removed)
    print(f"clip_score keep=0.8: removed {len(removed)}, swapped among them {hit}: "
          f"precision {hit / len(removed):.3f}, recall {hit / len(bad):.3f}")  # fmt: skip
    dups = _read(ROOT / "dups" / "pairs.csv")
    gone = [int(r["source_row"]) for r in _read(ROOT / "dedup" / "removed.csv")]
    copies = sum(dups[i]["copy_of"] != "-1" for i in gone)
    print(
        f"near_duplicates 0.99: removed {len(gone)} "
        f"({copies} of {N - N_UNIQUE} copies, {len(gone) - copies} others)"
    )
    for name in ("clip-score-0.8", "dedup", "complex5", "random-same-size"):
        print(f"{name}: {len(_read(ROOT / name / 'pairs.csv'))} rows")


def _report(study_file: str, metric: str) -> None:
    import dataclasses

    from contrastkit.studies.config import load_study
    from contrastkit.studies.report import build_report
    from contrastkit.studies.runner import plan_runs

    study, base = load_study(study_file)
    root = Path(study.out_dir) / study.name
    other = dataclasses.replace(study, metric=metric)
    out = root / f"metric-{metric.replace('/', '_')}"
    out.mkdir(parents=True, exist_ok=True)
    print("wrote", build_report(other, plan_runs(other, base, root), out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild every step")
    ap.add_argument("--report", nargs=2, metavar=("STUDY", "METRIC"), help="re-report a finished study")
    args = ap.parse_args(argv)
    if args.report:
        return _report(*args.report)
    for name, (marker, build) in STEPS.items():
        if args.force or not marker.is_file():
            if name != "model" and (ROOT / name).is_dir():
                shutil.rmtree(ROOT / name)
            build()
        else:
            print(f"{name}: {marker} exists, skipped")
    _summary()


if __name__ == "__main__":
    main()
