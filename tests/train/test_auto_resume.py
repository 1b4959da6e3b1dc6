"""``train.auto_resume``: starting a run whose folder holds the same config resumes it exactly
(what a ``torchrun --max-restarts`` restart does; tests/train/test_torchrun.py kills a rank for
real); other folders keep their errors; ranks resume the checkpoint rank 0 picks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from contrastkit.core.errors import ConfigError
from contrastkit.scale.launch import spawn_gloo
from contrastkit.train import RunConfig, latest_checkpoint, read_metrics, train
from contrastkit.train.checkpoint import CheckpointError, save_checkpoint
from contrastkit.train.distributed import init_from_env
from contrastkit.train.rundir import agreed_checkpoint

STEPS = 12


class Crash(Exception):
    """Stands in for a killed process: raised from a callback between two steps."""


def _config(out: Path, auto: bool = True, **train_kw) -> RunConfig:
    base = RunConfig.tiny(name="run", out_dir=str(out))
    kw = {"steps": STEPS, "ckpt_every": 4, "log_every": 1, "batch_size": 16, "auto_resume": auto}
    return dataclasses.replace(base, train=dataclasses.replace(base.train, **kw | train_kw))


def _crash_at(step: int):
    def fn(at: int, model) -> dict[str, float]:
        if at == step:
            raise Crash(f"stopped at step {at}")
        return {}

    return [(step, fn)]  # called at that step only (and at the last, never reached)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[float], dict[str, torch.Tensor]]:
    run = train(_config(tmp_path_factory.mktemp("ref"))).run_dir
    return [r["loss"] for r in read_metrics(run)], _weights(run)


@pytest.mark.parametrize("crash", [6, 2])  # after the step-4 checkpoint; before the first one
def test_a_restarted_start_resumes_bit_for_bit(tmp_path, reference, crash):
    cfg = _config(tmp_path)
    with pytest.raises(Crash):
        train(cfg, callbacks=_crash_at(crash))
    assert len(read_metrics(tmp_path / "run")) == crash  # logged beyond the checkpoint: truncated on resume
    if crash < 4:
        with pytest.warns(UserWarning, match="no checkpoint yet"):
            result = train(cfg)  # the same start again
    else:
        result = train(cfg)
    losses, weights = reference
    assert result.step == STEPS and not result.already_finished
    assert [r["step"] for r in read_metrics(result.run_dir)] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in read_metrics(result.run_dir)] == losses  # exactly
    got = _weights(result.run_dir)
    assert got.keys() == weights.keys() and all(got[k].equal(weights[k]) for k in got)


def test_a_finished_run_started_again_trains_nothing(tmp_path, reference):
    cfg = _config(tmp_path)
    train(cfg)
    again = train(cfg)
    assert again.already_finished and again.step == STEPS
    assert again.last_loss == reference[0][-1]


def test_another_config_in_the_folder_is_refused_with_the_difference(tmp_path):
    train(_config(tmp_path, steps=2))
    with pytest.raises(ConfigError, match=r"another config \(train\.steps: 2 there, 3 now\)"):
        train(_config(tmp_path, steps=3))
    # the config is compared as a run config: a key the saved file lacks (added to contrastkit
    # since the run started) counts with its default, as resume reads it
    saved = tmp_path / "run" / "config.yaml"
    data = yaml.safe_load(saved.read_text())
    del data["train"]["keep_checkpoints"]
    saved.write_text(yaml.safe_dump(data, sort_keys=False))
    assert train(_config(tmp_path, steps=2)).already_finished


def test_overwrite_with_auto_resume_is_refused_and_off_keeps_the_old_errors(tmp_path):
    cfg = _config(tmp_path, steps=2)
    train(cfg)
    with pytest.raises(ConfigError, match="--overwrite would delete it"):
        train(cfg, overwrite=True)
    with pytest.raises(ConfigError, match="already exists; resume it"):
        train(_config(tmp_path, auto=False, steps=2))
    assert train(_config(tmp_path, auto=False, steps=2), overwrite=True).step == 2  # as before


def test_checkpoints_without_a_config_are_refused(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has checkpoints but no config.yaml"):
        train(_config(tmp_path))


def _save(run: Path, step: int) -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(run / "checkpoints", step, model, torch.nn.Module(), opt, sched, {}, keep=5)


def _agreed(cases: list[list[str]]) -> list[str]:
    """Each rank resumes from its own view (``case[rank]``) of one run folder, for every case."""
    ctx = init_from_env(torch.device("cpu"))
    out = []
    for case in cases:
        try:
            out.append(str(agreed_checkpoint(Path(case[ctx.rank]), ctx)))
        except CheckpointError as err:
            out.append(f"error: {err}")
    return out


def test_every_rank_resumes_the_checkpoint_rank_0_picks(tmp_path):
    """Rank 1 is shown a stale folder (latest.json one checkpoint behind); it still loads rank 0's
    newest. If rank 0 finds no intact checkpoint, every rank raises (none waits in a collective)."""
    fresh, stale, broken = tmp_path / "fresh", tmp_path / "stale", tmp_path / "broken"
    for run in (fresh, stale):
        _save(run, 4)
        _save(run, 8)
    (stale / "checkpoints" / "latest.json").write_text(json.dumps({"step": 4, "path": "step_00000004"}))
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "latest.json").write_text("{")
    cases = [[str(fresh), str(stale)], [str(broken), str(stale)]]
    rank0, rank1 = spawn_gloo(_agreed, 2, cases, timeout_s=180)
    assert rank0[0] == str(fresh / "checkpoints" / "step_00000008")
    assert rank1[0] == str(stale / "checkpoints" / "step_00000008")
    assert all(r[1].startswith("error: ") and "latest.json" in r[1] for r in (rank0, rank1)), (rank0, rank1)
