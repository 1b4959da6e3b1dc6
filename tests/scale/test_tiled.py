"""S-INFCL: tiled CLIP/SigLIP == dense (values and gradients), and what autograd saves is O(N·d)."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses import CLIPLoss, SigLIPLoss, clip_loss, siglip_loss
from contrastkit.scale.tiled import TiledLoss, tiled_clip_loss, tiled_siglip_loss


def leaves(n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    y = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    s = torch.tensor(math.log(12.0), dtype=dtype).requires_grad_()
    b = torch.tensor(-4.0, dtype=dtype).requires_grad_()
    return x, y, s, b


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


CASES = [(1, 1), (7, 1), (7, 3), (7, 7), (7, 64), (128, 7), (128, 50), (1000, 64), (1000, 333)]


@pytest.mark.parametrize("n,tile", CASES)
def test_tiled_clip_equals_dense_float64(n, tile):
    x, y, s, _ = leaves(n, 6, torch.float64)
    dense = clip_loss(x, y, s.exp(), allow_single=True)
    tiled = tiled_clip_loss(x, y, s.exp(), allow_single=True, tile_size=tile)
    torch.testing.assert_close(tiled, dense, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads(tiled, (x, y, s)), grads(dense, (x, y, s))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,tile", CASES)
def test_tiled_siglip_equals_dense_float64(n, tile):
    x, y, s, b = leaves(n, 6, torch.float64)
    dense = siglip_loss(x, y, s.exp(), b)
    tiled = tiled_siglip_loss(x, y, s.exp(), b, tile_size=tile)
    torch.testing.assert_close(tiled, dense, rtol=1e-10, atol=1e-12)
    for a, w in zip(grads(tiled, (x, y, s, b)), grads(dense, (x, y, s, b))):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn_pair", [(tiled_clip_loss, clip_loss), (tiled_siglip_loss, siglip_loss)])
def test_float32_and_bfloat16(fn_pair):
    tiled_fn, dense_fn = fn_pair
    x, y, s, b = leaves(300, 32, torch.float32, seed=1)
    extra = {"bias": b}
    dense = dense_fn(x, y, s.exp(), **extra)
    tiled = tiled_fn(x, y, s.exp(), tile_size=64, **extra)
    torch.testing.assert_close(tiled, dense, rtol=1e-5, atol=1e-6)
    for a, w in zip(grads(tiled, (x, y, s, b)), grads(dense, (x, y, s, b))):
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)
    xb, yb = x.detach().bfloat16().requires_grad_(), y.detach().bfloat16().requires_grad_()
    t16 = tiled_fn(xb, yb, s.exp(), tile_size=64, **extra)
    d16 = dense_fn(xb, yb, s.exp(), **extra)
    assert t16.dtype == torch.float32  # accumulated in float32
    torch.testing.assert_close(t16, d16, rtol=1e-5, atol=1e-6)
    gt, gd = grads(t16, (xb,))[0], grads(d16, (xb,))[0]
    assert gt.dtype == torch.bfloat16
    torch.testing.assert_close(gt.float(), gd.float(), rtol=2e-2, atol=1e-4)


def test_clip_bias_has_zero_gradient_and_no_effect():
    x, y, s, b = leaves(20, 4, torch.float64)
    with_b = tiled_clip_loss(x, y, s.exp(), b, tile_size=8)
    torch.testing.assert_close(with_b, clip_loss(x, y, s.exp()))
    assert grads(with_b, (b,))[0].item() == 0.0


def saved_bytes(fn):
    """Bytes autograd keeps for backward while ``fn()`` builds its graph (unique storages)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_what_autograd_saves_is_linear_in_n_for_tiled_and_quadratic_for_dense():
    n, d = 2048, 16
    x, y, s, b = leaves(n, d, torch.float32)
    nd_bytes = n * d * 4
    for tiled_fn, dense_fn, extra in [
        (tiled_clip_loss, clip_loss, {}),
        (tiled_siglip_loss, siglip_loss, {"bias": b}),
    ]:
        _, tiled = saved_bytes(lambda f=tiled_fn, kw=extra: f(x, y, s.exp(), tile_size=256, **kw))
        _, dense = saved_bytes(lambda f=dense_fn, kw=extra: f(x, y, s.exp(), **kw))
        # inputs, normalised copies, O(N) vectors and (SigLIP) gradients computed in forward: O(N·d)
        assert tiled <= 8 * nd_bytes, (tiled_fn.__name__, tiled)
        assert dense >= n * n * 4  # at least one N×N matrix
        assert dense > 10 * tiled


