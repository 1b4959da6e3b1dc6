"""T-CONTINUAL: config, stage configs, the stage loop's batches and memory, the teacher, exact resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError
from contrastkit.data import make_shapes
from contrastkit.data.config import SamplerConfig
from contrastkit.losses.base import LossConfig
from contrastkit.train import RunConfig, load_run, read_metrics, resume, train
from contrastkit.train.checkpoint import latest_checkpoint
from contrastkit.train.continual import (
    ContinualConfig,
    check_continual,
    is_continual,
    memory_path,
    stage_config,
    stage_dirs,
)
from contrastkit.train.replay import stage_teacher

STAGES = (("circle", "square"), ("triangle", "diamond"), ("cross", "star"))


def continual_cfg(out: Path, **changes) -> RunConfig:
    """3 stages × 6 steps of the tiny Shapes run (batch 32, 8 rehearsal rows, a memory of 24)."""
    cont = ContinualConfig(
        **{"stages": STAGES, "task": "shape", "memory_size": 24, "memory_per_batch": 8, **changes}
    )
    cfg = RunConfig.tiny(out_dir=str(out))
    return dataclasses.replace(
        cfg, continual=cont, train=dataclasses.replace(cfg.train, steps=18, ckpt_every=3, log_every=1)
    )


def test_config_from_yaml_dict_and_errors():
    cfg = from_dict(RunConfig, {"continual": {"stages": [["a", "b"], ["c"]], "method": "replay"}})
    assert cfg.continual == ContinualConfig(stages=(("a", "b"), ("c",)), method="replay")
    with pytest.raises(ConfigError, match="stagez"):
        from_dict(RunConfig, {"continual": {"stages": [["a"]], "stagez": 1}})
    for bad, match in [
        ({}, "at least one stage"),
        ({"stages": (("a",), ())}, "non-empty"),
        ({"stages": (("a", "b"), ("b",))}, "more than one stage"),
        ({"stages": (("a",),), "method": "ewc"}, "method must be one of"),
        ({"stages": (("a",),), "selection": "best"}, "selection must be one of"),
        ({"stages": (("a",),), "memory_fraction": 1.0}, "memory_fraction"),
        ({"stages": (("a",),), "lambda_nsc": -1.0}, "lambda_nsc"),
        ({"stages": (("a",),), "nsc_temperature": 0.0}, "nsc_temperature"),
        ({"stages": (("a",),), "stage": 1}, "continual.stage"),
    ]:
        with pytest.raises(ConfigError, match=match):
            ContinualConfig(**bad)


def test_stage_configs_split_steps_chain_weights_and_wrap_the_loss(tmp_path):
    cfg = dataclasses.replace(
        continual_cfg(tmp_path), train=dataclasses.replace(continual_cfg(tmp_path).train, steps=20)
    )
    root = tmp_path / "tiny"
    s0, s1, s2 = (stage_config(cfg, root, t) for t in range(3))
    assert [s.train.steps for s in (s0, s1, s2)] == [6, 6, 8]  # the total, split; remainder to the last
    assert [s.continual.stage for s in (s0, s1, s2)] == [0, 1, 2] and s0.name == "stage-0"
    assert s0.train.init_from is None and s2.train.init_from == str((root / "stage-1").resolve())
    assert s0.data.sampler == SamplerConfig(
        "rehearsal", {"classes": ["circle", "square"], "task": "shape", "stage": 0}
    )
    assert s2.data.sampler.params["memory"] == str(memory_path(root, 2).resolve())
    assert s2.data.sampler.params["memory_per_batch"] == 8 and s1.data.label_task == "shape"
    assert (
        s1.loss.name == "coconut" and s1.loss.params["main"] == "clip" and s1.loss.params["nsc_weight"] == 0.1
    )
    ft = stage_config(continual_cfg(tmp_path, method="finetune"), root, 2)
    assert "memory" not in ft.data.sampler.params and ft.loss == LossConfig()
    assert stage_dirs(root, cfg.continual) == [root / f"stage-{t}" for t in range(3)]


def test_check_continual_refuses_what_it_cannot_do(tmp_path):
    cfg = continual_cfg(tmp_path)
    check_continual(cfg)
    for change, match in [
        ({"data": dataclasses.replace(cfg.data, sampler=SamplerConfig("class_mix"))}, "sampler"),
        ({"data": dataclasses.replace(cfg.data, label_task="color")}, "label_task"),
        ({"loss": LossConfig(terms={"clip": 1.0})}, "pair loss"),
        ({"train": dataclasses.replace(cfg.train, steps=2)}, "cannot give each"),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_continual(dataclasses.replace(cfg, **change))
    with pytest.raises(ConfigError, match="one process"):
        check_continual(cfg, world=2)


def _record_batches() -> list[tuple[int, int, int, list[int]]]:
    """Patch the rehearsal sampler to record ``(stage, step, m, items)`` of every batch it hands out."""
    from contrastkit.data import rehearsal

    seen: list[tuple[int, int, int, list[int]]] = []
    plain = rehearsal.RehearsalBatchSampler.__iter__

    def recording(self):
        for batch in plain(self):
            seen.append((self.stage, batch.step, self.memory_per_batch, [i for i, _ in batch]))
            yield batch

    rehearsal.RehearsalBatchSampler.__iter__ = recording  # type: ignore[method-assign]
    return seen


def test_stages_train_on_their_classes_plus_memory_with_the_previous_stage_as_teacher(tmp_path, monkeypatch):
    from contrastkit.data import rehearsal

    monkeypatch.setattr(rehearsal.RehearsalBatchSampler, "__iter__", rehearsal.RehearsalBatchSampler.__iter__)
    seen = _record_batches()
    result = train(continual_cfg(tmp_path))
    root = tmp_path / "tiny"
    assert result.step == 18 and is_continual(root) and not is_continual(root / "stage-1")
    labels = make_shapes("train", n=512, image_size=32, seed=0).tasks["shape"].labels
    names = ("circle", "square", "triangle", "diamond", "cross", "star", "hexagon", "ring")
    ids = [[names.index(c) for c in s] for s in STAGES]
    memories = {t: np.load(memory_path(root, t)) for t in (1, 2)}
    assert np.bincount(labels[memories[1]], minlength=8).tolist() == [12, 12, 0, 0, 0, 0, 0, 0]
    assert np.bincount(labels[memories[2]], minlength=8).tolist() == [6, 6, 6, 6, 0, 0, 0, 0]
    assert np.array_equal(memories[2][:6], memories[1][:6])  # an older class keeps its ranking's prefix
    by_stage = {t: [b for b in seen if b[0] == t] for t in range(3)}
    assert [len(v) for v in by_stage.values()] == [6, 6, 6]
    for t, batches in by_stage.items():
        for _, _, m, items in batches:
            current, memory = np.array(items[: 32 - m]), np.array(items[32 - m :])
            assert set(labels[current].tolist()) <= set(ids[t])  # only the stage's classes …
            assert m == (8 if t else 0) and set(memory.tolist()) <= set(memories.get(t, np.zeros(0)).tolist())
    teacher = stage_teacher(stage_config(continual_cfg(tmp_path), root, 1), torch.device("cpu"))
    assert teacher is not None and teacher.checkpoint == latest_checkpoint(root / "stage-0")
    final0 = load_run(root / "stage-0")[1].state_dict()
    assert all(torch.equal(v, final0[k]) for k, v in teacher.model.state_dict().items())
    assert not any(p.requires_grad for p in teacher.model.parameters()) and not teacher.model.training
    assert stage_teacher(stage_config(continual_cfg(tmp_path), root, 0), torch.device("cpu")) is None
    logged = [r for r in read_metrics(root / "stage-1") if "loss/nsc" in r]
    assert logged and all(r["loss/nsc"] > 0 for r in logged)  # the NSC term ran on the rehearsal rows
    assert all(r["loss/nsc"] == 0.0 for r in read_metrics(root / "stage-0") if "loss/nsc" in r)


def test_a_crash_mid_stage_resumes_bit_for_bit(tmp_path):
    full = train(continual_cfg(tmp_path / "full")).run_dir
    cut = continual_cfg(tmp_path / "cut")
    root = tmp_path / "cut" / "tiny"

    def crash(step, model):  # the 4th step of stage 1: its checkpoint of step 3 survives
        if step == 4 and (root / "stage-1" / "config.yaml").is_file():
            raise RuntimeError("killed")
        return {}

    with pytest.raises(RuntimeError, match="killed"):
        train(cut, callbacks=[(1, crash)])
    assert not (root / "stage-2").exists() and latest_checkpoint(root / "stage-1").name == "step_00000003"
    resumed = resume(root)
    assert not resumed.already_finished and resumed.step == 18
    for t in range(3):
        a = load_run(full / f"stage-{t}")[1].state_dict()
        b = load_run(root / f"stage-{t}")[1].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"stage {t} differs"
    losses = [[r["loss"] for r in read_metrics(d / "stage-1") if "loss" in r] for d in (full, root)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    assert resume(root).already_finished


def test_herding_memory_follows_the_stage_models_embeddings(tmp_path):
    from contrastkit.data.rehearsal import herding_order
    from contrastkit.train.multistage import embed_images

    cfg = continual_cfg(tmp_path, stages=STAGES[:2], selection="herding")
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=6)))
    root = tmp_path / "tiny"
    pairs = make_shapes("train", n=512, image_size=32, seed=0)
    model = load_run(root / "stage-0")[1]
    labels = pairs.tasks["shape"].labels
    want = []
    for c in (0, 1):  # circle, square: 12 each of a memory of 24
        items = np.flatnonzero(labels == c)
        want += items[herding_order(embed_images(model, pairs.subset(items)), 12)].tolist()
    assert np.load(memory_path(root, 1)).tolist() == want
