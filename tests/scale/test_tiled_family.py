"""Tiled InfoNCE family == dense (float64 values and gradients), the masked primitive == a naive
masked log-sum-exp, and what autograd saves is O(N·d)."""

import math
import warnings

import pytest
import torch

from contrastkit.core.errors import InputError
from contrastkit.losses import CLIPLoss
from contrastkit.losses.dcl import dcl_loss, dclw_loss
from contrastkit.losses.hard_negatives import hn_nce_loss
from contrastkit.losses.infonce import NTXentLoss, infonce_loss, ntxent_loss
from contrastkit.losses.margin import aam_ntxent_loss, am_ntxent_loss
from contrastkit.losses.soft_targets import MultiPositiveLoss, multi_positive_loss
from contrastkit.losses.supcon import SupConLoss, supcon_loss
from contrastkit.scale.tiled import TiledLoss
from contrastkit.scale.tiled_family import positive_logit_sums, tiled_masked_lse, tiled_masked_lse_heads
from contrastkit.scale.tiled_zoo import TILED_FAMILY, tiled_hn_nce_loss, tiled_ntxent_loss, tiled_supcon_loss
from tests.scale.saved import saved_bytes

N = 11
LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 3, 3, 1, 5, 2])  # class 5 is a singleton
TOL = {"rtol": 1e-10, "atol": 1e-12}


