"""Honest outputs: the split probes fit on (default: the training split; a half split only with a
warning), split-independent tasks reported once, one embedding-size check for every task, and
`eval RUN --out DIR` writing only into DIR."""

import dataclasses
import hashlib
import json
import logging

import numpy as np
import pytest
import torch

from contrastkit.cli import main
from contrastkit.core.errors import InputError
from contrastkit.data import load_split, make_shapes
from contrastkit.data.convert import encode_image
from contrastkit.evaluation import EVAL_TASKS, Encoders, EvalContext, evaluate_examples, format_table
from contrastkit.evaluation.report import evaluate_model
from contrastkit.train import RunConfig, load_run, train

PROBE = {"probe": {"lam": 1e-3, "shots": (1,), "seeds": (0,)}}  # fixed λ: no sweep, fast


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = RunConfig.tiny(out_dir=str(tmp_path_factory.mktemp("runs")))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, ckpt_every=2))
    return train(cfg).run_dir


def colour_encoders(d: int = 3) -> Encoders:
    """Images → mean colour; texts → letter counts (both d-dimensional, deterministic)."""

    def images(x):
        return x.float().mean((2, 3))[:, :d] / 255 + 1e-3

    def texts(t):
        return torch.tensor([[s.count(c) + 1.0 for c in "aeiou"[:d]] for s in t])

    return Encoders(images, texts)


def test_probes_fit_on_the_runs_training_split_by_default(run, tmp_path):
    report = evaluate_model(run, tmp_path / "e", splits=["test"], tasks=["probe"], options=PROBE)
    fit = report["protocol"]["fit_split"]
    assert fit == {
        "split": "train",
        "chosen": "default: the run config's data.train_split",
        "images": 512,
        "used_by": ["probe"],
    }
    cfg, _, _, _ = load_run(run)
    labelled = int((load_split(cfg.data, "train").tasks["shape"].labels >= 0).sum())
    m = report["metrics"]["test"]
    assert m["probe/shape/self_split"] == 0.0 and m["probe/shape/n_train"] == labelled == 359
    tested = int((load_split(cfg.data, "test").tasks["shape"].labels >= 0).sum())
    assert m["probe/shape/n_test"] == tested == 87  # every labelled test image, not half of them
    # naming the evaluated split itself is allowed, and said
    report = evaluate_model(
        run, tmp_path / "f", splits=["test"], tasks=["probe"], train_split="test", options=PROBE
    )
    fit = report["protocol"]["fit_split"]
    assert fit["split"] == "test" and fit["chosen"] == "given (--train-split)"
    assert fit["warning"] == "the fit split holds the same images as evaluated split(s) ['test']"
    # no task fits: nothing is loaded
    report = evaluate_model(run, tmp_path / "g", splits=["test"], tasks=["zeroshot"])
    assert report["protocol"]["fit_split"]["split"] is None


def test_without_a_training_split_the_half_split_is_warned_and_recorded(tmp_path, caplog):
    pairs = make_shapes("test", n=60, image_size=32)
    task = pairs.tasks["shape"]
    for i in np.flatnonzero(task.labels >= 0):
        folder = tmp_path / "photos" / f"class_{task.labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(encode_image(pairs.images[i]))
    params = {"root": str(tmp_path / "photos")}
    with caplog.at_level(logging.WARNING, logger="contrastkit.evaluation"):
        report = evaluate_model(
            colour_encoders(),
            tmp_path / "e",
            data="imagefolder",
            data_params=params,
            tasks=["probe"],
            options=PROBE,
        )
    fit = report["protocol"]["fit_split"]
    assert fit["split"] is None and fit["used_by"] == ["probe"]
    assert fit["chosen"].startswith("no default for the file source 'imagefolder'")
    assert fit["fallback"] == "seeded 50/50 split of each evaluated split (fit on one half, report the other)"
    assert fit["self_split"] == ["test: probe/class"]
    assert fit["warning"].startswith("fit and reported on seeded halves of the evaluated split")
    assert report["metrics"]["test"]["probe/class/self_split"] == 1.0
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("no training split for ['probe']") for m in logged)
    assert any("probe: task 'class' has no training split" in m for m in logged)


