"""Tiny versions of the demo's run and study, trained once per test session for the report tests.

* ``tiny_run``: the demo's layout (:func:`contrastkit.demo.run_demo`) at test size — a tiny CLIP
  run on Shapes (``RunConfig.tiny``, TensorBoard on as in the demo) evaluated on its eval splits
  (eval.json, metrics.json, per_example.npz, similarity.png), plus what other evaluation tasks
  leave under ``plots/<split>/``: a plot PNG and an ``errors/failures.json`` with thumbnails.
* ``tiny_plain``: a second tiny run (another seed), not evaluated.
* ``tiny_study``: the demo study's layout (``configs/study-shapes-clip-vs-siglip.yaml``: CLIP vs
  SigLIP, seeds, learning-dynamics curves) at test size: 2 settings × 2 seeds × 4 steps.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from contrastkit.core import to_dict
from contrastkit.train import RunConfig, train


def _tiny(out: Path, name: str, seed: int, tensorboard: bool) -> RunConfig:
    cfg = RunConfig.tiny(name=name, out_dir=str(out))
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=10, ckpt_every=10, seed=seed, tensorboard=tensorboard)
    )


def write_failures(folder: Path, entries: list | dict | str) -> None:
    """An ``errors`` task's output: thumbnails and ``failures.json`` (a str: written verbatim)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"retrieval-{i}.png")
    text = entries if isinstance(entries, str) else json.dumps(entries)
    (folder / "failures.json").write_text(text)


FAILURES = {
    "retrieval": [
        {
            "image": f"retrieval-{i}.png",
            "caption": f"a red circle <b>{i}</b>",
            "rank": 7 + i,
            "top5": ["a blue square", "a red square", "a red circle on the left", "two shapes", "a circle"],
        }
        for i in range(3)
    ]
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    from contrastkit.evaluation import evaluate_run

    out = tmp_path_factory.mktemp("runs")
    run = train(_tiny(out, "tiny-demo", 0, tensorboard=True)).run_dir
    evaluate_run(run)
    # what other evaluation tasks draw under plots/<split>/ (the cka and geometry tasks)
    for split, name in (("test", "cka_layers.png"), ("unseen", "geometry_spectrum.png")):
        (run / "plots" / split).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "similarity.png", run / "plots" / split / name)
    write_failures(run / "plots" / "test" / "errors", FAILURES)
    return run


@pytest.fixture(scope="session")
def tiny_plain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs-plain")
    return train(_tiny(out, "tiny-plain", 1, tensorboard=False)).run_dir


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    from contrastkit.studies.study import run_study

    root = tmp_path_factory.mktemp("study")
    (root / "base.yaml").write_text(yaml.safe_dump(to_dict(RunConfig.tiny())))
    study = {
        "name": "tiny-clip-vs-siglip",
        "base": "base.yaml",
        "overrides": {"train.steps": 4, "train.ckpt_every": 4},
        "grid": {"loss.name": ["clip", "siglip"]},
        "seeds": [0, 1],
        "metric": "zeroshot/shape+color/top1",
        "split": "test",
        "comparisons": [{"baseline": {"loss.name": "clip"}, "intervention": {"loss.name": "siglip"}}],
        "dynamics_every": 2,
        "nboot": 100,
        "out_dir": str(root / "runs"),
    }
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    run_study(root / "study.yaml")
    return root / "runs" / "tiny-clip-vs-siglip"
