"""Tiled XMC / MoCo v2 / LLaVE / Kernel-InfoNCE == dense (float64 values and gradients), the rule
primitives == naive forms, the MoCo session wiring, and what autograd saves is O(N·d)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.hard_negatives import LLaVELoss, llave_loss
from contrastkit.losses.kernel import KernelInfoNCELoss, kernel_infonce_loss
from contrastkit.losses.momentum import MoCo2Loss, _negative_mask, moco2_loss
from contrastkit.losses.soft_targets import XMCDecoupledLoss, xmc_decoupled_loss
from contrastkit.scale import ScaleConfig
from contrastkit.scale.tiled import TILED, TiledLoss
from contrastkit.scale.tiled_kernel import tiled_kernel_lse
from contrastkit.scale.tiled_more import (
    tiled_kernel_infonce_loss,
    tiled_llave_loss,
    tiled_moco2_loss,
    tiled_xmc_decoupled_loss,
)
from contrastkit.scale.tiled_rule import tiled_rule_lse, tiled_rule_sum
from contrastkit.train.config import RunConfig
from contrastkit.train.distributed import DistContext
from contrastkit.train.setup import objective
from tests.scale.saved import saved_bytes

N = 11
TILES = [1, 3, 4, N, 64]  # 3 and 4 do not divide N = 11
LABELS = [torch.tensor([0, 1, 0, 2, 1, 0, 3, 3, 1, 5, 2]), torch.tensor([4, 4, 4, 4, 1, 1, 9, 0, 4, 1, 0])]
TOL = {"rtol": 1e-10, "atol": 1e-12}
F64 = torch.float64


def leaves(n=N, d=5, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    y = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    t = torch.tensor(0.3, dtype=dtype).requires_grad_()
    return x, y, t


def assert_same(got, want, inputs):
    torch.testing.assert_close(got, want, **TOL)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, **TOL)


def relevance(seed, density=0.3):
    """A random 0/1 [N, N] relevance matrix with at least one positive per row."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(N, N, generator=g) < density).to(F64)
    w[torch.arange(N), torch.randint(0, N, (N,), generator=g)] = 1.0
    return w


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("seed", [0, 1])
def test_xmc_identity_labels_and_weights_equal_dense(tile, seed):
    x, y, t = leaves(seed=seed)
    assert_same(
        tiled_xmc_decoupled_loss(x, y, 1 / t, tile_size=tile), xmc_decoupled_loss(x, y, 1 / t), (x, y, t)
    )
    labels = LABELS[seed]
    same = (labels[:, None] == labels[None, :]).to(F64)
    assert_same(
        tiled_xmc_decoupled_loss(x, y, 1 / t, labels=labels, tile_size=tile),
        xmc_decoupled_loss(x, y, 1 / t, weights=same),
        (x, y, t),
    )
    w = relevance(seed)
    for weights in (w, w.bool()):
        assert_same(
            tiled_xmc_decoupled_loss(x, y, 1 / t, weights=weights, tile_size=tile),
            xmc_decoupled_loss(x, y, 1 / t, weights=w),
            (x, y, t),
        )


def test_xmc_with_no_negatives_at_all():
    x, y, t = leaves()
    ones = torch.ones(N, N, dtype=F64)
    assert_same(
        tiled_xmc_decoupled_loss(x, y, 1 / t, weights=ones, tile_size=4),
        xmc_decoupled_loss(x, y, 1 / t, weights=ones),
        (x, y, t),
    )


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_llave_equals_dense(tile, alpha):
    x, y, t = leaves(seed=int(alpha * 2))
    assert_same(
        tiled_llave_loss(x, y, 1 / t, alpha, tile_size=tile), llave_loss(x, y, 1 / t, alpha), (x, y, t)
    )