def test_split_independent_tasks_are_reported_once(tmp_path):
    enc = colour_encoders()
    options = {"winoground": {"n": 8}, "suppression": {"n_fit": 60, "n_test": 40}}
    report = evaluate_model(
        enc,
        tmp_path,
        splits=("test", "unseen"),
        data_params={"n": 40},
        tasks=["zeroshot", "winoground", "suppression"],
        options=options,
    )
    metrics = report["metrics"]
    assert list(metrics) == ["test", "unseen", "generated"]
    for split in ("test", "unseen"):
        assert {k.split("/")[0] for k in metrics[split]} == {"zeroshot"}
    assert {k.split("/")[0] for k in metrics["generated"]} == {"winoground", "suppression"}
    assert len(metrics["generated"]) == 2 * 4 + 4 * 3  # 2 kinds × 4 scores, 4 attributes × 3
    assert report["protocol"]["split_independent"]["tasks"] == ["winoground", "suppression"]
    with np.load(tmp_path / "per_example.npz", allow_pickle=False) as z:
        assert z["generated/winoground/attribute/group"].shape == (8,)
        assert not any(k.startswith(("test/winoground", "unseen/suppression")) for k in z.files)
    # why once is right: the same task on the other split's context gives the same numbers
    unseen = make_shapes("unseen", n=40)
    for name in ("winoground", "suppression"):
        m, _ = EVAL_TASKS.get(name)(EvalContext(enc, unseen, options=options))
        assert m == {k: v for k, v in metrics["generated"].items() if k.startswith(name)}
    saved = json.loads((tmp_path / "eval.json").read_text())["metrics"]  # keys sorted on disk
    assert format_table(saved).splitlines()[0].split() == ["metric", "test", "unseen", "generated"]
    only_once = {"generated": metrics["generated"], "test": {}, "unseen": {}}
    assert format_table(only_once).splitlines()[0].split() == ["metric", "generated"]
    # suppression on the evaluated pairs reads the split: per split again
    opts = {"suppression": {"source": "pairs", "lam": 1e-3}}
    report = evaluate_model(
        enc,
        tmp_path / "p",
        splits=("test", "unseen"),
        data_params={"n": 40},
        tasks=["suppression"],
        options=opts,
    )
    assert list(report["metrics"]) == ["test", "unseen"]
    assert report["metrics"]["test"]["suppression/self_split"] == 0.0  # fit on shapes' train split


@pytest.mark.parametrize("task", ["zeroshot", "retrieval", "multilabel", "geometry"])
def test_one_embedding_size_check_for_every_task(task):
    pairs = make_shapes("test", n=20)
    enc = Encoders(lambda x: torch.ones(len(x), 4), lambda t: torch.ones(len(t), 3))
    with pytest.raises(InputError, match=r"image embeddings \[20, 4\] and text embeddings \[\d+, 3\] differ"):
        evaluate_examples(enc, pairs, [task])


def _hashes(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_eval_run_into_another_folder_leaves_the_run_untouched(run, tmp_path, capsys):
    before = _hashes(run)
    out = tmp_path / "elsewhere"
    assert main(["eval", str(run), "--splits", "test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert _hashes(run) == before
    assert {"eval.json", "metrics.json", "per_example.npz", "similarity.png"} <= {
        p.name for p in out.iterdir()
    }
    assert f"wrote {out}/" in printed and "retrieval/image_to_text_R@1_random_ties" in printed
    legacy = json.loads((out / "metrics.json").read_text())
    assert (
        legacy["run"] == str(run)
        and legacy["metrics"] == json.loads((out / "eval.json").read_text())["metrics"]
    )
