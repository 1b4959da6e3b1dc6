"""The step guard skips and counts bad steps; a short run learns; schedule and decay groups."""

import dataclasses
import math

import pytest
import torch

from contrastkit.core.errors import TrainingDivergedError
from contrastkit.data import DataConfig
from contrastkit.evaluation import evaluate_run
from contrastkit.losses import CLIPLoss
from contrastkit.models import ModelConfig, build_model
from contrastkit.train import (
    GuardConfig,
    OptimConfig,
    RunConfig,
    StepGuard,
    lr_factor,
    param_groups,
    read_metrics,
    train,
)


def test_guard_skips_non_finite_and_spikes_then_stops():
    g = StepGuard(GuardConfig(spike_factor=3.0, spike_warmup=3, max_consecutive=2, max_total=5))
    assert g.check_loss(float("nan")) == "non-finite loss"
    assert g.check_grad_norm(float("inf")) == "non-finite gradient"
    for step in range(1, 4):
        g.record(step, 1.0, g.check_loss(1.0))
    assert g.check_loss(2.9) is None
    assert g.check_loss(3.5).startswith("loss spike")
    g.record(4, 3.5, "loss spike")
    assert (g.total, g.consecutive) == (1, 1)
    with pytest.raises(
        TrainingDivergedError, match="2 skipped steps \\(2 in a row\\); last: step 5: non-finite loss"
    ):
        g.record(5, float("nan"), "non-finite loss")


def test_nan_steps_are_skipped_counted_and_logged(tmp_path, monkeypatch):
    cfg = RunConfig.tiny(out_dir=str(tmp_path))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=8, ckpt_every=8))
    calls = {"n": 0}
    real_forward = CLIPLoss.forward

    def sometimes_nan(self, x, y):
        calls["n"] += 1
        out = real_forward(self, x, y)
        return out * float("nan") if calls["n"] in (3, 4) else out

    monkeypatch.setattr(CLIPLoss, "forward", sometimes_nan)
    result = train(cfg)
    assert result.skipped == 2
    rows = read_metrics(result.run_dir)
    assert [r["step"] for r in rows if r.get("skip_reason")] == [3, 4]
    assert rows[-1]["skipped_total"] == 2


def test_too_many_bad_steps_stop_training_with_a_clear_message(tmp_path, monkeypatch):
    cfg = RunConfig.tiny(out_dir=str(tmp_path))
    cfg = dataclasses.replace(cfg, guard=GuardConfig(max_consecutive=3))
    monkeypatch.setattr(CLIPLoss, "forward", lambda self, x, y: (x.sum() + y.sum()) * float("inf"))
    with pytest.raises(TrainingDivergedError, match="3 in a row"):
        train(cfg)


def test_short_run_drives_zero_shot_accuracy_well_above_chance(tmp_path):
    # (the digits test does the same on real images in 150 steps)
    base = RunConfig.tiny(out_dir=str(tmp_path))
    cfg = dataclasses.replace(
        base,
        data=DataConfig(
            params={"image_size": 32, "seed": 0},
            splits={"train": {"n": 4096}, "test": {"n": 256}},
            eval_splits=("test",),
        ),
        optim=OptimConfig(lr=5e-3, warmup_steps=10),
        train=dataclasses.replace(base.train, steps=200, batch_size=64, ckpt_every=200),
    )
    result = train(cfg)
    m = evaluate_run(result.run_dir, tasks=["zeroshot"])["metrics"]["test"]
    assert m["zeroshot/color/top1"] > 0.4  # chance 1/8; measured 0.65
    logged = read_metrics(result.run_dir)
    assert {"loss", "lr", "grad_norm", "logit_scale", "data_time", "step_time", "samples_per_s"} <= set(
        logged[-1]
    )
    assert logged[-1]["loss"] < logged[0]["loss"] - 0.3


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(30, 100, 0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_no_weight_decay_on_biases_norms_and_loss_scalars():
    model = build_model(ModelConfig.tiny(), texts=["a red circle"])
    loss = CLIPLoss(init_bias=-1.0)
    decay, no_decay = param_groups(model, loss, 0.1)
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    assert id(loss.log_scale) in ids and id(loss.bias) in ids
    n_all = sum(1 for p in model.parameters()) + 2
    assert len(decay["params"]) + len(no_decay["params"]) == n_all
    assert torch.is_tensor(decay["params"][0])


def test_bf16_autocast_trains_with_finite_float32_loss(tmp_path):
    cfg = RunConfig.tiny(out_dir=str(tmp_path))
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=4, precision="bf16", ckpt_every=4)
    )
    result = train(cfg)
    assert result.skipped == 0 and math.isfinite(result.last_loss)


def _vit_config(tmp_path, name, **scale):
    """A BatchNorm-free model (timm ViT + BERT): chunking must not change the computation."""
    from contrastkit.models import TowerConfig
    from contrastkit.scale import ScaleConfig

    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    vit = TowerConfig(
        "timm",
        {
            "arch": "vit_tiny_patch16_224",
            "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
        },
    )
    model = dataclasses.replace(base.model, towers={"image": vit, "text": base.model.towers["text"]})
    return dataclasses.replace(
        base,
        model=model,
        scale=ScaleConfig(**scale),
        train=dataclasses.replace(base.train, steps=4, log_every=1, ckpt_every=4),
    )


def test_trainer_with_grad_cache_and_tiles_follows_the_plain_run(tmp_path):
    plain = train(_vit_config(tmp_path, "plain"))
    scaled = train(_vit_config(tmp_path, "scaled", chunk_size=8, tile_size=5))
    a = [r["loss"] for r in read_metrics(plain.run_dir)]
    b = [r["loss"] for r in read_metrics(scaled.run_dir)]
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, rel=1e-4)  # float32 rounding only: same loss, same gradients


def test_spike_check_works_for_negative_losses():
    g = StepGuard(GuardConfig(spike_factor=3.0, spike_warmup=2))
    for step in (1, 2):
        g.record(step, -10.0, None)
    assert g.check_loss(-9.0) is None  # a small rise of a negative loss is not a spike
    assert g.check_loss(-12.0) is None
    assert g.check_loss(11.0).startswith("loss spike")  # rise of 21 > 2·|−10|


def test_labels_reach_losses_that_use_them(tmp_path, monkeypatch):
    """data.label_task puts labels in the batch; the trainer passes them to a loss that accepts them."""
    from contrastkit.losses import LossConfig
    from contrastkit.losses.supcon import SupConLoss

    seen = []
    real = SupConLoss.forward

    def spy(self, x, y, **aux):
        seen.append(aux.get("labels"))
        return real(self, x, y, **aux)

    monkeypatch.setattr(SupConLoss, "forward", spy)
    base = RunConfig.tiny(out_dir=str(tmp_path))
    cfg = dataclasses.replace(
        base,
        loss=LossConfig("supcon"),
        data=dataclasses.replace(base.data, label_task="shape+color"),
        train=dataclasses.replace(base.train, steps=2, ckpt_every=2),
    )
    train(cfg)
    assert len(seen) == 2 and seen[0] is not None and seen[0].shape == (32,)
    assert seen[0].dtype == torch.long and (seen[0] >= 0).all()  # -1 became unique ids
