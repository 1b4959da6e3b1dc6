"""Audio towers over log-mel features: shapes, normalisation, token layout, config building, errors."""

from __future__ import annotations

import pytest
import torch

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models import TOWERS, AudioCNNTower, AudioTransformerTower, ModelConfig, build_model

SMALL_CNN = {"layers": [1, 1, 1, 1], "channels": [8, 8, 16, 16], "stem_width": 8}


def _feats(b: int = 3, m: int = 40, t: int = 101) -> torch.Tensor:
    return torch.randn(b, m, t, generator=torch.Generator().manual_seed(b * t)) * 3 - 8


@pytest.mark.parametrize("t", [1, 57, 401])
def test_output_shapes(t):
    torch.manual_seed(0)
    cnn = TOWERS.build("audio_cnn", kwargs=SMALL_CNN)
    tr = TOWERS.build("audio_transformer", width=32, heads=2, layers=1)
    mean_tr = TOWERS.build("audio_transformer", width=32, heads=4, layers=1, pooling="mean", stack=3)
    assert isinstance(cnn, AudioCNNTower) and isinstance(tr, AudioTransformerTower)
    x = _feats(t=t)
    for tower, dim in ((cnn, 16), (tr, 32), (mean_tr, 32)):
        tower.eval()
        y = tower(x)
        assert y.shape == (3, dim) and tower.output_dim == dim and torch.isfinite(y).all()


def test_default_cnn_is_the_small_resnet():
    cnn = TOWERS.build("audio_cnn")
    assert cnn.output_dim == 256 and sum(p.numel() for p in cnn.parameters()) == 1_240_064
    assert cnn.backbone.conv1.in_channels == 1


def test_utterance_normalisation_ignores_level_and_scale():
    torch.manual_seed(0)
    x = _feats()
    for name, kw in (("audio_cnn", {"kwargs": SMALL_CNN}), ("audio_transformer", {"width": 32, "layers": 1})):
        tower = TOWERS.build(name, **kw).eval()
        with torch.no_grad():
            torch.testing.assert_close(tower(2.5 * x + 7.0), tower(x), rtol=1e-4, atol=1e-4)
        fixed = TOWERS.build(name, normalize="fixed", mean=-8.0, std=3.0, **kw).eval()
        fixed.load_state_dict(tower.state_dict())
        with torch.no_grad():  # fixed: (x - mean) / std, so shifting the input changes the output
            assert not torch.allclose(fixed(x + 7.0), fixed(x), atol=1e-3)
            identity = TOWERS.build(name, normalize="fixed", mean=0.0, std=1.0, **kw).eval()
            identity.load_state_dict(tower.state_dict())
            torch.testing.assert_close(fixed(x), identity((x + 8.0) / 3.0), rtol=1e-6, atol=1e-6)


def test_transformer_tokens_stack_consecutive_frames():
    torch.manual_seed(0)
    tower = TOWERS.build(
        "audio_transformer", n_mels=4, max_frames=12, stack=3, width=8, heads=2, layers=1
    ).eval()
    seen = {}
    tower.proj.register_forward_hook(lambda mod, args, out: seen.update(tokens=args[0]))
    x = torch.randn(2, 4, 10)  # 10 frames → 4 tokens, the last padded by 2 zero frames
    tower(x)
    z = (x - x.mean((1, 2), keepdim=True)) / (x.std((1, 2), keepdim=True, unbiased=False) + 1e-5)
    tokens = seen["tokens"]
    assert tokens.shape == (2, 4, 12)
    torch.testing.assert_close(tokens[:, 1], torch.cat([z[:, :, 3], z[:, :, 4], z[:, :, 5]], dim=1))
    torch.testing.assert_close(tokens[:, 3], torch.cat([z[:, :, 9], torch.zeros(2, 8)], dim=1))


def test_bad_inputs_raise_input_error():
    cnn = TOWERS.build("audio_cnn", kwargs=SMALL_CNN)
    tr = TOWERS.build("audio_transformer", max_frames=50, width=16, heads=2, layers=1)
    for bad, match in (
        (torch.zeros(2, 30, 20), "n_mels=40"),
        (torch.zeros(2, 40), "n_mels=40"),
        (torch.zeros(2, 40, 20, dtype=torch.int64), "float"),
        (torch.zeros(0, 40, 20), "empty"),
        (torch.zeros(2, 40, 0), "empty"),
    ):
        for tower in (cnn, tr):
            with pytest.raises(InputError, match=match):
                tower(bad)
    with pytest.raises(InputError, match="max_frames=50"):
        tr(torch.zeros(2, 40, 51))


def test_config_errors():
    with pytest.raises(ConfigError, match="multiple of heads"):
        TOWERS.build("audio_transformer", width=30, heads=4)
    with pytest.raises(ConfigError, match="pooling"):
        TOWERS.build("audio_transformer", pooling="max")
    with pytest.raises(ConfigError, match="normalize"):
        TOWERS.build("audio_cnn", normalize="batch")
    with pytest.raises(ConfigError, match="in_chans"):
        TOWERS.build("audio_cnn", kwargs={"in_chans": 3})
    with pytest.raises(ConfigError, match="kwargs.layers"):
        TOWERS.build("audio_cnn", kwargs={"layers": [1, 0, 1, 1]})
    with pytest.raises(ConfigError, match="does not run"):
        TOWERS.build("audio_cnn", kwargs={"layers": [1, 1]})
    with pytest.raises(InputError, match="unknown timm architecture"):
        TOWERS.build("audio_cnn", arch="resnet-nope")
    with pytest.raises(ConfigError, match="std"):
        TOWERS.build("audio_cnn", std=0.0)


def test_built_from_a_model_config():
    cfg = from_dict(
        ModelConfig,
        {
            "towers": {
                "image": {"name": "timm", "params": {"arch": "resnet18", "kwargs": SMALL_CNN}},
                "audio": {"name": "audio_cnn", "params": {"n_mels": 40, "kwargs": SMALL_CNN}},
                "speech": {
                    "name": "audio_transformer",
                    "params": {"width": 32, "layers": 1, "max_frames": 101},
                },
            },
            "embed_dim": 24,
        },
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = {"image": torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "audio": _feats(2), "speech": _feats(2)}
    out = model(batch)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "image": (2, 24),
        "audio": (2, 24),
        "speech": (2, 24),
    }
