"""L-CLIP against a naive float64 loop (values and gradients) and the spec's oracles."""

import math

import pytest
import torch

from contrastkit.core.errors import InputError
from contrastkit.losses import CLIPLoss, clip_loss
from contrastkit.losses.clip import clip_pair_losses


def naive_clip(x, y, log_scale):
    """Spec formula written out: ½[CE(L, i) + CE(Lᵀ, i)] with explicit loops."""
    n = x.shape[0]
    xn = [x[i] / x[i].norm() for i in range(n)]
    yn = [y[j] / y[j].norm() for j in range(n)]
    s = log_scale.exp()
    logits = [[s * (xn[i] * yn[j]).sum() for j in range(n)] for i in range(n)]
    rows = 0.0
    cols = 0.0
    for i in range(n):
        rows = rows - (logits[i][i] - torch.logsumexp(torch.stack(logits[i]), 0))
        cols = cols - (logits[i][i] - torch.logsumexp(torch.stack([logits[k][i] for k in range(n)]), 0))
    return 0.5 * (rows / n + cols / n)


@pytest.mark.parametrize("n,d", [(2, 3), (5, 8), (9, 4)])
def test_matches_naive_values_and_gradients(n, d, rng):
    x = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=True)
    y = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
    got = clip_loss(x, y, t.exp())
    gx, gy, gt = torch.autograd.grad(got, (x, y, t))
    want = naive_clip(x, y, t)
    wx, wy, wt = torch.autograd.grad(want, (x, y, t))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in ((gx, wx), (gy, wy), (gt, wt)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def test_batch_of_one_is_zero_when_allowed_and_an_error_otherwise():
    x, y = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    assert clip_loss(x, y, 10.0, allow_single=True).item() == 0.0
    with pytest.raises(InputError, match="batch of 1 pair"):
        clip_loss(x, y, 10.0)


def test_all_equal_similarities_give_log_n():
    n = 6
    v = torch.zeros(n, 4, dtype=torch.float64)
    v[:, 0] = 1.0
    assert clip_loss(v, v, 14.0).item() == pytest.approx(math.log(n), abs=1e-12)


def test_two_basis_vectors_scale_one():
    e = torch.eye(2, dtype=torch.float64)
    assert clip_loss(e, e, 1.0).item() == pytest.approx(0.3132617, abs=1e-7)
    assert clip_loss(e, e, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)


def test_orthonormal_pairs_at_scale_100_are_nearly_zero():
    e = torch.eye(5, dtype=torch.float64)
    assert clip_loss(e, e, 100.0).item() < 1e-40


def test_symmetry_and_permutation_invariance(rng):
    x = torch.randn(7, 5, generator=rng, dtype=torch.float64)
    y = torch.randn(7, 5, generator=rng, dtype=torch.float64)
    base = clip_loss(x, y, 5.0)
    torch.testing.assert_close(clip_loss(y, x, 5.0), base)
    p = torch.randperm(7, generator=rng)
    torch.testing.assert_close(clip_loss(x[p], y[p], 5.0), base)


def test_module_init_and_clamp_after_optimizer_step():
    loss = CLIPLoss()
    assert loss.log_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    assert loss.log_values()["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)
    opt = torch.optim.SGD(loss.parameters(), lr=0.0)
    with torch.no_grad():
        loss.log_scale.fill_(10.0)
    opt.step()
    loss.after_optimizer_step()
    assert loss.log_scale.item() == pytest.approx(math.log(100), abs=1e-6)
    with torch.no_grad():
        loss.log_scale.fill_(-1.0)
    loss.after_optimizer_step()
    assert loss.log_scale.item() == 0.0


def test_bfloat16_inputs_are_computed_in_float32(rng):
    x = torch.randn(8, 16, generator=rng)
    y = torch.randn(8, 16, generator=rng)
    got = clip_loss(x.bfloat16(), y.bfloat16(), 10.0)
    assert got.dtype == torch.float32
    want = clip_loss(x.bfloat16().float(), y.bfloat16().float(), 10.0)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "x,y,msg",
    [
        (torch.randn(3, 4), torch.randn(4, 4), "batch size mismatch"),
        (torch.randn(3, 4), torch.randn(3, 5), "embedding dimension mismatch"),
        (torch.randn(0, 4), torch.randn(0, 4), "empty batch"),
        (torch.randn(3), torch.randn(3), r"shape \[N, d\]"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), torch.randn(2, 2), "non-finite"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), torch.randn(2, 2), "non-finite"),
    ],
)
def test_bad_input_is_a_clear_error(x, y, msg):
    with pytest.raises(InputError, match=msg):
        clip_loss(x, y, 10.0)


