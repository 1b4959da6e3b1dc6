"""A study metric of any evaluation task, not only the default selection (zeroshot, retrieval):
the runner evaluates the metric's task, so e.g. a Winoground binding score can be compared."""

import dataclasses

import numpy as np
import pytest
import yaml

from contrastkit.core import to_dict
from contrastkit.studies.study import run_study
from contrastkit.train import RunConfig


def test_a_metric_outside_the_default_tasks_is_evaluated(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(to_dict(RunConfig.tiny())))
    study = {
        "name": "wino",
        "base": "base.yaml",
        "overrides": {"train.steps": 2, "train.ckpt_every": 2},
        "grid": {"loss.name": ["clip"]},
        "seeds": [0],
        "metric": "winoground/attribute/text",
        "nboot": 50,
        "out_dir": str(tmp_path / "studies"),
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert run_study(tmp_path / "study.yaml").is_file()
    with np.load(tmp_path / "studies" / "wino" / "runs" / "clip-s0" / "examples.npz") as z:
        text = z["winoground|attribute|text"]
        assert text.shape == (200,) and set(np.unique(text)) <= {0.0, 1.0}  # one 0/1 per 2×2 group
        assert "zeroshot|color|top1" in z  # the default tasks are still there


@pytest.mark.parametrize("config_threads,expected", [(1, 1), (0, 2), (3, 2)])
def test_a_run_keeps_the_thread_cap_of_its_config(tmp_path, monkeypatch, config_threads, expected):
    # the runner gives each run cores / jobs threads, but never more than the run config's
    # train.threads (0 = no cap): a config that asks for one thread gets one
    import contrastkit.train as train_module
    from contrastkit.studies.config import load_study
    from contrastkit.studies.runner import execute_run, plan_runs

    base = RunConfig.tiny()
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, threads=config_threads))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(to_dict(base)))
    study = {"name": "t", "base": "base.yaml", "grid": {"loss.name": ["clip"]}, "seeds": [0]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    seen = {}

    def fake_train(cfg, **kwargs):
        seen["threads"] = cfg.train.threads
        raise RuntimeError("stop before training")

    monkeypatch.setattr(train_module, "train", fake_train)
    s, b = load_study(tmp_path / "study.yaml")
    spec = plan_runs(s, b, tmp_path / "studies" / "t")[0]
    with pytest.raises(RuntimeError, match="stop before training"):
        execute_run(spec, s, threads=2)
    assert seen["threads"] == expected
