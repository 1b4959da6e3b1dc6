"""MultiLoss objectives train end to end: augmented views, momentum encoders, a third modality;
resume stays exact; unsupported combinations are clear errors."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.data import DataConfig
from contrastkit.losses.base import MultiLoss
from contrastkit.losses.clip import clip_loss
from contrastkit.models import ModelConfig, TowerConfig
from contrastkit.models.momentum import MomentumConfig
from contrastkit.scale import ScaleConfig
from contrastkit.train import RunConfig, load_run, read_metrics, resume, train
from contrastkit.train import session as session_mod
from contrastkit.train import trainer as trainer_mod


class ViewsAndMomentum(MultiLoss):
    """Mean of CLIP over image/text, over the two views, and view 0 against view 1's EMA key."""

    inputs = ("image", "text", "image@0", "image@1", "image@1:ema")
    accepts = frozenset({"labels"})

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.seen: list[set[str]] = []

    def forward(self, emb, **aux):
        self.seen.append(set(emb) | {f"aux:{k}" for k in aux})
        img, txt, v0, v1, k1 = self.select(emb)
        s = self.log_scale.exp()
        return (clip_loss(img, txt, s) + clip_loss(v0, v1, s) + clip_loss(v0, k1, s)) / 3


class PairwiseThree(MultiLoss):
    """Pairwise-anchor CLIP over three modalities (a GRAM baseline)."""

    inputs = ("image", "text", "attributes")

    def forward(self, emb, **aux):
        img, txt, att = self.select(emb)
        return (clip_loss(img, txt, 10.0) + clip_loss(img, att, 10.0) + clip_loss(txt, att, 10.0)) / 3


def use_loss(monkeypatch, make):
    monkeypatch.setattr(session_mod, "build_loss", lambda cfg: make())  # training
    monkeypatch.setattr(trainer_mod, "build_loss", lambda cfg: make())  # load_run


def views_config(out_dir, name="mv", **train_changes):
    base = RunConfig.tiny(name=name, out_dir=str(out_dir))
    data = dataclasses.replace(base.data, views=2, label_task="shape")
    model = dataclasses.replace(base.model, momentum=MomentumConfig(("image",), m=0.9, schedule="cosine"))
    changes = {"steps": 6, "log_every": 1, "ckpt_every": 6, **train_changes}
    return dataclasses.replace(base, data=data, model=model, train=dataclasses.replace(base.train, **changes))


def losses_by_step(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_views_and_momentum_train_and_resume_exactly(tmp_path, monkeypatch):
    made = []

    def make():
        made.append(ViewsAndMomentum())
        return made[-1]

    use_loss(monkeypatch, make)
    full = train(views_config(tmp_path / "full"))
    assert full.skipped == 0 and math.isfinite(full.last_loss)
    assert made[0].seen[0] == {
        "image",
        "text",
        "image@0",
        "image@1",
        "image:ema",
        "image@0:ema",
        "image@1:ema",
        "aux:labels",
    }
    rows = read_metrics(full.run_dir)
    assert rows[0]["momentum"] == pytest.approx(0.9) and rows[-1]["momentum"] > rows[0]["momentum"]
    # the EMA moved away from its initial copy but lags the online weights; it is checkpointed
    _, model, _, _ = load_run(full.run_dir)
    online = model.projections["image"].weight
    ema = model.momentum.encoders["image"][1].weight
    assert not torch.equal(online, ema) and not ema.requires_grad

    cut_cfg = views_config(tmp_path / "cut", ckpt_every=3)
    train(cut_cfg)
    ckpts = tmp_path / "cut" / "mv" / "checkpoints"
    (ckpts / "latest.json").write_text(json.dumps({"step": 3, "path": "step_00000003"}))
    assert resume(tmp_path / "cut" / "mv").step == 6
    a, b = losses_by_step(full.run_dir), losses_by_step(tmp_path / "cut" / "mv")
    assert [b[k] for k in range(1, 7)] == [a[k] for k in range(1, 7)]  # bit-for-bit, views and EMA too
    _, resumed, _, _ = load_run(tmp_path / "cut" / "mv")
    for (n, x), (_, y) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(x, y), n


def test_three_towers_train_with_a_multiloss(tmp_path, monkeypatch):
    use_loss(monkeypatch, PairwiseThree)
    base = RunConfig.tiny(name="three", out_dir=str(tmp_path))
    towers = {**base.model.towers, "attributes": TowerConfig("mlp", {"input_dim": 45, "hidden_dim": 32})}
    cfg = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, modalities=("image", "text", "attributes")),
        model=dataclasses.replace(base.model, towers=towers),
        train=dataclasses.replace(base.train, steps=12, log_every=1, ckpt_every=12),
    )
    result = train(cfg)
    losses = [r["loss"] for r in read_metrics(result.run_dir)]
    assert result.skipped == 0 and len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < sum(losses[:3])
    _, model, _, _ = load_run(result.run_dir)
    assert model.modalities == ("image", "text", "attributes")


