"""Damaged checkpoints are detected, named, and skipped; a full disk leaves the previous one usable."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import warnings

import pytest
import torch
from torch import nn

from contrastkit.core.errors import ContrastkitError, MissingFileError
from contrastkit.train import RunConfig, load_run, read_metrics, resume, train
from contrastkit.train import checkpoint as ckpt_mod
from contrastkit.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    verify_checkpoint,
)

OLD, NEW = "step_00000005", "step_00000010"


def tiny(out, **changes):
    cfg = RunConfig.tiny(out_dir=str(out))
    changes = {"steps": 10, "ckpt_every": 5, "log_every": 1, **changes}
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted run with checkpoints at steps 5 and 10; each test damages a copy."""
    return train(tiny(tmp_path_factory.mktemp("reference"))).run_dir


@pytest.fixture
def run(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "tiny")


def flip(f):
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4] = bytes(b ^ 0xFF for b in data[mid : mid + 4])
    f.write_bytes(bytes(data))


DAMAGES = {
    "flip": flip,
    "truncate": lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    "zero": lambda f: f.write_bytes(bytes(f.stat().st_size)),
    "delete": lambda f: f.unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_damaged_newest_checkpoint_falls_back_and_resume_is_exact(trained, run, damage, name):
    DAMAGES[damage](run / "checkpoints" / NEW / name)
    with pytest.warns(UserWarning, match=rf"{NEW}.*{name}.*falling back to {OLD}"):
        assert latest_checkpoint(run) == run / "checkpoints" / OLD
    with pytest.raises(CheckpointError, match=rf"{NEW}.*{name}"):
        latest_checkpoint(run, fallback=False)
    with pytest.raises(CheckpointError, match=rf"{NEW}.*{name}"):
        verify_checkpoint(run / "checkpoints" / NEW)
    with pytest.raises(CheckpointError, match=rf"{NEW}.*{name}"):
        load_weights(run / "checkpoints" / NEW, load_run(trained)[1])
    with pytest.warns(UserWarning, match=name):
        assert resume(run).step == 10
    assert losses(run) == losses(trained)  # steps 6..10 retrained bit for bit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the re-saved newest checkpoint is intact again
        assert latest_checkpoint(run).name == NEW
    verify_checkpoint(run / "checkpoints" / NEW)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_pointer_falls_back_to_the_newest_intact_folder(trained, run, damage):
    DAMAGES[damage](run / "checkpoints" / "latest.json")
    with pytest.warns(UserWarning, match=rf"latest\.json.*falling back to {NEW}"):
        assert latest_checkpoint(run).name == NEW
    with pytest.raises(CheckpointError, match=r"latest\.json"):
        latest_checkpoint(run, fallback=False)
    with pytest.warns(UserWarning, match=r"latest\.json"):
        assert resume(run).step == 10
    assert losses(run) == losses(trained)


def test_error_messages_say_what_is_wrong(run):
    new = run / "checkpoints" / NEW
    good = (new / "model.safetensors").read_bytes()
    flip(new / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors checksum mismatch"):
        verify_checkpoint(new)
    shutil.copy(run / "checkpoints" / OLD / "model.safetensors", new / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors checksum mismatch"):
        verify_checkpoint(new)  # an intact file of another step is still the wrong file
    (new / "model.safetensors").write_bytes(good)
    (new / "optimizer.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors is 0 bytes.*truncated"):
        verify_checkpoint(new)
    # A syntactically valid edit of state.json (a different learning rate) is caught by its hash.
    state = json.loads((new / "state.json").read_text())
    state["optimizer"]["param_groups"][0]["lr"] += 0.5
    (new / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="state.json checksum mismatch"):
        verify_checkpoint(new)
    (new / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="state.json lacks step"):
        verify_checkpoint(new)
    with pytest.raises(MissingFileError, match="does not exist"):
        verify_checkpoint(run / "checkpoints" / "step_00000099")


def test_no_intact_checkpoint_lists_every_problem(run):
    flip(run / "checkpoints" / NEW / "model.safetensors")
    (run / "checkpoints" / OLD / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError) as info:
        latest_checkpoint(run)
    msg = str(info.value)
    assert "no checkpoint found" in msg and "intact" in msg
    assert f"{NEW}: model.safetensors checksum mismatch" in msg
    assert f"{OLD} is missing optimizer.safetensors" in msg
    assert not isinstance(info.value, MissingFileError)  # corrupt, not just absent
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        resume(run)  # fails the same way rather than loading garbage


def test_disk_full_keeps_the_previous_checkpoint_resumable(trained, tmp_path, monkeypatch):
    real = ckpt_mod.save_file

    def full_on_second(tensors, path):
        if NEW in path:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(ckpt_mod, "save_file", full_on_second)
    with pytest.raises(CheckpointWriteError) as info:
        train(tiny(tmp_path))
    msg = str(info.value)
    assert NEW in msg and "No space left on device" in msg and "bytes are free" in msg
    assert int(msg.split("about ")[1].split(" bytes")[0].replace(",", "")) > 800_000  # the tensors
    assert isinstance(info.value, ContrastkitError) and isinstance(info.value, OSError)
    ckpts = tmp_path / "tiny" / "checkpoints"
    assert not list(ckpts.glob(".tmp-*")) and not (ckpts / NEW).exists()
    assert json.loads((ckpts / "latest.json").read_text())["path"] == OLD
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    assert resume(tmp_path / "tiny").step == 10
    assert losses(tmp_path / "tiny") == losses(trained)


def small():
    torch.manual_seed(0)
    model, loss = nn.Linear(4, 3), nn.Linear(1, 1)
    opt = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, loss, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def test_failed_rename_and_stale_leftovers(tmp_path, monkeypatch):
    model, loss, opt, sched = small()
    ckpts = tmp_path / "checkpoints"
    first = save_checkpoint(ckpts, 1, model, loss, opt, sched, {})
    real = os.replace

    def failing(src, dst):
        if os.path.basename(src).startswith(".tmp-step"):
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(CheckpointWriteError, match=r"step_00000002: Input/output error"):
        save_checkpoint(ckpts, 2, model, loss, opt, sched, {})
    monkeypatch.setattr(os, "replace", real)
    assert not list(ckpts.glob(".tmp-*")) and latest_checkpoint(tmp_path) == first
    # Leftovers of a crash (killed mid-write, or between the two renames of a re-save) are tidied.
    (ckpts / ".tmp-step_00000003-12345").mkdir()
    (ckpts / ".tmp-step_00000003-12345" / "model.safetensors").write_bytes(b"half")
    (ckpts / ".latest.json.abc.tmp").write_text("{")
    real(first, ckpts / ".old-step_00000001-999")  # the only copy of step 1
    save_checkpoint(ckpts, 3, model, loss, opt, sched, {}, keep=5)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest.json", "step_00000001", "step_00000003"]
    verify_checkpoint(first)


def test_old_checkpoints_without_checksums_still_load(tmp_path):
    model, loss, opt, sched = small()
    path = save_checkpoint(tmp_path / "checkpoints", 1, model, loss, opt, sched, {"note": 1})
    state = json.loads((path / "state.json").read_text())
    del state["files"], state["sha256"]
    (path / "state.json").write_text(json.dumps(state))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path) == path
    model2, loss2, opt2, sched2 = small()
    nn.init.zeros_(model2.weight)
    assert load_checkpoint(path, model2, loss2, opt2, sched2).extra == {"note": 1}
    assert torch.equal(model.weight, model2.weight)
    # Without checksums a flipped weight cannot be seen, but a truncated file still can.
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:40])
    with pytest.raises(CheckpointError, match="model.safetensors is unreadable"):
        load_weights(path, model2)


def test_pruning_sorts_steps_as_numbers_and_keeps_a_resaved_older_step(tmp_path):
    model, loss, opt, sched = small()
    ckpts = tmp_path / "checkpoints"
    for step in (99_999_999, 100_000_000, 100_000_001):
        save_checkpoint(ckpts, step, model, loss, opt, sched, {}, keep=2)
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_100000000", "step_100000001"]
    # A resumed run re-saving an older step: latest.json points to it, so pruning must keep it.
    save_checkpoint(ckpts, 5, model, loss, opt, sched, {}, keep=2)
    assert (ckpts / "step_00000005").is_dir() and latest_checkpoint(tmp_path).name == "step_00000005"
