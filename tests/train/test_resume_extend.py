"""Resuming a finished run says so and how to extend it; ``--set train.steps=M`` extends it, with
the learning-rate schedule following the new total from the checkpoint's step on."""

import dataclasses
import math

import pytest
import torch
import yaml

import contrastkit.train.session as session_mod
import contrastkit.train.trainer as trainer_mod
from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.models.dual_encoder import build_model
from contrastkit.train import RunConfig, lr_factor, read_metrics, resume, train
from contrastkit.train.checkpoint import load_weights


def _finished(tmp_path, steps: int = 10):
    cfg = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    changes = {"steps": steps, "ckpt_every": 5, "log_every": 1}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))
    return train(cfg).run_dir


def _message(run, step: int, loss: float) -> str:
    return (
        f"run {run} is already finished at step {step} (last loss {loss:.4f}); to train it further, "
        f"resume it with a larger total: contrastkit train --resume {run} --set train.steps=M (M > {step})"
    )


def test_resuming_a_finished_run_trains_nothing_and_reads_no_data(tmp_path, monkeypatch):
    run = _finished(tmp_path)
    last = [r for r in read_metrics(run) if "loss" in r][-1]
    assert last["step"] == 10
    monkeypatch.setattr(session_mod, "open_split", lambda *a, **k: pytest.fail("data was read"))
    result = resume(run)
    assert result.already_finished and (result.step, result.seconds) == (10, 0.0)
    assert result.last_loss == last["loss"] and result.skipped == last["skipped_total"] == 0
    with pytest.raises(ConfigError, match=f"train.steps=8 must be above step 10, where run {run} stopped"):
        resume(run, steps=8)
    with pytest.raises(ConfigError, match="train.steps must be >= 1, got 0"):
        resume(run, steps=0)


def test_cli_resume_of_a_finished_run_reports_instead_of_nan(tmp_path, capsys):
    run = _finished(tmp_path)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0  # nothing to do is not a failure
    out = capsys.readouterr().out
    last = [r for r in read_metrics(run) if "loss" in r][-1]["loss"]
    assert "nan" not in out and "trained" not in out
    assert out == _message(run, 10, last) + "\n"


def test_extending_follows_the_new_schedule(tmp_path, capsys):
    run = _finished(tmp_path)
    before = {r["step"]: r for r in read_metrics(run) if "lr" in r}
    assert main(["train", "--resume", str(run), "--set", "train.steps=15"]) == 0
    assert capsys.readouterr().out.startswith(f"trained {run}: step 15, loss ")
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 15
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000010", "step_00000015"]
    after = {r["step"]: r for r in read_metrics(run) if "lr" in r}
    assert sorted(after) == list(range(1, 16))
    assert all(after[k] == before[k] for k in range(1, 11))  # the steps taken keep their log
    assert before[10]["lr"] == 0.0  # the old total's cosine had decayed to 0 at step 10
    # the logged lr is the next step's: warm-up 5, then cosine to 0 over 15 steps now
    new = {k: 2e-3 * 0.5 * (1 + math.cos(math.pi * (k - 5) / 10)) for k in range(11, 16)}
    assert {k: after[k]["lr"] for k in new} == pytest.approx(new, rel=1e-9, abs=1e-15)
    assert new[12] == pytest.approx(2e-3 * lr_factor(12, 15, 5, 0.0)) and new[12] > 4e-4
    again = resume(run)
    assert again.already_finished and again.step == 15
    assert again.last_loss == [r for r in read_metrics(run) if "loss" in r][-1]["loss"]


def test_first_extended_step_uses_the_new_learning_rate(tmp_path, monkeypatch):
    """The saved optimizer state carries the old schedule's last rate (0 here): without resetting
    it from the new total, the first extra step would not move the weights at all."""
    run = _finished(tmp_path)
    seen = []
    step = trainer_mod._step

    def spy(s, batch, i):
        seen.append((i, [(g["lr"], g["initial_lr"]) for g in s.optimizer.param_groups]))
        return step(s, batch, i)

    monkeypatch.setattr(trainer_mod, "_step", spy)
    resume(run, steps=11)
    factor = 0.5 * (1 + math.cos(math.pi * (10 - 5) / (11 - 5)))  # warm-up 5, cosine: step 10 of 11
    assert [i for i, _ in seen] == [10]
    assert all(lr == pytest.approx(base * factor, rel=1e-12) and lr > 0 for lr, base in seen[0][1])
    cfg = trainer_mod.load_run_config(run)
    a, b = (build_model(cfg.model, assets_dir=run / "assets") for _ in range(2))
    load_weights(run / "checkpoints" / "step_00000010", a)
    load_weights(run / "checkpoints" / "step_00000011", b)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--set", "optim.lr=1e-3"], "--resume continues a run exactly: --name and --set cannot change it"),
        (["--name", "other"], "--resume continues a run exactly"),
        (["--set", "train.steps=many"], "--set train.steps expects an integer, got 'many'"),
    ],
)
def test_cli_resume_refuses_other_changes_in_one_line(tmp_path, capsys, extra, expected):
    run = tmp_path / "missing-run"
    assert main(["train", "--resume", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {expected}")
