"""The README's "Train on your own pairs" commands (configs/csv-clip.yaml, configs/shards-clip.yaml)
run as documented, small: export → CSV training → shards → shard training → eval on the CSV."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from contrastkit.cli import main
from contrastkit.train import read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = [
    "train.steps=4",
    "train.batch_size=16",
    "train.log_every=1",
    "train.threads=1",
    "train.progress=false",
]


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def test_train_on_your_own_pairs_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' relative paths (data/…, runs/) resolve here
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert main(
        [
            "data",
            "export",
            "shapes:train",
            "--param",
            "n=240",
            "--split",
            "train",
            "--out",
            "data/shapes-csv",
            "--no-progress",
        ]
    ) in (0, None)
    assert main(
        [
            "data",
            "export",
            "shapes:test",
            "--param",
            "n=40",
            "--split",
            "test",
            "--out",
            "data/shapes-csv",
            "--no-progress",
        ]
    ) in (0, None)
    assert len((tmp_path / "data/shapes-csv/pairs.csv").read_text().splitlines()) == 1 + 240 + 40

    assert main(["train", "--config", str(CONFIGS / "csv-clip.yaml"), "--eval", *_sets(SMALL)]) in (0, None)
    rows = read_metrics(tmp_path / "runs/csv-clip")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["skipped_samples"] == 0
    metrics = json.loads((tmp_path / "runs/csv-clip/metrics.json").read_text())
    assert "test" in json.dumps(metrics)

    assert main(
        [
            "data",
            "shards",
            "data/shapes-csv/pairs.csv",
            "--param",
            "split_column=split",
            "--split",
            "train",
            "--param",
            "caption_columns=[caption,caption_1]",
            "--out",
            "data/shapes-shards",
            "--shard-size",
            "20",
            "--no-progress",
        ]
    ) in (0, None)
    manifest = json.loads((tmp_path / "data/shapes-shards/manifest.json").read_text())
    assert manifest["samples"] == 240 and len(manifest["shards"]) == 12  # the config's 000000..000011

    assert main(["train", "--config", str(CONFIGS / "shards-clip.yaml"), *_sets(SMALL)]) in (0, None)
    rows = read_metrics(tmp_path / "runs/shards-clip")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and np.isfinite([r["loss"] for r in rows]).all()
    assert main(
        [
            "eval",
            "runs/shards-clip",
            "--data",
            "csv",
            "--data-param",
            "path=data/shapes-csv/pairs.csv",
            "--data-param",
            "split_column=split",
            "--data-param",
            "label_columns=[shape+color]",
            "--splits",
            "test",
        ]
    ) in (0, None)
    result = json.loads((tmp_path / "runs/shards-clip/eval.json").read_text())
    assert "test" in json.dumps(result)
