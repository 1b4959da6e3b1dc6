"""Decoupled uniformity's kernel prior selected from a config: the batch field named by prior_field."""

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.kernel import decoupled_uniformity_loss


def test_prior_field_reads_the_named_batch_field():
    g = torch.Generator().manual_seed(0)
    x, y, attrs = (
        torch.randn(6, 4, generator=g),
        torch.randn(6, 4, generator=g),
        torch.rand(6, 3, generator=g),
    )
    loss = losses.build("decoupled_uniformity", sigma=0.7, prior_field="attributes")
    assert loss.accepts == {"weights", "attributes"}
    want = decoupled_uniformity_loss(x, y, prior=attrs, sigma=0.7)
    torch.testing.assert_close(loss(x, y, attributes=attrs), want)
    assert not torch.allclose(want, decoupled_uniformity_loss(x, y))  # the prior changes the value
    with pytest.raises(InputError, match=r"does not use \['prior'\]"):
        loss(x, y, prior=attrs)
    default = losses.build("decoupled_uniformity", sigma=0.7)
    torch.testing.assert_close(default(x, y, prior=attrs), want)
    with pytest.raises(ConfigError, match="prior_field"):
        losses.build("decoupled_uniformity", prior_field="weights")