def test_pair_losses_still_work_with_views_momentum_and_gradient_caching(tmp_path):
    cfg = views_config(tmp_path, name="pair", steps=2, ckpt_every=2)
    cfg = dataclasses.replace(cfg, scale=ScaleConfig(chunk_size=16))
    result = train(cfg)
    assert result.skipped == 0 and math.isfinite(result.last_loss)
    assert "momentum" in read_metrics(result.run_dir)[-1]


def test_unsupported_combinations_are_clear_errors(tmp_path, monkeypatch):
    use_loss(monkeypatch, ViewsAndMomentum)
    cfg = views_config(tmp_path, name="chunked")
    with pytest.raises(ConfigError, match="MultiLoss .*chunk_size"):
        train(dataclasses.replace(cfg, scale=ScaleConfig(chunk_size=8)))
    with pytest.raises(ConfigError, match="MultiLoss .*tile_size"):
        train(dataclasses.replace(cfg, scale=ScaleConfig(tile_size=8)), overwrite=True)
    towers = {**cfg.model.towers, "attributes": TowerConfig("mlp", {"input_dim": 45})}
    with pytest.raises(ConfigError, match=r"tower\(s\) \['attributes'\] get no input"):
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, towers=towers))
    digits = DataConfig(name="digits", params={}, splits={"train": {}, "test": {}}, eval_splits=("test",))
    three = ModelConfig(towers=towers, embed_dim=32)
    bad = dataclasses.replace(
        cfg, data=dataclasses.replace(digits, modalities=("image", "text", "attributes")), model=three
    )
    with pytest.raises(ConfigError, match="provides none"):
        train(bad, overwrite=True)


def test_moco_queue_and_ema_resume_exactly_through_the_trainer(tmp_path):
    """MoCo v2 from its registry name: the queue (a loss buffer) and the EMA key encoder are
    checkpointed, so a run cut at step 3 and resumed logs the same losses bit for bit."""
    from contrastkit.losses import LossConfig

    def cfg(out, ckpt_every):
        c = views_config(out, name="moco", ckpt_every=ckpt_every)
        params = {"dim": c.model.embed_dim, "queue_size": 48}
        return dataclasses.replace(c, loss=LossConfig(name="moco2", params=params))

    full_cfg = cfg(tmp_path / "full", 6)
    full = train(full_cfg)
    _, _, loss, _ = load_run(full.run_dir)
    assert int(loss.ptr) == 6 * full_cfg.train.batch_size % 48  # one key set enqueued per step
    train(cfg(tmp_path / "cut", 3))
    ckpts = tmp_path / "cut" / "moco" / "checkpoints"
    (ckpts / "latest.json").write_text(json.dumps({"step": 3, "path": "step_00000003"}))
    assert resume(tmp_path / "cut" / "moco").step == 6
    a, b = losses_by_step(full.run_dir), losses_by_step(tmp_path / "cut" / "moco")
    assert [b[k] for k in range(1, 7)] == [a[k] for k in range(1, 7)]
    _, _, resumed_loss, _ = load_run(tmp_path / "cut" / "moco")
    assert torch.equal(resumed_loss.queue, loss.queue) and int(resumed_loss.ptr) == int(loss.ptr)


def test_a_modality_the_data_set_lacks_is_named():
    """``data.modalities`` asking for what the training set does not provide: one error naming both."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(data=SimpleNamespace(name="pairs", modalities=("image", "text", "audio")))
    want = r"has \['audio'\] but data set 'pairs' provides \['image', 'text'\]"
    with pytest.raises(ConfigError, match=want):
        session_mod._check_modalities(cfg, SimpleNamespace(modalities=("image", "text")))
    session_mod._check_modalities(cfg, SimpleNamespace(modalities=("image", "text", "audio")))  # no error