def naive_weighted_clip(x, y, log_scale, w):
    """(1/N) Σ_i w_i · ½[CE(row i) + CE(column i)], written out pair by pair."""
    n = x.shape[0]
    xn = [x[i] / x[i].norm() for i in range(n)]
    yn = [y[j] / y[j].norm() for j in range(n)]
    s = log_scale.exp()
    logits = [[s * (xn[i] * yn[j]).sum() for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        row = -(logits[i][i] - torch.logsumexp(torch.stack(logits[i]), 0))
        col = -(logits[i][i] - torch.logsumexp(torch.stack([logits[k][i] for k in range(n)]), 0))
        total = total + w[i] * 0.5 * (row + col)
    return total / n


def test_pair_weights_match_the_naive_formula_values_and_gradients(rng):
    x = torch.randn(6, 5, generator=rng, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 5, generator=rng, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(2.1, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 0.0, 0.25, 0.9, 1e-4, 0.5], dtype=torch.float64, requires_grad=True)
    got = clip_loss(x, y, t.exp(), pair_weights=w)
    want = naive_weighted_clip(x, y, t, w.detach())
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    grads = torch.autograd.grad(got, (x, y, t, w), allow_unused=True)
    wants = torch.autograd.grad(want, (x, y, t))
    for a, b in zip(grads[:3], wants):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert grads[3] is None  # the weights are constants of the step
    e = torch.eye(2, dtype=torch.float64)  # pair 0 alone counts: ½·log(1 + e^-1)
    w2 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert clip_loss(e, e, 1.0, pair_weights=w2).item() == pytest.approx(0.15663084375911143, abs=1e-15)


def test_unit_pair_weights_are_the_clip_loss_and_pair_losses_average_to_it(rng):
    x = torch.randn(7, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 4, generator=rng, dtype=torch.float64)
    plain = clip_loss(x, y, 8.0)
    ones = clip_loss(x, y, 8.0, pair_weights=torch.ones(7, dtype=torch.float64))
    torch.testing.assert_close(ones, plain, rtol=1e-12, atol=0)
    gx1, gx2 = torch.autograd.grad(plain, x)[0], torch.autograd.grad(ones, x)[0]
    torch.testing.assert_close(gx1, gx2, rtol=1e-12, atol=1e-15)
    ell = clip_pair_losses(x, y, 8.0)
    assert ell.shape == (7,) and (ell > 0).all()
    torch.testing.assert_close(ell.mean(), plain, rtol=1e-12, atol=0)
    e = torch.eye(2, dtype=torch.float64)  # both pairs: log(1 + e^-1) (see the scale-1 test)
    want = torch.full((2,), 0.31326168751822286, dtype=torch.float64)
    torch.testing.assert_close(clip_pair_losses(e, e, 1.0), want)


def test_the_module_takes_pair_weights_and_bad_weights_are_errors(rng):
    x, y = torch.randn(4, 3, generator=rng), torch.randn(4, 3, generator=rng)
    loss = CLIPLoss()
    w = torch.tensor([1.0, 0.5, 0.0, 1.0])
    assert loss.accepts == frozenset({"pair_weights"})
    want = clip_loss(x, y, loss.log_scale.exp(), pair_weights=w)
    torch.testing.assert_close(loss(x, y, pair_weights=w), want)
    for bad, msg in ((torch.ones(3), r"\[N=4\]"), (torch.tensor([1.0, -0.1, 1, 1]), ">= 0")):
        with pytest.raises(InputError, match=msg):
            clip_loss(x, y, 10.0, pair_weights=bad)
    with pytest.raises(InputError, match="finite"):
        clip_loss(x, y, 10.0, pair_weights=torch.tensor([1.0, float("nan"), 1, 1]))
