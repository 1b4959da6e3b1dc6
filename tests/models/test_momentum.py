"""Momentum encoders follow the exact EMA, take no gradient, stay in eval mode and are checkpointed;
keys route views and ``:ema`` outputs; the ``mlp`` tower embeds attribute vectors."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import make_shapes
from contrastkit.losses import CLIPLoss
from contrastkit.models import ModelConfig, TowerConfig, build_model
from contrastkit.models.dual_encoder import split_key
from contrastkit.models.momentum import MomentumConfig, MomentumEncoder, momentum_at


def tiny_with_momentum(**momentum):
    cfg = ModelConfig.tiny()
    return dataclasses.replace(cfg, momentum=MomentumConfig(**momentum))


@pytest.fixture(scope="module")
def pairs():
    return make_shapes("train", 16, seed=1)


def test_ema_formula_is_exact_after_k_steps():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    mom = MomentumEncoder({"x": online}, m=0.9)
    ema = mom.encoders["x"]
    for p, q in zip(ema.parameters(), online.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr() and not p.requires_grad
    want = [p.detach().double().clone() for p in online.parameters()]
    for _ in range(5):
        with torch.no_grad():
            for q in online.parameters():
                q.add_(torch.randn_like(q))
            online[1].running_mean.add_(1.0)
        mom.update({"x": online}, 0.9)
        want = [0.9 * w + 0.1 * q.detach().double() for w, q in zip(want, online.parameters())]
    for p, w in zip(ema.parameters(), want):
        torch.testing.assert_close(p.double(), w, rtol=0, atol=1e-6)
    assert torch.equal(ema[1].running_mean, online[1].running_mean)  # buffers are copied
    # with dyadic values and m = 1/2 every rounding is exact: bit-for-bit equality
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [4.0, 8.0]]))
    dyadic = MomentumEncoder({"x": lin}, m=0.5)
    with torch.no_grad():
        lin.weight.zero_()
    for _ in range(3):
        dyadic.update({"x": lin}, 0.5)
    assert torch.equal(dyadic.encoders["x"].weight, torch.tensor([[1.0, 2.0], [4.0, 8.0]]) / 8)


def test_cosine_schedule():
    assert momentum_at(0.99, "constant", 7, 10) == 0.99
    assert momentum_at(0.99, "cosine", 0, 10) == pytest.approx(0.99)
    assert momentum_at(0.99, "cosine", 5, 10) == pytest.approx(0.995)
    assert momentum_at(0.99, "cosine", 10, 10) == pytest.approx(1.0)
    t = 3
    assert momentum_at(0.996, "cosine", t, 10) == pytest.approx(
        1 - (1 - 0.996) * (math.cos(math.pi * t / 10) + 1) / 2
    )
    with pytest.raises(ConfigError, match="momentum.m"):
        MomentumConfig(m=1.5)


def test_model_outputs_views_and_ema_keys_without_gradient(pairs):
    torch.manual_seed(0)
    model = build_model(tiny_with_momentum(), texts=["a red circle"])
    ids = model.tokenize([c[0] for c in pairs.captions])
    x = pairs.images
    batch = {"image": x, "image@1": x.flip(-1), "text": ids, "labels": torch.zeros(16)}
    model.eval()
    with torch.no_grad():  # a fresh EMA copy equals the online encoder
        assert torch.equal(model.encode("image@1:ema", x.flip(-1)), model.encode("image", x.flip(-1)))
        assert torch.equal(model.encode("image@3", x), model.encode("image", x))
    model.train()
    assert not model.momentum.training and not any(m.training for m in model.momentum.modules())
    emb = model(batch)
    assert list(emb) == ["image", "image@1", "text", "image:ema", "image@1:ema"]
    assert not emb["image:ema"].requires_grad and emb["image"].requires_grad
    sum(e.sum() for e in emb.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.momentum.parameters())
    assert model.towers["image"].backbone.conv1.weight.grad is not None
    with pytest.raises(InputError, match="no momentum encoder for 'text'"):
        model.encode("text:ema", ids)
    with pytest.raises(InputError, match="bad embedding key"):
        model.encode("image@x", x)
    assert split_key("image@12:ema") == ("image", 12, True) and split_key("text") == ("text", None, False)


def test_after_optimizer_step_moves_the_ema_and_no_optimizer_sees_it(pairs):
    from contrastkit.train import param_groups

    torch.manual_seed(0)
    model = build_model(tiny_with_momentum(m=0.5, schedule="cosine"), texts=["a red circle"])
    groups = param_groups(model, CLIPLoss(), 0.1)
    opt_ids = {id(p) for g in groups for p in g["params"]}
    assert not opt_ids & {id(p) for p in model.momentum.parameters()}
    q = model.projections["image"].weight
    k = model.momentum.encoders["image"][1].weight
    before = k.detach().clone()
    with torch.no_grad():
        q.add_(1.0)
    model.after_optimizer_step(0, 4)  # cosine at step 0: m = 0.5
    torch.testing.assert_close(k, 0.5 * before + 0.5 * q.detach())
    assert model.log_values() == {"momentum": 0.5}
    model.after_optimizer_step(4, 4)  # end of the schedule: m = 1, frozen
    torch.testing.assert_close(k, 0.5 * before + 0.5 * q.detach())


def test_checkpoint_round_trip_includes_the_ema_weights(tmp_path):
    from safetensors.torch import load_file

    from contrastkit.train.checkpoint import load_weights, save_checkpoint

    torch.manual_seed(0)
    cfg = tiny_with_momentum(modalities=("image", "text"))
    model = build_model(cfg, texts=["a red circle", "a blue square"])
    with torch.no_grad():
        for p in model.momentum.parameters():
            p.mul_(0.5).add_(0.25)
    loss = CLIPLoss()
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = save_checkpoint(tmp_path, 1, model, loss, opt, sched, {})
    keys = load_file(str(path / "model.safetensors"))
    assert any(k.startswith("model.momentum.encoders.image.") for k in keys)
    assert any(k.startswith("model.momentum.encoders.text.") for k in keys)
    model.save_assets(tmp_path / "assets")
    again = build_model(cfg, assets_dir=tmp_path / "assets")
    load_weights(path, again)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    plain = build_model(ModelConfig.tiny(), assets_dir=tmp_path / "assets")
    with pytest.raises(InputError, match="does not match the model"):
        load_weights(path, plain)


def test_momentum_and_mlp_config_keys():
    cfg = from_dict(
        ModelConfig,
        {
            "towers": {
                "image": {"name": "timm", "params": {"arch": "resnet18"}},
                "attributes": {"name": "mlp", "params": {"input_dim": 45, "hidden_dim": 32}},
            },
            "momentum": {"modalities": ["image"], "m": 0.99, "schedule": "cosine"},
        },
    )
    assert cfg.momentum == MomentumConfig(("image",), 0.99, "cosine")
    with pytest.raises(ConfigError, match="have no tower"):
        dataclasses.replace(cfg, momentum=MomentumConfig(("text",)))
    with pytest.raises(ConfigError, match="needs params.input_dim"):
        build_model(ModelConfig(towers={"image": TowerConfig("timm"), "attributes": TowerConfig("mlp")}))


def test_mlp_tower_embeds_attribute_vectors(pairs):
    towers = {
        **ModelConfig.tiny().towers,
        "attributes": TowerConfig("mlp", {"input_dim": 45, "hidden_dim": 16}),
    }
    model = build_model(dataclasses.replace(ModelConfig.tiny(), towers=towers), texts=["a red circle"])
    assert model.modalities == ("image", "text", "attributes")
    mlp = model.towers["attributes"].net
    assert [type(m) for m in mlp] == [nn.Linear, nn.GELU, nn.Linear]
    emb = model({"image": pairs.images, "attributes": pairs.attributes})
    assert emb["attributes"].shape == (16, 32) and set(emb) == {"image", "attributes"}
    with pytest.raises(InputError, match=r"float \[B, 45\]"):
        model.encode("attributes", pairs.attributes[:, :10])