def test_module_wrapper_keeps_parameters_clamp_and_logs():
    inner = CLIPLoss()
    tiled = TiledLoss(inner, tile_size=16)
    assert [p for p in tiled.parameters()] == [inner.log_scale]
    x, y, _, _ = leaves(40, 8, torch.float32)
    torch.testing.assert_close(tiled(x, y), inner(x, y), rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        inner.log_scale.fill_(9.0)
    tiled.after_optimizer_step()
    assert inner.log_scale.item() == pytest.approx(math.log(100))
    assert tiled.log_values() == inner.log_values()
    s = TiledLoss(SigLIPLoss(), tile_size=7)
    torch.testing.assert_close(s(x, y), SigLIPLoss()(x, y), rtol=1e-6, atol=1e-6)


def test_bad_input():
    x = torch.randn(4, 3)
    with pytest.raises(InputError, match="tile_size must be a positive integer"):
        tiled_clip_loss(x, x, 10.0, tile_size=0)
    with pytest.raises(InputError, match="tile_size must be a positive integer"):
        TiledLoss(CLIPLoss(), tile_size=-3)
    with pytest.raises(InputError, match="non-finite"):
        tiled_siglip_loss(torch.full((4, 3), float("nan")), x, 10.0, -10.0)
    with pytest.raises(InputError, match="batch size mismatch"):
        tiled_clip_loss(x, torch.randn(5, 3), 10.0)
    with pytest.raises(InputError, match="only diagonal positives"):
        tiled_siglip_loss(x, x, 10.0, -10.0, labels=torch.ones(4, 4))


def test_loss_without_tiled_form_is_refused():
    class Other(CLIPLoss):
        def pure(self):
            return (lambda x, y: (x - y).pow(2).sum()), {}

    with pytest.raises(ConfigError, match="has no tiled form"):
        TiledLoss(Other())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_falls_back_to_exact_log_sum_exps_when_the_shifted_sums_underflow(dtype):
    """All logits at −s with s = 400: exp(X − bound) = e^−800 underflows in both precisions."""
    n = 6
    x = torch.zeros(n, 3, dtype=dtype)
    x[:, 0] = 1.0
    y = -x.clone()
    x.requires_grad_()
    y.requires_grad_()
    s = torch.tensor(400.0, dtype=dtype, requires_grad=True)
    tiled = tiled_clip_loss(x, y, s, tile_size=4)
    dense = clip_loss(x, y, s)
    # float32 carries ~400 ± 1.8 with an ulp of 3e-5
    assert tiled.item() == pytest.approx(math.log(n), rel=1e-4 if dtype == torch.float32 else 1e-12)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(tiled, dense, **tol)
    for a, b in zip(grads(tiled, (x, y, s)), grads(dense, (x, y, s))):
        torch.testing.assert_close(a, b, **tol)


def test_clip_fast_path_with_large_scale_and_unnormalised_inputs():
    x, y, _, _ = leaves(200, 8, torch.float64, seed=3)
    big = torch.tensor(math.log(100.0), dtype=torch.float64, requires_grad=True)
    dense = clip_loss(x * 3, y * 0.5, big.exp(), normalize=False)
    tiled = tiled_clip_loss(x * 3, y * 0.5, big.exp(), normalize=False, tile_size=64)
    torch.testing.assert_close(tiled, dense, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads(tiled, (x, y, big)), grads(dense, (x, y, big))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_tiled_siglip_backward_scales_in_place_and_refuses_a_second_backward() -> None:
    """The forward's accumulated gradients are scaled in place (no second N×d copy at the peak);
    a retained graph's second backward then fails loudly instead of returning stale values."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    loss = tiled_siglip_loss(x, y, t, b, tile_size=4)
    loss.backward(retain_graph=True)
    dense_x, dense_y = torch.autograd.grad(siglip_loss(x, y, t, b), (x, y))
    torch.testing.assert_close(x.grad, dense_x, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(y.grad, dense_y, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()
