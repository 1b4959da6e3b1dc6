"""E-CONTINUAL: forgetting metrics by hand, the accuracy matrix of a tiny run, WiSE-FT rows, the report."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from contrastkit.cli import main
from contrastkit.core.config import load_yaml
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.io import atomic_write_text
from contrastkit.data import make_shapes
from contrastkit.evaluation.continual import (
    accuracy_matrix,
    continual_metrics,
    task_accuracies,
    wise_accuracies,
)
from contrastkit.evaluation.continual_report import continual_report, setting_labels
from contrastkit.evaluation.encoders import model_encoders
from contrastkit.evaluation.zeroshot import zero_shot_classifier
from contrastkit.train import RunConfig, load_run, train
from contrastkit.train.continual import ContinualConfig
from contrastkit.train.wise import initial_model


def test_forgetting_metrics_equal_a_hand_computation():
    nan = math.nan
    a = np.array([[0.9, nan, nan], [0.6, 0.8, nan], [0.7, 0.5, 0.95]])
    m = continual_metrics(a)
    assert m["average_accuracy"] == pytest.approx((0.7 + 0.5 + 0.95) / 3)
    # stage 0: max(0.9, 0.6) − 0.7 = 0.2; stage 1: max(0.8) − 0.5 = 0.3
    assert m["forgetting"] == pytest.approx([0.2, 0.3]) and m["average_forgetting"] == pytest.approx(0.25)
    one = continual_metrics(np.array([[0.4]]))
    assert (
        one["average_accuracy"] == 0.4 and one["forgetting"] == [] and math.isnan(one["average_forgetting"])
    )
    better = continual_metrics(np.array([[0.5, nan], [0.7, 0.9]]))  # improving is negative forgetting
    assert better["forgetting"] == pytest.approx([-0.2])
    with pytest.raises(InputError, match="accuracy matrix"):
        continual_metrics(np.zeros((3, 2)))


def test_task_accuracies_predict_among_the_seen_the_stage_or_all_classes():
    # 4 images of classes 0, 1, 2, 3; stages [[0, 1], [2, 3]]; scores favour class 3 for image 0
    scores = np.array(
        [
            [0.5, 0.1, 0.0, 0.9],  # label 0: among seen after stage 0 ({0, 1}) right; among all wrong
            [0.6, 0.2, 0.0, 0.0],  # label 1: wrong everywhere
            [0.0, 0.0, 0.3, 0.2],  # label 2: right
            [0.0, 0.7, 0.1, 0.5],  # label 3: among seen {0..3} wrong (1), among its stage {2, 3} right
        ]
    )
    y = np.array([0, 1, 2, 3])
    stages = [[0, 1], [2, 3]]
    assert task_accuracies(scores, y, stages, 0, "seen").tolist() == [0.5]
    assert task_accuracies(scores, y, stages, 1, "seen").tolist() == [0.0, 0.5]
    assert task_accuracies(scores, y, stages, 1, "task").tolist() == [0.5, 1.0]
    assert task_accuracies(scores, y, stages, 0, "all").tolist() == [0.0]
    with pytest.raises(InputError, match="candidates"):
        task_accuracies(scores, y, stages, 0, "some")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("continual")
    cont = ContinualConfig(
        stages=(("circle", "square"), ("triangle", "diamond")),
        task="shape",
        memory_size=16,
        memory_per_batch=8,
    )
    cfg = RunConfig.tiny(out_dir=str(out))
    cfg = dataclasses.replace(
        cfg, continual=cont, train=dataclasses.replace(cfg.train, steps=8, ckpt_every=4)
    )
    return train(cfg).run_dir


def _direct(model, stage_classes: list[int], candidates: list[int]) -> float:
    pairs = make_shapes("test", n=128, image_size=32, seed=0)
    task = pairs.tasks["shape"]
    rows = np.flatnonzero(np.isin(task.labels, stage_classes))
    enc = model_encoders(model)
    clf = zero_shot_classifier(enc.texts, task.prompts())
    scores = enc.images(pairs.images[torch.as_tensor(rows)]) @ clf.T
    pred = np.asarray(candidates)[scores[:, candidates].argmax(1).numpy()]
    return float((pred == task.labels[rows]).mean())


def test_accuracy_matrix_and_wise_rows_equal_direct_evaluations(tiny_run):
    a = accuracy_matrix(tiny_run)
    m0, m1 = (load_run(tiny_run / f"stage-{t}")[1] for t in range(2))
    assert a[0, 0] == _direct(m0, [0, 1], [0, 1]) and math.isnan(a[0, 1])
    assert a[1].tolist() == [_direct(m1, [0, 1], [0, 1, 2, 3]), _direct(m1, [2, 3], [0, 1, 2, 3])]
    task = accuracy_matrix(tiny_run, candidates="task")
    assert task[1, 0] == _direct(m1, [0, 1], [0, 1])
    rows = wise_accuracies(tiny_run, [0.0, 1.0])
    init = initial_model(tiny_run / "stage-0")
    assert rows[0]["accuracies"] == [_direct(init, [0, 1], [0, 1, 2, 3]), _direct(init, [2, 3], [0, 1, 2, 3])]
    assert rows[1]["accuracies"] == a[1].tolist()  # α = 1: the final model exactly
    first = wise_accuracies(tiny_run, [0.0], wise_from="first_stage")
    assert first[0]["accuracies"][0] == _direct(m0, [0, 1], [0, 1, 2, 3])
    with pytest.raises(ConfigError, match="not a continual run"):
        accuracy_matrix(tiny_run / "stage-0")


def test_report_files_and_command_line(tiny_run, tmp_path, capsys):
    report = continual_report([tiny_run], tmp_path / "rep", wise=(0.5,))
    saved = json.loads((tmp_path / "rep" / "continual.json").read_text())  # strict JSON: NaN as null
    assert saved["settings"]["tiny"]["matrix"][0][1] is None and saved == report
    g = report["settings"]["tiny"]
    assert g["average_accuracy"] == pytest.approx(np.mean(g["matrix"][-1]))
    assert g["wise"][0]["alpha"] == 0.5 and len(g["wise"][0]["accuracies"]) == 2
    md = (tmp_path / "rep" / "continual.md").read_text()
    assert "| tiny + WiSE-FT α=0.5 (θ₀: initial weights) | 1 |" in md and "after stage" in md
    assert (tmp_path / "rep" / "continual.png").stat().st_size > 0
    out = tmp_path / "cli"
    assert main(["continual", str(tiny_run), "--out", str(out), "--wise", "", "--no-progress"]) == 0
    assert "final average accuracy" in capsys.readouterr().out and (out / "continual.md").is_file()
    assert main(["continual", str(tiny_run), str(tiny_run), "--no-progress"]) == 2  # several runs: --out


def test_settings_are_labelled_by_the_config_values_that_differ(tiny_run, tmp_path):
    """A study's runs are named by a slug (``methodcoconut-s0``); the report names their setting as
    the study does (``continual.method=coconut``), not by the slug, and seeds of one setting group."""
    runs = []
    for name, method, seed in (("methodcoconut-s0", "coconut", 0), ("methodcoconut-s1", "coconut", 1),
                               ("methodfinetune-s0", "finetune", 0)):  # fmt: skip
        cfg = load_yaml(tiny_run / "config.yaml")
        cfg["name"], cfg["continual"]["method"], cfg["train"]["seed"] = name, method, seed
        (tmp_path / name).mkdir()
        atomic_write_text(tmp_path / name / "config.yaml", yaml.safe_dump(cfg))
        runs.append(tmp_path / name)
    assert setting_labels(runs) == ["continual.method=coconut"] * 2 + ["continual.method=finetune"]
    assert setting_labels(runs[:2]) == [None, None]  # the seeds of one setting: the folder name
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    cfg = load_yaml(other / "config.yaml")
    cfg["continual"]["lambda_nsc"] = 0.5
    atomic_write_text(other / "config.yaml", yaml.safe_dump(cfg))
    report = continual_report([tiny_run, other], tmp_path / "rep", wise=())
    assert list(report["settings"]) == ["continual.lambda_nsc=0.1", "continual.lambda_nsc=0.5"]
    assert [r["setting"] for r in report["runs"]] == list(report["settings"])
    md = (tmp_path / "rep" / "continual.md").read_text()
    assert "| continual.lambda_nsc=0.5 | 1 |" in md and "**continual.lambda_nsc=0.1**" in md
