"""Weighted sums of losses from a config; every term logged; aux fields routed to the terms that use them."""

import pytest
import torch

from contrastkit import losses
from contrastkit.core import from_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses import CLIPLoss, CompositeLoss, LossConfig, SigLIPLoss


def test_terms_from_config_sum_with_weights_and_are_logged():
    cfg = from_dict(
        LossConfig, {"terms": {"clip": 1.0, "siglip": {"weight": 0.25, "params": {"init_bias": -5.0}}}}
    )
    loss = losses.from_config(cfg)
    assert isinstance(loss, CompositeLoss)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    want = CLIPLoss()(x, y) + 0.25 * SigLIPLoss(init_bias=-5.0)(x, y)
    torch.testing.assert_close(loss(x, y), want)
    logged = loss.log_values()
    assert logged["loss/clip"] == pytest.approx(float(CLIPLoss()(x, y).detach()))
    assert logged["siglip/logit_bias"] == -5.0
    assert len(list(loss.parameters())) == 3  # clip scale, siglip scale and bias


def test_config_errors():
    with pytest.raises(ConfigError, match="either name/params or terms"):
        LossConfig(name="siglip", terms={"clip": 1.0})
    with pytest.raises(Exception, match="unknown loss 'clp'"):
        losses.from_config(LossConfig(terms={"clp": 1.0}))


def test_unused_aux_fields_are_errors():
    x = torch.randn(3, 4)
    with pytest.raises(InputError, match=r"CLIPLoss does not use \['labels'\]"):
        CLIPLoss()(x, x, labels=torch.arange(3))
