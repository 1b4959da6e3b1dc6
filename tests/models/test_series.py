"""Series towers: shapes, pooling and padding against direct computations, per-device encoding
against separate calls, config building inside a DualEncoder, and input / config errors."""

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models import TOWERS
from contrastkit.models.dual_encoder import ModelConfig, TowerConfig, build_model
from contrastkit.models.series import DeviceSeriesTower, SeriesCNNTower, encode_devices


def series(rng, b=4, c=6, t=20):
    return torch.randn(b, c, t, generator=rng)


def test_cnn_pools_the_conv_features(rng):
    torch.manual_seed(0)
    tower = TOWERS.build("series_cnn", in_channels=6, channels=[8, 16], kernel_size=3, pool="meanmax").eval()
    x = series(rng)
    h = tower.net(x)
    assert h.shape == (4, 16, 20)  # same padding keeps T
    out = tower(x)
    assert tower.output_dim == 32 and out.shape == (4, 32)
    torch.testing.assert_close(out, torch.cat([h.mean(-1), h.amax(-1)], 1), rtol=0, atol=0)
    assert TOWERS.build("series_cnn", in_channels=6).output_dim == 128


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_transformer_pads_the_last_patch_with_zeros(pooling, rng):
    torch.manual_seed(0)
    tower = TOWERS.build(
        "series_transformer", in_channels=3, patch_size=4, dim=16, depth=1, heads=2, pooling=pooling
    ).eval()
    x = series(rng, c=3, t=10)  # 2 whole patches + 2 steps
    padded = torch.cat([x, torch.zeros(4, 3, 2)], -1)
    out = tower(x)
    assert out.shape == (4, 16)
    torch.testing.assert_close(out, tower(padded), rtol=0, atol=0)
    one = tower(x[:1])  # rows are independent (no batch statistics)
    torch.testing.assert_close(one, out[:1], rtol=1e-5, atol=1e-6)


def test_transformer_limits(rng):
    tower = TOWERS.build("series_transformer", in_channels=2, patch_size=5, max_patches=3)
    assert tower(series(rng, c=2, t=15)).shape == (4, 64)
    with pytest.raises(InputError, match="4 patches of 5 steps, more than max_patches=3"):
        tower(series(rng, c=2, t=16))
    with pytest.raises(ConfigError, match="multiple of heads"):
        TOWERS.build("series_transformer", in_channels=2, dim=10, heads=4)


def test_device_tower_equals_separate_calls(rng):
    torch.manual_seed(0)
    tower = TOWERS.build(
        "series_devices", devices=[[0, 1, 2], [3, 4, 5]], encoder={"params": {"channels": [8]}}
    )
    assert isinstance(tower, DeviceSeriesTower) and len(tower.towers) == 1 and tower.output_dim == 8
    x = series(rng)
    inner = tower.towers[0]
    for mode in (True, False):  # training mode: batch statistics per device call
        tower.train(mode)
        out = tower(x)
        assert out.shape == (4, 2, 8)
        torch.testing.assert_close(out[:, 0], inner(x[:, :3]), rtol=0, atol=0)
        torch.testing.assert_close(out[:, 1], inner(x[:, 3:]), rtol=0, atol=0)
    own = TOWERS.build("series_devices", devices=[[4], [0, 1, 2, 3]], shared=False)
    assert [t.in_channels for t in own.towers] == [1, 4]
    torch.testing.assert_close(own.eval()(x)[:, 0], own.towers[0](x[:, [4]]), rtol=0, atol=0)
    torch.testing.assert_close(encode_devices(list(own.towers), x, [[4], [0, 1, 2, 3]]), own(x))


def test_towers_build_from_a_model_config(rng):
    cfg = ModelConfig(
        towers={
            "series": TowerConfig("series_cnn", {"in_channels": 6, "channels": [8, 8]}),
            "text": TowerConfig(
                "hf_text", {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32}
            ),
        },
        embed_dim=12,
    )
    model = build_model(cfg, texts=["a person running", "someone is walking"])
    ids = model.tokenize(["a person running"] * 4)
    emb = model({"series": series(rng), "text": ids})
    assert emb["series"].shape == (4, 12) and emb["text"].shape == (4, 12)
    dev = ModelConfig(
        towers={"series": TowerConfig("series_devices", {"devices": [[0, 1, 2], [3, 4, 5]]})}, embed_dim=12
    )
    out = build_model(dev)({"series": series(rng)})["series"]
    assert out.shape == (4, 2, 12)  # the projection maps each device's features


def test_input_errors(rng):
    cnn = SeriesCNNTower(6, (4,))
    for bad, match in [
        (torch.zeros(4, 6, 10, dtype=torch.long), "must be float"),
        (torch.zeros(4, 60), "must be float"),
        (torch.zeros(4, 5, 10), "has 5 channels, the tower expects 6"),
        (torch.zeros(0, 6, 10), "empty"),
    ]:
        with pytest.raises(InputError, match=match):
            cnn(bad)
    with pytest.raises(InputError, match="C >= 6"):
        TOWERS.build("series_devices", devices=[[0, 1, 2], [3, 4, 5]])(torch.zeros(2, 5, 10))


def test_config_errors():
    for name, params, match in [
        ("series_cnn", {}, "needs params.in_channels"),
        ("series_cnn", {"in_channels": 6, "kernel_size": 4}, "must be odd"),
        ("series_cnn", {"in_channels": 6, "channels": [0]}, "positive integer"),
        ("series_devices", {}, "needs params.devices"),
        ("series_devices", {"devices": [[0, 1], [1, 2]]}, "no channel in two"),
        ("series_devices", {"devices": [[0, 1], [2]]}, "shared: false"),
        (
            "series_devices",
            {"devices": [[0]], "encoder": {"name": "timm"}},
            "series_cnn | series_transformer",
        ),
        (
            "series_devices",
            {"devices": [[0]], "encoder": {"params": {"in_channels": 2}}},
            "comes from devices",
        ),
    ]:
        with pytest.raises(ConfigError, match=match):
            TOWERS.build(name, **params)
