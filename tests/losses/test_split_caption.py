"""split_caption (COSMO): CLIP on the model's embeddings + caption CE on its logits, against naive
float64 loops (values and gradients)."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.generative import coca_loss
from tests.losses.test_generative import naive_caption, naive_clip

F64 = torch.float64


def _inputs(seed=0, n=5, length=6, vocab=11, dim=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=F64, requires_grad=True)
    y = torch.randn(n, dim, generator=g, dtype=F64, requires_grad=True)
    logits = torch.randn(n, length - 1, vocab, generator=g, dtype=F64, requires_grad=True)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    for i, real in enumerate([6, 4, 3, 6, 2]):  # right padding with pad id 0
        ids[i, real:] = 0
    return x, y, logits, ids


@pytest.mark.parametrize("lam", [(1.0, 1.0), (0.5, 2.0), (0.0, 1.0), (1.0, 0.0)])
def test_values_and_gradients_match_naive_loops(lam):
    x, y, logits, ids = _inputs()
    loss = LOSSES.build("split_caption", lambda_con=lam[0], lambda_cap=lam[1]).double()
    s = float(loss.log_scale.detach().exp())
    got = loss({"image": x, "text": y, "caption_logits": logits}, text_ids=ids)
    want = lam[0] * naive_clip(x, y, s) + lam[1] * naive_caption(logits, ids, 0)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    g_got = torch.autograd.grad(got, (x, y, logits), allow_unused=True)
    g_want = torch.autograd.grad(want, (x, y, logits), allow_unused=True)
    for a, b, v in zip(g_got, g_want, (x, y, logits)):  # None: the term is skipped (weight 0)
        a, b = (torch.zeros_like(v) if g is None else g for g in (a, b))
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    # the pure function: L-COCA's coca_loss
    pure = coca_loss(x, y, logits, ids, loss.log_scale.exp(), lambda_con=lam[0], lambda_cap=lam[1])
    assert torch.allclose(got, pure, rtol=0, atol=1e-14)


def test_scale_is_learned_and_clamped():
    loss = LOSSES.build("split_caption", init_temperature=0.1, max_scale=5.0)
    assert float(loss.log_scale.detach()) == pytest.approx(math.log(10.0))
    loss.after_optimizer_step()
    assert float(loss.log_scale.detach().exp()) == pytest.approx(5.0)


def test_errors():
    x, y, logits, ids = _inputs()
    loss = LOSSES.build("split_caption").double()
    with pytest.raises(InputError, match="text_ids"):
        loss({"image": x, "text": y, "caption_logits": logits})
    with pytest.raises(InputError, match="caption logits"):
        loss({"image": x, "text": y}, text_ids=ids)
    with pytest.raises(InputError, match="does not use"):
        loss({"image": x, "text": y, "caption_logits": logits}, text_ids=ids, labels=torch.arange(5))
    with pytest.raises(ConfigError, match="both 0"):
        LOSSES.build("split_caption", lambda_con=0.0, lambda_cap=0.0)
    with pytest.raises(ConfigError):
        LOSSES.build("split_caption", lambda_cap=-1.0)
