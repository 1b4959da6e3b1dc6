"""CLI smoke tests on a tiny config: train, resume, eval, list, clear errors."""

import json

import pytest
import yaml

from contrastkit.cli import main
from contrastkit.core import to_dict
from contrastkit.train import RunConfig


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(to_dict(RunConfig.tiny(out_dir=str(tmp_path / "runs")))))
    return path


def test_train_resume_eval(tiny_yaml, tmp_path, capsys):
    assert (
        main(["train", "--config", str(tiny_yaml), "--set", "train.steps=4", "--set", "train.ckpt_every=2"])
        == 0
    )
    assert "trained" in capsys.readouterr().out
    run = tmp_path / "runs" / "tiny"
    # extend nothing: resuming a finished run is a no-op that still reports
    assert main(["train", "--resume", str(run)]) == 0
    assert main(["eval", str(run), "--splits", "test", "--tasks", "zeroshot,retrieval"]) == 0
    out = capsys.readouterr().out
    assert "zeroshot/shape+color/top1" in out and "retrieval/text_to_image_R@10" in out
    report = json.loads((run / "metrics.json").read_text())
    assert report["checkpoint"] == "step_00000004"
    assert 0.0 <= report["metrics"]["test"]["retrieval/image_to_text_R@1"] <= 1.0
    assert (run / "similarity.png").stat().st_size > 1000


def test_errors_are_one_clear_line(tiny_yaml, tmp_path, capsys):
    assert main(["train", "--config", str(tiny_yaml), "--set", "train.stpes=4"]) == 2
    assert "unknown config key(s) ['stpes'] in train" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "not a contrastkit run" in capsys.readouterr().err
    assert main(["train", "--config", str(tiny_yaml), "--set", "loss.name=infonse"]) == 2
    assert "unknown loss 'infonse'" in capsys.readouterr().err


def test_list(capsys):
    assert main(["list", "losses"]) == 0
    names = capsys.readouterr().out.split()
    assert {"clip", "siglip", "supcon", "dcl", "mochi"} <= set(names) and names == sorted(names)


def test_eval_task_options_reach_the_tasks_and_the_protocol(tiny_yaml, tmp_path, capsys):
    assert main(["train", "--config", str(tiny_yaml), "--set", "train.steps=2"]) == 0
    run, out = tmp_path / "runs" / "tiny", tmp_path / "ev"
    args = ["eval", str(run), "--splits", "test", "--tasks", "instruct", "--out", str(out)]
    assert main([*args, "--option", "instruct.exclude=own", "--option", "instruct.targets=[image]"]) == 0
    saved = json.loads((out / "eval.json").read_text())
    assert saved["protocol"]["options"] == {"instruct": {"exclude": "own", "targets": ["image"]}}
    metrics = saved["metrics"]["test"]
    # only exclude=own measures the conjunction task, and targets=[image] drops the caption gallery
    assert "instruct/same_shape_and_color/precision@1" in metrics
    assert not any("/text/" in k for k in metrics)
    capsys.readouterr()
    assert main([*args, "--option", "errors.compare=runs/x"]) == 2
    assert "task 'errors' is not in --tasks ['instruct']" in capsys.readouterr().err
    assert main([*args, "--option", "exclude=own"]) == 2
    assert "--option expects TASK.KEY=VALUE" in capsys.readouterr().err
