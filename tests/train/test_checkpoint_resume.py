"""Checkpoints round-trip exactly; resume continues bit-for-bit; crashes lose nothing."""

import dataclasses
import json

import pytest
import torch

from contrastkit.core.errors import ConfigError, MissingFileError
from contrastkit.data import make_shapes
from contrastkit.train import RunConfig, load_run, read_metrics, resume, train
from contrastkit.train import checkpoint as ckpt_mod


def tiny(tmp_path, **train_changes):
    cfg = RunConfig.tiny(out_dir=str(tmp_path))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_changes))


def losses_by_step(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_resume_after_k_steps_matches_uninterrupted_run(tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    train(tiny(full_dir, steps=15, log_every=1, ckpt_every=100))
    # Interrupted run: same config, stopped after its checkpoint at step 10 …
    cut = tiny(cut_dir, steps=15, log_every=1, ckpt_every=10)
    train(cut)
    (cut_dir / "tiny" / "checkpoints" / "latest.json").write_text(
        json.dumps({"step": 10, "path": "step_00000010"})
    )
    # … then resumed: steps 11..15 must reproduce the uninterrupted losses exactly.
    result = resume(cut_dir / "tiny")
    assert result.step == 15
    full, resumed = losses_by_step(full_dir / "tiny"), losses_by_step(cut_dir / "tiny")
    assert [resumed[k] for k in range(11, 16)] == [full[k] for k in range(11, 16)]
    assert sorted(resumed) == list(range(1, 16))  # the metrics file reads as one run


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    result = train(tiny(tmp_path, steps=6, ckpt_every=6))
    _, model, loss, ckpt = load_run(result.run_dir)
    assert ckpt.name == "step_00000006"
    pairs = make_shapes("test", 8)
    ids = model.tokenize([c[0] for c in pairs.captions])
    _, model2, loss2, _ = load_run(result.run_dir)
    with torch.no_grad():
        a, b = model({"image": pairs.images, "text": ids}), model2({"image": pairs.images, "text": ids})
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"])
    assert torch.equal(loss.log_scale, loss2.log_scale)


def test_crash_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    result = train(tiny(tmp_path, steps=10, ckpt_every=5))
    latest = (result.run_dir / "checkpoints" / "latest.json").read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt_mod, "save_file", killed)
    cfg = RunConfig.tiny(out_dir=str(tmp_path))
    _, model, loss, _ = load_run(result.run_dir)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod.save_checkpoint(result.run_dir / "checkpoints", 11, model, loss, opt, sched, {})
    assert (result.run_dir / "checkpoints" / "latest.json").read_text() == latest
    assert load_run(result.run_dir)[3].name == "step_00000010"
    assert cfg.train.keep_checkpoints == 2
    assert sorted(p.name for p in (result.run_dir / "checkpoints").glob("step_*")) == [
        "step_00000005",
        "step_00000010",
    ]


def test_missing_checkpoint_files_are_clear_errors(tmp_path):
    with pytest.raises(MissingFileError, match="not a contrastkit run"):
        resume(tmp_path / "nothing")
    result = train(tiny(tmp_path, steps=3, ckpt_every=3))
    (result.run_dir / "checkpoints" / "step_00000003" / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match="missing model.safetensors"):
        load_run(result.run_dir)
    (result.run_dir / "checkpoints" / "latest.json").unlink()
    with pytest.raises(MissingFileError, match="no checkpoint found"):
        resume(result.run_dir)


def test_existing_run_is_not_clobbered(tmp_path):
    train(tiny(tmp_path, steps=2, ckpt_every=2))
    with pytest.raises(ConfigError, match="already exists; resume it"):
        train(tiny(tmp_path, steps=2, ckpt_every=2))
