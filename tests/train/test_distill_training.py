"""``model.teacher`` + ``distill``: the frozen teacher embeds every batch, gets no gradient, stays in
eval mode and unchanged; config checks refuse what cannot work."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import contrastkit.train.trainer as trainer_module
from contrastkit.core.errors import ConfigError, MissingFileError
from contrastkit.losses.base import LossConfig, LossTerm
from contrastkit.train import RunConfig, load_run, train
from contrastkit.train.distill import teacher_fields
from contrastkit.train.logger import read_metrics


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return train(RunConfig.tiny("teacher", out_dir=str(tmp_path_factory.mktemp("t")))).run_dir


def _student(tmp_path, teacher, loss: LossConfig, **model) -> RunConfig:
    cfg = RunConfig.tiny("student", out_dir=str(tmp_path))
    train_cfg = dataclasses.replace(cfg.train, steps=3, ckpt_every=3)
    m = dataclasses.replace(cfg.model, teacher=None if teacher is None else str(teacher), **model)
    return dataclasses.replace(cfg, model=m, loss=loss, train=train_cfg)


def test_the_teacher_is_frozen_in_eval_mode_and_feeds_the_loss(tmp_path, teacher_run, monkeypatch) -> None:
    seen = []

    def spy(teacher, batch, pair):
        fields = teacher_fields(teacher, batch, pair)
        seen.append((teacher, {k: v.clone() for k, v in fields.items()}, {m: batch[m] for m in pair}))
        teacher.train()  # even a caller that flips it: the next call puts it back in eval mode
        return fields

    monkeypatch.setattr(trainer_module, "teacher_fields", spy)
    terms = {"clip": 1.0, "distill": LossTerm(weight=0.5, params={"form": "kl", "temperature": 0.1})}
    result = train(_student(tmp_path, teacher_run, LossConfig(terms=terms)))
    assert len(seen) == 3 and result.skipped == 0
    teacher = seen[0][0]
    assert all(t is teacher for t, _, _ in seen)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    _, reference, _, _ = load_run(teacher_run)
    assert all(
        torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), reference.state_dict().values())
    )
    # the fields are the teacher's eval-mode embeddings of the step's own inputs
    _, fields, inputs = seen[1]
    with torch.no_grad():
        want = reference.encode("image", inputs["image"]), reference.encode("text", inputs["text"])
    torch.testing.assert_close(fields["teacher_x"], want[0])
    torch.testing.assert_close(fields["teacher_y"], want[1])


def test_distill_alone_trains_the_student_towards_the_teacher(tmp_path, teacher_run) -> None:
    loss = LossConfig(name="distill", params={"form": "cosine"})
    run = train(_student(tmp_path, teacher_run, loss)).run_dir
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert losses and all(0.0 <= v <= 2.0 for v in losses)  # mean 1 − cos of both towers: in [0, 2]


def test_config_checks(tmp_path, teacher_run) -> None:
    with pytest.raises(ConfigError, match="model.teacher is not set"):
        train(_student(tmp_path, None, LossConfig(name="distill")))
    with pytest.raises(ConfigError, match="does not use the teacher"):
        train(_student(tmp_path, teacher_run, LossConfig(name="clip")))
    with pytest.raises(MissingFileError, match="not a contrastkit run folder"):
        train(_student(tmp_path, tmp_path / "nowhere", LossConfig(name="distill")))
    with pytest.raises(ConfigError, match="dense"):
        cfg = _student(tmp_path, teacher_run, LossConfig(name="distill"))
        train(dataclasses.replace(cfg, scale=dataclasses.replace(cfg.scale, chunk_size=8)))
    assert not (tmp_path / "student").exists()  # refused before a run folder was made
