"""The loss registry: every registered loss builds from its name and trains on (x, y) [+ aux]."""

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import ConfigError, UnknownNameError

N, D = 6, 8
# constructor parameters a loss cannot default (explicit by the spec's wish)
PARAMS = {"mochi": {"dim": D, "n_hard": 4, "n_mix": 4, "n_mix_query": 2, "warmup_steps": 0, "queue_size": 16}}
# batch fields a loss needs beyond (x, y)
g = torch.Generator().manual_seed(0)
AUX = {
    "medclip": {"labels": torch.tensor([0, 1, 1, 2, 0, 3])},
    "sycon": {"past_x": torch.randn(N, D, generator=g), "past_y": torch.randn(N, D, generator=g)},
    "xmc_decoupled": {"weights": torch.eye(N)},
}


@pytest.mark.parametrize("name", losses.names())
def test_every_registered_loss_builds_and_trains(name):
    loss = losses.build(name, **PARAMS.get(name, {}))
    x = torch.randn(N, D, generator=g, requires_grad=True)
    y = torch.randn(N, D, generator=g, requires_grad=True)
    value = loss(x, y, **AUX.get(name, {}))
    assert value.ndim == 0 and torch.isfinite(value), name
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), name
    assert name in losses.names() and len(losses.names()) >= 30


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UnknownNameError, match=r"unknown loss 'clipp'; available: .*clip, .*siglip"):
        losses.build("clipp")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['temprature'\].*init_temperature"):
        losses.build("clip", temprature=0.1)
