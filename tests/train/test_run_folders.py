"""Run folders: safe names, overwrite only what contrastkit made, one process at a time, a run
killed before its first checkpoint, and non-finite weights never carried on or saved."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest
import torch

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError, TrainingDivergedError
from contrastkit.train import RunConfig, latest_checkpoint, read_metrics, resume, train
from contrastkit.train.guard import WeightSnapshot
from contrastkit.train.rundir import MARKER, RunLock


def _cfg(tmp_path, name="run", **train_changes) -> RunConfig:
    cfg = RunConfig.tiny(name=name, out_dir=str(tmp_path / "runs"))
    changes = {"steps": 6, "ckpt_every": 3, **train_changes}
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "", ".", "..", "a/b", ".hidden", "x" * 200])
def test_unsafe_run_names_are_refused_before_anything_is_written(tmp_path, name):
    with pytest.raises(ConfigError, match="must be one folder name"):
        train(_cfg(tmp_path, name=name))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_cli_name_outside_out_dir_is_a_one_line_error(tmp_path, capsys):
    rc = main(
        [
            "train",
            "--config",
            "configs/shapes-clip.yaml",
            "--name",
            "../escape",
            "--set",
            f"out_dir={tmp_path / 'runs'}",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: run name '../escape'") and "Traceback" not in err
    assert not (tmp_path / "escape").exists()


def test_overwrite_deletes_only_folders_contrastkit_made(tmp_path):
    decoy = tmp_path / "runs" / "decoy"
    decoy.mkdir(parents=True)
    (decoy / "config.yaml").write_text("name: mine\n")
    (decoy / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="no contrastkit run marker"):
        train(_cfg(tmp_path, name="decoy"), overwrite=True)
    assert (decoy / "precious.txt").read_text() == "keep me"
    first = train(_cfg(tmp_path, name="mine"))
    assert (first.run_dir / MARKER).is_file()
    (first.run_dir / "note.txt").write_text("old")
    again = train(_cfg(tmp_path, name="mine"), overwrite=True)  # a marked run folder is replaced
    assert not (again.run_dir / "note.txt").exists() and (again.run_dir / MARKER).is_file()
    assert (tmp_path / "runs").is_dir() and (decoy / "precious.txt").is_file()


def test_a_second_process_on_the_same_run_gets_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path)
    run = tmp_path / "runs" / "run"
    with RunLock(run):
        with pytest.raises(ConfigError, match="in use by another contrastkit process"):
            train(cfg)
        with pytest.raises(ConfigError, match="in use"):
            train(cfg, overwrite=True)
    train(cfg)  # released on exit
    with RunLock(run), pytest.raises(ConfigError, match="in use"):
        resume(run)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "runs" / "run"
    code = (
        "import sys, time, pathlib; from contrastkit.train.rundir import RunLock\n"
        f"lock = RunLock(pathlib.Path({str(run)!r})).__enter__(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
        RunLock(run).__enter__()
    proc.kill()
    proc.wait()
    with RunLock(run):  # the kernel dropped the dead holder's lock
        pass


class _Stop(Exception):
    pass


def test_a_run_killed_before_its_first_checkpoint_restarts_from_step_0(tmp_path):
    reference = read_metrics(train(_cfg(tmp_path, name="ref", log_every=1)).run_dir)

    def die(step, model):
        raise _Stop

    cfg = _cfg(tmp_path, name="early", log_every=1)
    with pytest.raises(_Stop):
        train(cfg, callbacks=[(2, die)])  # dies at step 2, before the step-3 checkpoint
    run = tmp_path / "runs" / "early"
    assert (run / "config.yaml").is_file() and not (run / "checkpoints").exists()
    with pytest.raises(ConfigError, match="no checkpoint yet.*--resume .* starts it again from step 0"):
        train(cfg)
    with pytest.warns(UserWarning, match="no checkpoint yet"):
        resume(run)
    assert [r["loss"] for r in read_metrics(run)] == [r["loss"] for r in reference]


def test_weight_snapshot_undoes_a_step_that_makes_weights_non_finite():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(layer.parameters(), lr=float("inf"))
    snap = WeightSnapshot(opt)
    before = [p.detach().clone() for p in layer.parameters()]
    layer(torch.randn(5, 4)).sum().backward()
    snap.take()
    opt.step()
    assert not snap.finite()
    snap.restore()
    assert all(torch.equal(a, p) for a, p in zip(before, layer.parameters()))
    assert len(opt.state) == 0  # the first step's optimizer state is gone again
    opt.param_groups[0]["lr"] = 0.1
    opt.step()
    snap.take()
    moments = [opt.state[p]["exp_avg"].clone() for p in layer.parameters()]
    opt.param_groups[0]["lr"] = float("inf")
    opt.step()
    snap.restore()
    assert all(torch.equal(m, opt.state[p]["exp_avg"]) for m, p in zip(moments, layer.parameters()))


def test_steps_that_would_poison_the_weights_are_undone_and_a_hopeless_run_fails(tmp_path, monkeypatch):
    real_step = torch.optim.AdamW.step
    poisoned = {3, 4}
    calls = {"n": 0}

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] in poisoned:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    result = train(_cfg(tmp_path, name="poisoned", log_every=1))
    rows = read_metrics(result.run_dir)
    skipped = [r["step"] for r in rows if "skip_reason" in r]
    assert skipped == [3, 4] and all(
        "non-finite weights" in r["skip_reason"] for r in rows if "skip_reason" in r
    )
    assert result.skipped == 2
    from safetensors.torch import load_file

    weights = load_file(str(latest_checkpoint(result.run_dir) / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())

    poisoned.update(range(1, 100))
    calls["n"] = 0
    with pytest.raises(TrainingDivergedError):
        train(_cfg(tmp_path, name="hopeless", steps=3))
    assert not (tmp_path / "runs" / "hopeless" / "checkpoints").exists()


def test_lock_and_name_checks_cost_nothing_noticeable(tmp_path):
    t0 = time.perf_counter()
    for _ in range(200):
        with RunLock(tmp_path / "r"):
            pass
    assert time.perf_counter() - t0 < 2.0


def test_eval_of_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    run = train(_cfg(tmp_path, name="damaged")).run_dir
    weights = latest_checkpoint(run) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    rc = main(["eval", str(run), "--tasks", "zeroshot"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "model.safetensors" in err and "\n" not in err


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path):
    from contrastkit.losses import LossConfig

    bad = dataclasses.replace(_cfg(tmp_path, name="bad"), loss=LossConfig("clip", {"init_temperature": -1.0}))
    with pytest.raises(ConfigError, match="init_temperature"):
        train(bad)
    assert not (tmp_path / "runs" / "bad").exists()
    train(_cfg(tmp_path, name="bad"))  # the corrected config starts without --overwrite


def test_a_bad_init_from_fails_in_one_line_before_any_data_is_read(tmp_path, monkeypatch):
    import contrastkit.train.session as session_mod

    def no_data(*a, **k):
        raise AssertionError("data was opened before init_from was checked")

    monkeypatch.setattr(session_mod, "open_split", no_data)
    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    for source, match in [
        (tmp_path / "nowhere", "no contrastkit run folder"),
        (hf, "is a Hugging Face model folder"),
    ]:
        cfg = _cfg(tmp_path, name="ft")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=str(source)))
        with pytest.raises((ConfigError, FileNotFoundError), match=match):
            train(cfg)
        assert not (tmp_path / "runs" / "ft").exists()


def test_missing_pretrained_files_fail_before_any_data_is_read(tmp_path, monkeypatch):
    import contrastkit.train.session as session_mod
    from contrastkit.core.errors import MissingFileError
    from contrastkit.models import TowerConfig

    monkeypatch.setattr(session_mod, "open_split", lambda *a, **k: pytest.fail("data was read first"))
    cfg = _cfg(tmp_path, name="pre")
    towers = {
        **cfg.model.towers,
        "text": TowerConfig("cached_text", {"tower": {"name": "hf_pretrained", "params": {"path": "/nope"}}}),
    }
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, towers=towers))
    with pytest.raises(MissingFileError, match=r"model.towers.text.params.tower.path: no model folder /nope"):
        train(cfg)
