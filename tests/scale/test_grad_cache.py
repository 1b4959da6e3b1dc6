"""S-GRADCACHE: chunked two-pass gradients == ordinary autograd, dropout replayed exactly."""

import pytest
import torch
from torch import nn

from contrastkit.core.errors import InputError
from contrastkit.losses import CLIPLoss, SigLIPLoss
from contrastkit.models import DualEncoder, Tower
from contrastkit.scale import TiledLoss, backward_through_chunks, embed_in_chunks


class MLPTower(Tower):
    def __init__(self, d_in: int, width: int, p: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, width), nn.Dropout(p), nn.GELU(), nn.Linear(width, width))
        self.output_dim = width

    def forward(self, x):
        return self.net(x)


N = 10


def setup(loss_cls=CLIPLoss):
    torch.manual_seed(0)
    model = DualEncoder({"image": MLPTower(7, 12, 0.3), "text": MLPTower(9, 12, 0.3)}, embed_dim=5).double()
    loss = loss_cls().double()
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(N, 7, generator=g, dtype=torch.float64),
        "text": torch.randn(N, 9, generator=g, dtype=torch.float64),
    }
    return model, loss, batch


def all_grads(model, loss):
    out = [p.grad.clone() for p in model.parameters()] + [p.grad.clone() for p in loss.parameters()]
    model.zero_grad(set_to_none=True)
    loss.zero_grad(set_to_none=True)
    return out


def reference(model, loss, batch, chunk):
    """Plain autograd through the same chunked forward (same dropout masks)."""
    torch.manual_seed(123)
    reps = {
        m: torch.cat([model.encode(m, x[i : i + chunk]) for i in range(0, N, chunk)])
        for m, x in batch.items()
    }
    value = loss(reps["image"], reps["text"])
    value.backward()
    return value.detach(), all_grads(model, loss)


def cached(model, loss, batch, chunk, replay=True):
    torch.manual_seed(123)
    c = embed_in_chunks(model, batch, chunk)
    value = loss(c.reps["image"], c.reps["text"])
    value.backward()
    backward_through_chunks(model, batch, c, replay_rng=replay)
    return value.detach(), all_grads(model, loss)


@pytest.mark.parametrize("loss_cls", [CLIPLoss, SigLIPLoss])
@pytest.mark.parametrize("chunk", [1, 3, N])
def test_gradients_equal_full_autograd_with_dropout(loss_cls, chunk):
    model, loss, batch = setup(loss_cls)
    v_ref, g_ref = reference(model, loss, batch, chunk)
    v, g = cached(model, loss, batch, chunk)
    assert v.item() == v_ref.item()
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_whole_batch_chunk_equals_the_unchunked_model_call():
    model, loss, batch = setup()
    torch.manual_seed(123)
    emb = model(batch)
    loss(emb["image"], emb["text"]).backward()
    plain = all_grads(model, loss)
    _, g = cached(model, loss, batch, N)
    for a, b in zip(g, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_scale_gradient_is_counted_once_and_tiling_composes():
    model, loss, batch = setup()
    _, g_ref = reference(model, loss, batch, 3)
    tiled = TiledLoss(loss, tile_size=4)
    _, g = cached(model, tiled, batch, 3)
    torch.testing.assert_close(g[-1], g_ref[-1], rtol=1e-10, atol=1e-12)  # ∂L/∂θ_s once, not K times
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_without_rng_replay_dropout_gradients_differ():
    model, loss, batch = setup()
    _, g_ref = reference(model, loss, batch, 3)
    _, g = cached(model, loss, batch, 3, replay=False)
    assert any(not torch.allclose(a, b) for a, b in zip(g, g_ref))


def test_errors():
    model, _, batch = setup()
    with pytest.raises(InputError, match="chunk_size must be a positive integer"):
        embed_in_chunks(model, batch, 0)
    c = embed_in_chunks(model, batch, 4)
    with pytest.raises(InputError, match="call loss.backward\\(\\) before"):
        backward_through_chunks(model, batch, c)