KERNEL = [
    {"gamma": g, "layout": lay, "mixture": m}
    for g in (2.0, 1.0, 0.5)
    for lay in ("views", "cross")
    for m in (None, "sum", "concat")
] + [{"gamma": 2.0, "normalize": False}, {"gamma": 1.5, "layout": "cross", "normalize": False}]


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("kw", KERNEL, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_kernel_infonce_equals_dense(tile, kw):
    x, y, _ = leaves(seed=3)
    kw = {"temperature": 0.3, "mix_weight": 0.3, **kw}
    assert_same(
        tiled_kernel_infonce_loss(x, y, tile_size=tile, **kw), kernel_infonce_loss(x, y, **kw), (x, y)
    )


@pytest.mark.parametrize("tile", [1, 3, 64])
@pytest.mark.parametrize("layout", ["views", "cross"])
def test_kernel_coincident_rows_equal_dense(tile, layout):
    # rows 0 and 2 have identical views, and row 4 repeats row 1: pairs below the d² floor (the
    # dense clamp passes no gradient there) sit on and off the diagonal
    x, y, _ = leaves(seed=11)
    x, y = x.detach().clone(), y.detach().clone()
    y[0], y[2], x[4], y[4] = x[0], x[2], x[1], y[1]
    x.requires_grad_(True), y.requires_grad_(True)
    kw = {"gamma": 0.5, "temperature": 0.2, "layout": layout}
    assert_same(
        tiled_kernel_infonce_loss(x, y, tile_size=tile, **kw), kernel_infonce_loss(x, y, **kw), (x, y)
    )


@pytest.mark.parametrize("tile", [1, 2, 5, 100])
def test_tiled_kernel_lse_equals_naive_loop(tile):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(7, 3, generator=g, dtype=F64, requires_grad=True)
    c = torch.randn(5, 3, generator=g, dtype=F64, requires_grad=True)
    w_r, w_c = torch.randn(7, generator=g, dtype=F64), torch.randn(5, generator=g, dtype=F64)
    gamma, tau = 1.3, 0.7
    row, col = tiled_kernel_lse(a, c, gamma, tau, columns=True, tile_size=tile)
    k = torch.stack([torch.stack([-(((ai - cj) ** 2).sum() ** (gamma / 2)) / tau for cj in c]) for ai in a])
    torch.testing.assert_close(row, k.logsumexp(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(col, k.logsumexp(0), rtol=1e-12, atol=0)
    got = torch.autograd.grad((row * w_r).sum() + (col * w_c).sum(), (a, c))
    want = torch.autograd.grad((k.logsumexp(1) * w_r).sum() + (k.logsumexp(0) * w_c).sum(), (a, c))
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
    # the 2N layout: a is c, pairs i = j left out
    z = a[:5].detach().clone().requires_grad_(True)
    row, _ = tiled_kernel_lse(z, z, gamma, tau, drop_diagonal=True, tile_size=tile)
    inf = torch.tensor(float("-inf"), dtype=F64)  # i = j left out (and its 0^γ never formed)
    kz = torch.stack(
        [
            torch.stack(
                [inf if i == j else -(((z[i] - z[j]) ** 2).sum() ** (gamma / 2)) / tau for j in range(5)]
            )
            for i in range(5)
        ]
    )
    torch.testing.assert_close(row, kz.logsumexp(1), rtol=1e-12, atol=0)
    got = torch.autograd.grad((row * w_c).sum(), z)[0]
    want = torch.autograd.grad((kz.logsumexp(1) * w_c).sum(), z)[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def queue(k=37, seed=5):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(k, 5, generator=g, dtype=F64), dim=1)


MOCO = [(None, None), (5, None), (None, 0.3), (5, 0.2), (100, 0.0), (3, -0.5), (37, None), (36, None)]


def naive_moco2(q, k, queue, temperature, top_k, max_similarity):
    """moco2_loss written out: filtered entries dropped after the division by τ (before it, −inf/τ
    would give a tensor τ a NaN gradient)."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    l_neg = q @ queue.T
    keep = _negative_mask(l_neg.detach(), top_k, max_similarity)
    logits = torch.cat([(q * k).sum(1, keepdim=True), l_neg], 1) / temperature
    logits = logits.masked_fill(~torch.cat([torch.ones_like(keep[:, :1]), keep], 1), float("-inf"))
    return (logits.logsumexp(1) - logits[:, 0]).mean()


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("top_k,max_sim", MOCO)
def test_moco2_equals_dense(tile, top_k, max_sim):
    x, y, t = leaves()
    q = queue()
    kw = {"temperature": t, "top_k": top_k, "max_similarity": max_sim}
    assert_same(tiled_moco2_loss(x, y, q, tile_size=tile, **kw), moco2_loss(x, y, q, **kw), (x, t))
    assert_same(
        tiled_moco2_loss(x, y, q, tile_size=tile, **kw), naive_moco2(x, y, q, t, top_k, max_sim), (x, t)
    )


@pytest.mark.parametrize("tile", [1, 2, 5, 64])
def test_moco2_top_k_ties_share_the_places_left(tile):
    """Query 0's three most similar queue rows are one vector three times; top_k = 2 keeps two of
    them (dense: whichever topk picks). Equal vectors: value and gradient are the same either way."""
    x, y, t = leaves()
    v = F.normalize(x.detach()[:1], dim=1)
    q = torch.cat([v, queue(12), v, v, queue(6, seed=9)[:3], queue(6, seed=9)[:3]])
    for top_k in (2, 3, 4, 8):
        kw = {"temperature": t, "top_k": top_k}
        assert_same(tiled_moco2_loss(x, y, q, tile_size=tile, **kw), moco2_loss(x, y, q, **kw), (x, t))
        assert_same(
            tiled_moco2_loss(x, y, q, tile_size=tile, **kw), naive_moco2(x, y, q, t, top_k, None), (x, t)
        )


def test_moco2_empty_queue_and_float_temperature():
    x, y, _ = leaves()
    empty = torch.zeros(0, 5, dtype=F64)
    assert tiled_moco2_loss(x, y, empty, tile_size=3).item() == pytest.approx(0.0, abs=1e-15)
    assert_same(tiled_moco2_loss(x, y, queue(), tile_size=4), moco2_loss(x, y, queue()), (x,))


def naive_rule(a, c, s, b):
    x = s * (a @ c.T) + b[:, None] * c.sum(1)[None, :]  # a per-row parameter b, gradient to all
    return x.masked_fill(torch.eye(a.shape[0], c.shape[0], dtype=torch.bool), float("-inf"))


@pytest.mark.parametrize("tile", [1, 3, 50])
def test_rule_primitives_equal_naive_with_vector_params_and_a_fixed_side(tile):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(9, 4, generator=g, dtype=F64, requires_grad=True)
    c = torch.randn(7, 4, generator=g, dtype=F64)  # no gradient: like a queue
    s = torch.tensor(1.7, dtype=F64, requires_grad=True)
    b = torch.randn(9, generator=g, dtype=F64, requires_grad=True)

    def rule(a_t, c_t, rows, cols, s, b, unused):
        eye = torch.arange(rows.start, rows.stop)[:, None] == torch.arange(cols.start, cols.stop)[None, :]
        return s * (a_t @ c_t.T) + b[rows, None] * c_t.sum(1)[None, :], ~eye

    unused = torch.tensor(3.0, dtype=F64, requires_grad=True)  # a parameter the rule ignores: gradient 0
    row, col = tiled_rule_lse(a, c, (s, b, unused), rule, columns=True, tile_size=tile)
    assert torch.autograd.grad(row.sum(), unused, retain_graph=True)[0].item() == 0.0
    want = naive_rule(a, c, s, b)
    wr, wc = torch.linspace(0.5, 1.5, 9, dtype=F64), torch.linspace(-1, 1, 7, dtype=F64)
    assert_same(row @ wr + col @ wc, want.logsumexp(1) @ wr + want.logsumexp(0) @ wc, (a, s, b))
    total = tiled_rule_sum(a, c, (s, b, unused), rule, tile_size=tile)
    want = naive_rule(a, c, s, b)
    assert_same(total @ wr, torch.where(want.isfinite(), want, 0.0).sum(1) @ wr, (a, s, b))


@pytest.mark.parametrize("name", ["xmc-labels", "xmc-weights", "llave", "kernel-1", "kernel-2", "moco-top-k"])
def test_what_autograd_saves_is_linear_in_n_for_tiled_and_quadratic_for_dense(name):
    n, d = 1024, 16
    x, y, _ = leaves(n, d, torch.float32)
    labels = torch.arange(n) % 37
    same = labels[:, None] == labels[None, :]
    tiled, dense = {
        "xmc-labels": (lambda: tiled_xmc_decoupled_loss(x, y, 20.0, labels=labels, tile_size=128),
                       lambda: xmc_decoupled_loss(x, y, 20.0, weights=same)),
        "xmc-weights": (lambda: tiled_xmc_decoupled_loss(x, y, 20.0, weights=same, tile_size=128),
                        lambda: xmc_decoupled_loss(x, y, 20.0, weights=same)),
        "llave": (lambda: tiled_llave_loss(x, y, tile_size=128), lambda: llave_loss(x, y)),
        "kernel-1": (lambda: tiled_kernel_infonce_loss(x, y, gamma=1.0, tile_size=128),
                     lambda: kernel_infonce_loss(x, y, gamma=1.0)),
        "kernel-2": (lambda: tiled_kernel_infonce_loss(x, y, layout="cross", tile_size=128),
                     lambda: kernel_infonce_loss(x, y, layout="cross")),
        "moco-top-k": (lambda: tiled_moco2_loss(x, y, y.detach(), top_k=64, max_similarity=0.5,
                                                tile_size=128),
                       lambda: moco2_loss(x, y, y.detach(), top_k=64, max_similarity=0.5)),
    }[name]  # fmt: skip
    got, ref = saved_bytes(tiled), saved_bytes(dense)
    nd_bytes = n * d * 4
    # inputs, normalised copies, [2N, d] concatenations and O(N) vectors: O(N·d)
    assert got <= 16 * nd_bytes, got
    assert ref >= n * n * 4  # at least one N×N matrix
    assert ref > 8 * got


def test_module_wrapper_dispatches_and_passes_weights():
    x, y, _ = leaves(40, 8, torch.float32)
    w = torch.zeros(40, 40)
    w[torch.arange(40), (torch.arange(40) * 7) % 40] = 1.0
    w[torch.arange(40), torch.arange(40)] = 1.0
    xmc = TiledLoss(XMCDecoupledLoss(), tile_size=16)
    assert xmc.accepts == frozenset({"weights"})
    torch.testing.assert_close(
        xmc(x, y, weights=w), XMCDecoupledLoss()(x, y, weights=w), rtol=1e-6, atol=1e-6
    )
    for loss in (LLaVELoss(), KernelInfoNCELoss(gamma=1.0), KernelInfoNCELoss(layout="cross")):
        torch.testing.assert_close(TiledLoss(loss, tile_size=7)(x, y), loss(x, y), rtol=1e-6, atol=1e-6)
    assert all(f in TILED for f in (xmc_decoupled_loss, llave_loss, kernel_infonce_loss))


def test_moco2_module_runs_tiled_under_scale_tile_size():
    cfg = dataclasses.replace(RunConfig.tiny(), scale=ScaleConfig(tile_size=8))
    dense, tiled = MoCo2Loss(dim=6, queue_size=50, top_k=20), MoCo2Loss(dim=6, queue_size=50, top_k=20)
    assert objective(cfg, tiled, DistContext()) is tiled
    assert tiled.tiled_fn is not None and dense.tiled_fn is None
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # the queue moves between calls: both copies must move alike
        emb = {
            "image@0": torch.randn(12, 6, generator=g, requires_grad=True),
            "image@1:ema": torch.randn(12, 6),
        }
        got, want = tiled(emb), dense(emb)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        ga, gb = torch.autograd.grad(got, emb["image@0"]), torch.autograd.grad(want, emb["image@0"])
        torch.testing.assert_close(ga[0], gb[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tiled.queue, dense.queue)
    chunked = dataclasses.replace(RunConfig.tiny(), scale=ScaleConfig(chunk_size=8))
    with pytest.raises(ConfigError, match="is a MultiLoss"):
        objective(chunked, MoCo2Loss(dim=6), DistContext())


def test_float32_close_to_dense():
    x, y, _ = leaves(300, 32, torch.float32, seed=2)
    w = (torch.arange(300)[:, None] % 17 == torch.arange(300)[None, :] % 17).float()
    pairs = [
        (
            tiled_xmc_decoupled_loss(x, y, 20.0, weights=w, tile_size=64),
            xmc_decoupled_loss(x, y, 20.0, weights=w),
        ),
        (tiled_llave_loss(x, y, tile_size=64), llave_loss(x, y)),
        (tiled_moco2_loss(x, y, y.detach(), top_k=50, tile_size=64), moco2_loss(x, y, y.detach(), top_k=50)),
    ]
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bad_input():
    x, y, _ = leaves()
    with pytest.raises(InputError, match="tile_size must be a positive integer"):
        tiled_llave_loss(x, y, tile_size=0)
    with pytest.raises(InputError, match="labels or as weights, not both"):
        tiled_xmc_decoupled_loss(x, y, 5.0, labels=LABELS[0], weights=torch.eye(N))
    with pytest.raises(InputError, match="0/1"):
        tiled_xmc_decoupled_loss(x, y, 5.0, weights=torch.full((N, N), 0.5))
    with pytest.raises(InputError, match="at least one positive"):
        tiled_xmc_decoupled_loss(x, y, 5.0, weights=torch.zeros(N, N))
    with pytest.raises(InputError, match="non-finite"):
        tiled_xmc_decoupled_loss(x, y, 5.0, weights=torch.full((N, N), float("nan")))
    with pytest.raises(InputError, match=r"shape \[N, N\]"):
        tiled_xmc_decoupled_loss(x, y, 5.0, weights=torch.eye(3))
    with pytest.raises(InputError, match="labels must have shape"):
        tiled_xmc_decoupled_loss(x, y, 5.0, labels=torch.arange(3))
    with pytest.raises(InputError, match="batch of 1 pair"):
        tiled_xmc_decoupled_loss(x[:1], y[:1], 5.0)
    with pytest.raises(InputError, match="N >= 2"):
        tiled_llave_loss(x[:1], y[:1])
    with pytest.raises(ConfigError, match="gamma must lie"):
        tiled_kernel_infonce_loss(x, y, gamma=3.0)
    with pytest.raises(InputError, match="d >= 2"):
        tiled_kernel_infonce_loss(x[:, :1], y[:, :1], mixture="concat")
    with pytest.raises(ConfigError, match="top_k must be"):
        tiled_moco2_loss(x, y, queue(), top_k=0)
    with pytest.raises(InputError, match="queue must have shape"):
        tiled_moco2_loss(x, y, torch.zeros(4, 3, dtype=F64))
