"""Image-only SimCLR from config (two augmented views through one tower) and ``train.init_towers``:
a CLIP run whose image tower starts from an SSL run while every other weight is the from-scratch
init of its seed, exactly."""

import dataclasses
import json
import math
from typing import ClassVar

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses import LossConfig
from contrastkit.losses.infonce import NTXentLoss, ntxent_loss
from contrastkit.models import DualEncoder, build_model
from contrastkit.models.momentum import MomentumConfig
from contrastkit.train import RunConfig, load_run, read_metrics, setup, train
from contrastkit.train import session as session_mod
from contrastkit.train.checkpoint import latest_checkpoint, load_tower_weights
from contrastkit.train.wise import initial_model


def clip_config(tmp_path, name, steps=2, **train_changes):
    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    changes = {"steps": steps, "ckpt_every": steps, "log_every": 1, **train_changes}
    return dataclasses.replace(base, train=dataclasses.replace(base.train, **changes))


def ssl_config(tmp_path, name="ssl", modalities=(), steps=2):
    """The tiny model's image tower alone, trained with NT-Xent on two augmented views."""
    base = clip_config(tmp_path, name, steps)
    model = dataclasses.replace(base.model, towers={"image": base.model.towers["image"]})
    data = dataclasses.replace(base.data, modalities=modalities, views=2)
    return dataclasses.replace(base, model=model, data=data, loss=LossConfig("ntxent"))


class Recorder(NTXentLoss):
    calls: ClassVar[list] = []

    def forward(self, x, y, **aux):
        Recorder.calls.append((x.detach().clone(), y.detach().clone()))
        return super().forward(x, y, **aux)


@pytest.mark.parametrize(
    "modalities,pair", [((), ("image@0", "image@1")), (("image",), ("image", "image@1"))]
)
def test_one_image_tower_contrasts_two_views_from_config(tmp_path, monkeypatch, modalities, pair):
    """A batch of views only (data.modalities: []) is SimCLR: view 0 against view 1, both
    augmented, the clean image never encoded; with the image in the batch, image against view 1."""
    Recorder.calls = []
    encoded: list[dict] = []
    plain_encode = DualEncoder.encode

    def spy(self, key, inputs):
        out = plain_encode(self, key, inputs)
        if self.training and torch.is_grad_enabled():
            if not encoded or key in encoded[-1]:
                encoded.append({})
            encoded[-1][key] = out.detach().clone()
        return out

    monkeypatch.setattr(DualEncoder, "encode", spy)
    monkeypatch.setattr(session_mod, "build_loss", lambda cfg: Recorder())
    result = train(ssl_config(tmp_path, modalities=modalities))
    assert result.skipped == 0
    first = encoded[0]
    assert set(first) == ({"image@0", "image@1"} | set(modalities))
    x, y = Recorder.calls[0]
    assert torch.equal(x, first[pair[0]]) and torch.equal(y, first[pair[1]])
    logged = [r["loss"] for r in read_metrics(result.run_dir) if "loss" in r]
    assert logged[0] == pytest.approx(float(ntxent_loss(x, y, 0.1)), rel=1e-6)


def test_init_towers_loads_the_image_tower_and_keeps_the_scratch_init_elsewhere(tmp_path, monkeypatch):
    source = train(ssl_config(tmp_path, steps=3))
    _, src_model, _, _ = load_run(source.run_dir)
    captured = {}
    plain = setup.init_towers_from

    def spy(cfg, model, src, run_dir):
        plain(cfg, model, src, run_dir)
        captured.update({k: v.clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(setup, "init_towers_from", spy)
    init = train(clip_config(tmp_path, "init", init_from=str(source.run_dir), init_towers=("image",), seed=3))
    scratch = train(clip_config(tmp_path, "scratch", seed=3))
    alone = train(clip_config(tmp_path, "alone", init_towers=("image",), seed=3))  # no init_from: scratch
    assert not (alone.run_dir / "init_from.json").exists()
    assert read_metrics(alone.run_dir)[0]["loss"] == read_metrics(scratch.run_dir)[0]["loss"]
    record = json.loads((init.run_dir / "init_from.json").read_text())
    assert record["towers"] == ["image"] and record["loss_state"] is False
    assert record["checkpoint"].endswith("step_00000003")
    fresh = initial_model(scratch.run_dir).state_dict()
    theta0 = initial_model(init.run_dir).state_dict()
    src = src_model.state_dict()
    image_keys = [k for k in captured if k.startswith(("towers.image.", "projections.image."))]
    assert len(image_keys) > 10 and len(image_keys) == len(src)
    for k, v in captured.items():
        expected = src[k] if k in image_keys else fresh[k]  # the text tower: the scratch run's init
        assert torch.equal(v, expected), k
        assert torch.equal(theta0[k], v), k  # WiSE-FT's θ₀ is the init the run started from
    assert math.isfinite(init.last_loss) and init.skipped == 0
    # the loss state is never loaded: the CLIP logit scale starts at its default in both arms
    first = next(r for r in read_metrics(init.run_dir) if "logit_scale" in r)
    again = next(r for r in read_metrics(scratch.run_dir) if "logit_scale" in r)
    assert first["logit_scale"] == again["logit_scale"]


def test_a_momentum_copy_of_a_loaded_tower_restarts_as_its_copy(tmp_path):
    source = train(ssl_config(tmp_path, steps=2))
    cfg = clip_config(tmp_path, "m")
    momentum = MomentumConfig(("image", "text"), m=0.9)
    model = build_model(dataclasses.replace(cfg.model, momentum=momentum), texts=["a red circle", "a cat"])
    before_text = {k: v.clone() for k, v in model.momentum.encoders["text"].state_dict().items()}
    names = load_tower_weights(latest_checkpoint(source.run_dir), model, ("image",))
    assert names and all(n.startswith(("towers.image.", "projections.image.")) for n in names)
    online = model._online(["image"])["image"].state_dict()
    for k, v in model.momentum.encoders["image"].state_dict().items():
        assert torch.equal(v, online[k]), k
    for k, v in model.momentum.encoders["text"].state_dict().items():
        assert torch.equal(v, before_text[k]), k


def test_bad_init_towers_are_clear_errors_before_any_data_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"names \['audio'\], not towers of this model"):
        clip_config(tmp_path, "x", init_from="somewhere", init_towers=("audio",))
    with pytest.raises(ConfigError, match="repeats a tower"):
        clip_config(tmp_path, "x", init_from="somewhere", init_towers=("image", "image"))
    source = train(ssl_config(tmp_path, steps=2))
    clip_source = train(clip_config(tmp_path, "clip"))

    def start(src, load, **model_changes):
        cfg = clip_config(tmp_path, "ft", init_from=str(src.run_dir), init_towers=load)
        return train(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_changes)))

    with pytest.raises(ConfigError, match=r"has no 'text' tower; it has \['image'\]"):
        start(source, ("text",))
    with pytest.raises(ConfigError, match="has assets"):  # the text tower's tokenizer
        start(clip_source, ("text",))
    towers = clip_config(tmp_path, "x").model.towers
    image = towers["image"]
    other = dataclasses.replace(image, params={**image.params, "kwargs": {"layers": [1, 1, 1, 1]}})
    with pytest.raises(ConfigError, match="configured differently"):
        start(source, ("image",), towers={**towers, "image": other})
    with pytest.raises(InputError, match="tower 'image' does not match"):  # the projection's shape
        start(source, ("image",), embed_dim=16)
    assert not (tmp_path / "ft").exists()