def leaves(n=N, d=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    y = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    t = torch.tensor(0.3, dtype=dtype).requires_grad_()  # a temperature; the scale is 1/t
    return x, y, t


# (dense function, keyword arguments; "S" stands for the scale 1/t, "T" for the temperature t)
CASES = [
    (ntxent_loss, {"temperature": "T"}),
    (ntxent_loss, {"temperature": "T", "reduction": "simclr"}),
    (supcon_loss, {"temperature": "T", "labels": LABELS}),
    (supcon_loss, {"temperature": "T", "labels": LABELS, "variant": "in"}),
    (supcon_loss, {"temperature": "T", "labels": LABELS, "zero_positive": "zero", "base_temperature": 0.07}),
    (supcon_loss, {"temperature": "T"}),
    (dcl_loss, {"temperature": "T"}),
    (dclw_loss, {"temperature": "T", "sigma": 2.0}),
    (multi_positive_loss, {"scale": "S", "labels": LABELS}),
    (multi_positive_loss, {"scale": "S", "labels": LABELS, "form": "out"}),
    (multi_positive_loss, {"scale": "S"}),
    (infonce_loss, {"scale": "S"}),
    (infonce_loss, {"scale": "S", "symmetric": True}),
    (am_ntxent_loss, {"scale": "S"}),
    (am_ntxent_loss, {"scale": "S", "symmetric": False, "margin": 0.5}),
    (aam_ntxent_loss, {"scale": "S", "margin": 0.4}),
    (aam_ntxent_loss, {"scale": "S", "symmetric": False}),
    (hn_nce_loss, {"scale": "S"}),
    (hn_nce_loss, {"scale": "S", "alpha": 0.3, "beta": 0.2, "beta_t2i": 1.5}),
    (hn_nce_loss, {"scale": "S", "alpha": 0.0, "beta": 0.0}),
]


def kwargs(template, t):
    return {k: (1 / t if v == "S" else t if v == "T" else v) for k, v in template.items()}


@pytest.mark.parametrize("tile", [1, 3, 4, N, 64])  # 3 and 4 do not divide N = 11
@pytest.mark.parametrize("case", CASES, ids=[f"{fn.__name__}-{i}" for i, (fn, _) in enumerate(CASES)])
def test_tiled_equals_dense_float64(case, tile):
    fn, template = case
    x, y, t = leaves()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # supcon's singleton-class warning
        dense = fn(x, y, **kwargs(template, t))
        tiled = TILED_FAMILY[fn](x, y, tile_size=tile, **kwargs(template, t))
    torch.testing.assert_close(tiled, dense, **TOL)
    for a, b in zip(torch.autograd.grad(tiled, (x, y, t)), torch.autograd.grad(dense, (x, y, t))):
        torch.testing.assert_close(a, b, **TOL)


def naive_masked_lse(a, c, s, a_ids, c_ids, a_lab, c_lab, keep, margin):
    excl = a_ids[:, None] == c_ids[None, :]
    pos = (a_lab[:, None] == c_lab[None, :]) & ~excl
    x = s * (a @ c.T - margin * pos.double())
    kept = {"all": ~excl, "negatives": ~excl & ~pos, "positives": pos}[keep]
    x = x.masked_fill(~kept, float("-inf"))
    return x.logsumexp(1), x.logsumexp(0)


@pytest.mark.parametrize("keep", ["all", "negatives", "positives"])
@pytest.mark.parametrize("tile", [1, 3, 7, 50])
@pytest.mark.parametrize("scale", [2.5, 150.0])  # 150: logits past exp's range, the merged-LSE path
def test_primitive_equals_naive_masked_lse_with_margin_ids_and_empty_rows(keep, tile, scale):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    a_ids, c_ids = torch.arange(9), torch.tensor([0, 2, 4, 6, 8, 10, 12])  # some self-pairs
    a_lab, c_lab = torch.tensor([0, 1, 1, 2, 0, 7, 3, 3, 9]), torch.tensor([0, 1, 2, 2, 3, 3, 4])
    want = naive_masked_lse(a, c, s, a_ids, c_ids, a_lab, c_lab, keep, 0.3)
    got = tiled_masked_lse(
        a,
        c,
        s,
        a_ids=a_ids,
        c_ids=c_ids,
        a_labels=a_lab,
        c_labels=c_lab,
        keep=keep,
        margin=0.3,
        columns=True,
        tile_size=tile,
    )
    for w, v in zip(want, got):
        torch.testing.assert_close(v, w, **TOL)
    # rows with nothing kept are −inf; weight the finite entries only (their gradient must be exact)
    wr, wc = torch.linspace(0.5, 1.5, 9, dtype=torch.float64), torch.linspace(-1, 1, 7, dtype=torch.float64)

    def total(r, col):
        return torch.where(r.isfinite(), r, 0.0) @ wr + torch.where(col.isfinite(), col, 0.0) @ wc

    for u, v in zip(
        torch.autograd.grad(total(*got), (a, c, s)), torch.autograd.grad(total(*want), (a, c, s))
    ):
        assert torch.isfinite(u).all()
        torch.testing.assert_close(u, v, **TOL)


@pytest.mark.parametrize("tile", [1, 4, 50])
@pytest.mark.parametrize("scale", [2.5, 150.0])
def test_heads_share_one_pass_and_equal_separate_calls(tile, scale):
    """Heads (μ_k, keep_k) over one pass equal separate naive masked LSEs at scale s·μ_k, with
    the gradients of any weighted sum of their outputs (a head with no upstream gradient included)."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    a_ids, c_ids = torch.arange(8), torch.tensor([0, 2, 4, 6, 9, 11])
    a_lab, c_lab = torch.tensor([0, 1, 1, 2, 0, 7, 3, 3]), torch.tensor([0, 1, 2, 2, 3, 3])
    heads = [(1.0, "all"), (0.5, "positives"), (1.5, "negatives"), (0.0, "all")]
    fields = {"a_ids": a_ids, "c_ids": c_ids, "a_labels": a_lab, "c_labels": c_lab}
    rows, cols = tiled_masked_lse_heads(a, c, s, heads, margin=0.2, columns=True, tile_size=tile, **fields)
    want = [naive_masked_lse(a, c, s * m, a_ids, c_ids, a_lab, c_lab, keep, 0.2) for m, keep in heads]
    for k in range(len(heads)):
        torch.testing.assert_close(rows[k], want[k][0], **TOL)
        torch.testing.assert_close(cols[k], want[k][1], **TOL)

    def total(r, col, k):  # finite entries only; head 3 gets no gradient from the loss
        return torch.where(r.isfinite(), r, 0.0).sum() * (k + 1) + torch.where(col.isfinite(), col, 0.0).sum()

    got_loss = sum(total(rows[k], cols[k], k) for k in range(3))
    want_loss = sum(total(*want[k], k) for k in range(3))
    for u, v in zip(torch.autograd.grad(got_loss, (a, c, s)), torch.autograd.grad(want_loss, (a, c, s))):
        torch.testing.assert_close(u, v, **TOL)


def test_heads_refuse_bad_specs():
    x = torch.randn(3, 2)
    with pytest.raises(InputError, match="at least one"):
        tiled_masked_lse_heads(x, x, torch.tensor(1.0), [])
    with pytest.raises(InputError, match="finite"):
        tiled_masked_lse_heads(x, x, torch.tensor(1.0), [(float("nan"), "all")])
    with pytest.raises(InputError, match="needs a_labels"):
        tiled_masked_lse_heads(x, x, torch.tensor(1.0), [(1.0, "all"), (1.0, "positives")])


def test_positive_logit_sums_equals_naive():
    x, y, t = leaves()
    ids = torch.arange(N)
    for a_ids in (None, ids):
        got, n_pos = positive_logit_sums(x, y, 1 / t, LABELS, LABELS, a_ids=a_ids, c_ids=a_ids)
        pos = LABELS[:, None] == LABELS[None, :]
        if a_ids is not None:
            pos &= ~torch.eye(N, dtype=torch.bool)
        want = torch.where(pos, (x @ y.T) / t, 0.0).sum(1)
        torch.testing.assert_close(got, want, **TOL)
        assert n_pos.tolist() == pos.sum(1).tolist()


def test_single_pair_allowed_gives_zero():
    x, y, t = leaves(n=1)
    assert tiled_ntxent_loss(x, y, t, allow_single=True, tile_size=2).item() == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(InputError, match="batch of 1 pair"):
        tiled_ntxent_loss(x, y, t)


def test_supcon_warns_like_dense_and_handles_no_positive_at_all():
    x, _, t = leaves()
    with pytest.warns(RuntimeWarning, match="1 of 11 anchors have no positive"):
        tiled_supcon_loss(x, None, t, labels=LABELS, tile_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        distinct = torch.arange(N)
        for variant in ("out", "in"):
            loss = tiled_supcon_loss(x, None, t, labels=distinct, variant=variant, tile_size=3)
            assert loss.item() == 0.0
            (gx,) = torch.autograd.grad(loss, (x,))
            assert torch.equal(gx, torch.zeros_like(gx))


@pytest.mark.parametrize(
    "fn,kw",
    [
        (ntxent_loss, {}),
        (supcon_loss, {"labels": "L"}),
        (supcon_loss, {"labels": "L", "variant": "in"}),
        (dclw_loss, {}),
        (multi_positive_loss, {"scale": 10.0, "labels": "L"}),
        (am_ntxent_loss, {}),
        (hn_nce_loss, {"scale": 10.0}),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
def test_what_autograd_saves_is_linear_in_n_for_tiled_and_quadratic_for_dense(fn, kw):
    n, d = 1024, 16
    x, y, _ = leaves(n, d, torch.float32)
    kw = {k: (torch.arange(n) % 37 if v == "L" else v) for k, v in kw.items()}
    tiled = saved_bytes(lambda: TILED_FAMILY[fn](x, y, tile_size=128, **kw))
    dense = saved_bytes(lambda: fn(x, y, **kw))
    nd_bytes = n * d * 4
    # inputs, normalised copies, [2N, d] concatenations, class sums and O(N) vectors: O(N·d)
    assert tiled <= 16 * nd_bytes, tiled
    assert dense >= n * n * 4  # at least one N×N matrix
    assert dense > 8 * tiled


def test_module_wrapper_passes_labels_and_keeps_parameters():
    x, y, _ = leaves(40, 8, torch.float32)
    labels = torch.arange(40) % 6
    sup = TiledLoss(SupConLoss(), tile_size=16)
    assert sup.accepts == frozenset({"labels"})
    torch.testing.assert_close(
        sup(x, y, labels=labels), SupConLoss()(x, y, labels=labels), rtol=1e-6, atol=1e-6
    )
    inner = MultiPositiveLoss()
    mp = TiledLoss(inner, tile_size=7)
    assert list(mp.parameters()) == [inner.log_scale]
    loss_t, loss_d = mp(x, y, labels=labels), inner(x, y, labels=labels)
    torch.testing.assert_close(loss_t, loss_d, rtol=1e-6, atol=1e-6)
    gt = torch.autograd.grad(loss_t, inner.log_scale)[0]
    gd = torch.autograd.grad(loss_d, inner.log_scale)[0]
    torch.testing.assert_close(gt, gd, rtol=1e-5, atol=1e-6)
    assert TiledLoss(NTXentLoss(), tile_size=8).accepts == frozenset()
    assert TiledLoss(CLIPLoss(), tile_size=8).accepts == frozenset()  # no per-pair weights in tiles
    with pytest.raises(InputError, match="does not use"):
        TiledLoss(CLIPLoss(), tile_size=8)(x, y, pair_weights=torch.ones(40))


def test_float32_close_to_dense():
    x, y, _ = leaves(300, 32, torch.float32, seed=2)
    labels = torch.arange(300) % 17
    torch.testing.assert_close(
        tiled_supcon_loss(x, y, 0.1, labels=labels, tile_size=64),
        supcon_loss(x, y, 0.1, labels=labels),
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_input():
    x, y, _ = leaves()
    with pytest.raises(InputError, match="tile_size must be a positive integer"):
        tiled_ntxent_loss(x, y, tile_size=0)
    with pytest.raises(InputError, match="detach_weights=False only"):
        tiled_hn_nce_loss(x, y, 10.0, detach_weights=True)
    with pytest.raises(InputError, match="needs a_labels"):
        tiled_masked_lse(x, y, torch.tensor(1.0), keep="negatives")
    with pytest.raises(InputError, match="give both"):
        tiled_masked_lse(x, y, torch.tensor(1.0), a_ids=torch.arange(N))
    with pytest.raises(InputError, match="labels must have shape"):
        tiled_supcon_loss(x, y, labels=torch.arange(3))
    assert math.isfinite(tiled_supcon_loss(x, y, labels=LABELS).item())


def test_two_view_normalisation_matches_f_normalize_with_a_zero_row():
    """The tiled two-view losses normalise [x; y] in one pass with their own backward; values and
    gradients equal the dense F.normalize path, including a zero row (norm clamped to eps)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x[2] = 0.0
    x.requires_grad_()
    y = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 2, 0, 3])
    for dense, tiled, kw in (
        (ntxent_loss, tiled_ntxent_loss, {}),
        (supcon_loss, tiled_supcon_loss, {"labels": labels}),
    ):
        want = dense(x, y, **kw)
        got = tiled(x, y, tile_size=4, **kw)
        torch.testing.assert_close(got, want, **TOL)
        for u, v in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(want, (x, y))):
            torch.testing.assert_close(u, v, **TOL)
