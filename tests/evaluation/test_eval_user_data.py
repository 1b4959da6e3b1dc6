"""`contrastkit eval RUN --data imagefolder|csv`: the user's own files, same numbers as the Python API."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from contrastkit.cli import main
from contrastkit.data import DataConfig, load_split, make_shapes
from contrastkit.data.convert import encode_image
from contrastkit.evaluation import evaluate_pairs
from contrastkit.evaluation.encoders import model_encoders
from contrastkit.evaluation.prompts import apply_prompt_files
from contrastkit.train import RunConfig, load_run, train

N = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = RunConfig.tiny(out_dir=str(tmp_path_factory.mktemp("runs")))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=4, ckpt_every=4))
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def shapes():
    return make_shapes("train", n=N, image_size=32)


def python_api(run_dir, name, params, **prompts):
    """The same split evaluated without the CLI: load the run, decode the files, evaluate."""
    cfg, model, _, _ = load_run(run_dir)
    image = dataclasses.replace(cfg.data.image, size=32)  # the run trained on 32-pixel Shapes
    data = DataConfig(
        name=name, params=params, splits={"test": {}}, eval_splits=("test",), train_split="test"
    )
    pairs = load_split(dataclasses.replace(data, image=image), "test")
    pairs = apply_prompt_files(pairs, **prompts)
    return pairs, evaluate_pairs(model_encoders(model), pairs)


def in_unit_interval(metrics):
    """Every rate in [0, 1] (ranks, counts and the probe's λ are not rates)."""
    counts = ("median_rank", "tied_queries", "n_train", "n_test", "lambda")
    values = [v for k, v in metrics.items() if not k.endswith(counts)]
    return len(values) > 0 and all(0.0 <= v <= 1.0 for v in values if not np.isnan(v))


def test_eval_on_an_imagefolder(tmp_path, run, shapes):
    task = shapes.tasks["shape"]
    root = tmp_path / "photos"
    for i in np.flatnonzero(task.labels >= 0):
        d = root / f"class_{task.labels[i]}"  # folder names are not the class names…
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.png").write_bytes(encode_image(shapes.images[i]))
    present = sorted({int(y) for y in task.labels if y >= 0})
    classes = [task.classnames[y] for y in present]  # …--classes gives them, in folder (label) order
    templates = ["a photo of a {}.", "a rendering of a {}."]
    out = tmp_path / "eval"
    args = ["eval", str(run), "--data", "imagefolder", "--data-param", f"root={root}", "--out", str(out)]
    args += ["--classes", ",".join(classes), "--templates", "|".join(templates)]
    assert main([*args, "--tasks", "zeroshot,retrieval,probe"]) == 0
    report = json.loads((out / "eval.json").read_text())
    metrics = report["metrics"]["test"]
    labelled = int((task.labels >= 0).sum())
    assert report["n"]["test"] == {"images": labelled, "texts": labelled}
    assert report["protocol"]["data"] == "imagefolder" and report["protocol"]["image"]["size"] == 32
    prompts = report["protocol"]["prompts"]["class"]
    assert prompts["classnames"]["values"] == classes and prompts["templates"]["values"] == templates
    assert in_unit_interval(metrics)
    assert 0 <= metrics["probe/class/linear_top1"] <= 1 and metrics["probe/class/self_split"] == 1
    pairs, expect = python_api(run, "imagefolder", {"root": str(root)}, classes=classes, templates=templates)
    assert len(pairs) == labelled
    for key, value in expect.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    assert "zeroshot/class/top1" in expect and "retrieval/text_to_image_R@1" in expect


def test_eval_on_a_csv_with_two_captions_per_image(tmp_path, run, shapes):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(N):
        (tmp_path / "img" / f"{i}.png").write_bytes(encode_image(shapes.images[i]))
        rows.append((f"img/{i}.png", shapes.captions[i][0], shapes.captions[i][1]))
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "a", "b"), *rows])
    out = tmp_path / "eval"
    params = ["--data-param", f"path={tmp_path / 'pairs.csv'}", "--data-param", "caption_columns=[a, b]"]
    assert main(["eval", str(run), "--data", "csv", *params, "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    metrics = report["metrics"]["test"]
    assert report["n"]["test"] == {"images": N, "texts": 2 * N}
    assert report["protocol"]["data_params"]["caption_columns"] == ["a", "b"]
    assert in_unit_interval(metrics) and not any(k.startswith("zeroshot") for k in metrics)
    params_py = {"path": str(tmp_path / "pairs.csv"), "caption_columns": ["a", "b"]}
    pairs, expect = python_api(run, "csv", params_py)
    assert pairs.captions[3] == rows[3][1:]
    assert set(expect) == set(metrics)
    for key, value in expect.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    # the split name does not matter for a file without a split column: all rows are evaluated
    assert (
        main(["eval", str(run), "--data", "csv", *params, "--out", str(tmp_path / "v"), "--splits", "val"])
        == 0
    )
    other = json.loads((tmp_path / "v" / "eval.json").read_text())["metrics"]["val"]
    assert other == metrics
