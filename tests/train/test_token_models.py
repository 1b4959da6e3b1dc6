"""Late-interaction (maxsim) and Q-Former (qformer_itc) models train through the real trainer from a
config, evaluate with MaxSim scoring, and export to safetensors that rebuild equal embeddings."""

from dataclasses import replace

import numpy as np
import torch
from safetensors.torch import save_file

from contrastkit.cli import main
from contrastkit.data import make_shapes
from contrastkit.evaluation import evaluate_run
from contrastkit.evaluation.tracking import zero_shot_accuracy
from contrastkit.losses import LossConfig
from contrastkit.models import ModelConfig, TowerConfig, build_model, load
from contrastkit.train import RunConfig, load_run, train
from contrastkit.train.config import TrainConfig
from tests.models.test_token_towers import SMALL, qformer_config, token_config

TEXTS = ["a red circle", "a small blue square on the left", "a green star to the left of a cyan ring"]


def _run(tmp_path, name, model, loss) -> RunConfig:
    cfg = RunConfig.tiny(name=name, out_dir=str(tmp_path / "runs"))
    steps = TrainConfig(steps=4, batch_size=16, threads=1, log_every=2, ckpt_every=4, progress=False)
    return replace(cfg, model=model, loss=loss, train=steps)


def _export_matches(tmp_path, run) -> None:
    out = tmp_path / f"{run.name}-st"
    assert main(["export", str(run), "--format", "safetensors", "--out", str(out)]) == 0
    _, trained, _, _ = load_run(run)
    rebuilt = load(out)
    images = make_shapes("test", n=5).images
    with torch.no_grad():
        assert torch.equal(rebuilt.encode("image", images), trained.encode("image", images))
        assert torch.equal(
            rebuilt.encode("text", rebuilt.tokenize(TEXTS)), trained.encode("text", trained.tokenize(TEXTS))
        )


def test_maxsim_trains_evaluates_and_exports(tmp_path):
    loss = LossConfig("maxsim", {"symmetric": True, "learnable": True})
    result = train(_run(tmp_path, "maxsim", token_config(), loss))
    assert result.step == 4 and np.isfinite(result.last_loss) and result.skipped == 0
    metrics = evaluate_run(result.run_dir, splits=["test"])["metrics"]["test"]
    for key in ("zeroshot/shape+color/top1", "retrieval/image_to_text_R@1", "retrieval/text_to_image_R@1"):
        assert 0.0 <= metrics[key] <= 1.0
    _export_matches(tmp_path, result.run_dir)
    tracked = zero_shot_accuracy(load_run(result.run_dir)[1], make_shapes("test", n=32), "color")
    assert 0.0 <= tracked["top1"] <= 1.0  # the training-time tracker scores token sets too


def test_qformer_trains_with_a_frozen_checkpointed_tower_and_exports(tmp_path):
    torch.manual_seed(0)
    source = build_model(
        ModelConfig(towers={"image": TowerConfig("timm", {"arch": "resnet18", "kwargs": SMALL})})
    )
    weights = tmp_path / "vision.safetensors"
    frozen = {f"model.{k}": v.contiguous() for k, v in source.state_dict().items()}
    save_file(frozen, str(weights))
    cfg = _run(tmp_path, "qformer", qformer_config(weights=str(weights)), LossConfig("qformer_itc", {}))
    result = train(cfg)
    assert result.step == 4 and np.isfinite(result.last_loss) and result.skipped == 0
    _, model, loss, _ = load_run(result.run_dir)
    for k, v in model.towers["image"].vision.state_dict().items():  # frozen: bit-identical after training
        assert torch.equal(v, frozen[f"model.towers.image.{k}"])
    assert float(loss.temp.detach()) != 0.07  # the temperature learns
    weights.unlink()  # a rebuilt model takes the frozen weights from its own state dict
    metrics = evaluate_run(result.run_dir, splits=["test"])["metrics"]["test"]
    assert 0.0 <= metrics["zeroshot/color/top1"] <= 1.0
    _export_matches(tmp_path, result.run_dir)
