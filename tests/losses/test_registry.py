import pytest

from contrastkit import losses
from contrastkit.core.errors import ConfigError, UnknownNameError


def test_every_registered_loss_builds_and_runs():
    import torch

    x, y = torch.randn(4, 8), torch.randn(4, 8)
    for name in losses.names():
        value = losses.build(name)(x, y)
        assert value.ndim == 0 and torch.isfinite(value)
    assert {"clip", "siglip"} <= set(losses.names())


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UnknownNameError, match="unknown loss 'clipp'; available: clip, siglip"):
        losses.build("clipp")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['temprature'\].*init_temperature"):
        losses.build("clip", temprature=0.1)
