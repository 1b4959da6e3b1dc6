"""L-SIGLIP against a hand-written per-pair sum (values and gradients) and the spec's oracles."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import InputError
from contrastkit.losses import SigLIPLoss, siglip_loss


def naive_siglip(x, y, log_t, b, labels=None):
    """(1/N) Σ_i Σ_j −log σ(z_ij (t x_i·y_j + b)), one pair at a time."""
    n, m = x.shape[0], y.shape[0]
    t = log_t.exp()
    total = 0.0
    for i in range(n):
        for j in range(m):
            z = (1.0 if i == j else -1.0) if labels is None else float(labels[i, j])
            logit = t * (x[i] / x[i].norm()) @ (y[j] / y[j].norm()) + b
            total = total - torch.log(torch.sigmoid(z * logit))
    return total / n


@pytest.mark.parametrize("n,d", [(1, 3), (2, 5), (6, 4), (11, 7)])
def test_matches_naive_values_and_gradients(n, d, rng):
    x = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=True)
    y = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=True)
    lt = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    got = siglip_loss(x, y, lt.exp(), b)
    want = naive_siglip(x, y, lt, b)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, w in zip(torch.autograd.grad(got, (x, y, lt, b)), torch.autograd.grad(want, (x, y, lt, b))):
        torch.testing.assert_close(a, w, rtol=1e-6, atol=1e-12)


def test_explicit_labels_with_several_positives_and_unequal_sizes(rng):
    x = torch.randn(4, 6, generator=rng, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 6, generator=rng, dtype=torch.float64)
    labels = -torch.ones(4, 3, dtype=torch.float64)
    labels[0, 0] = labels[1, 0] = labels[2, 1] = labels[3, 2] = 1.0
    lt, b = torch.tensor(1.5, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    got = siglip_loss(x, y, lt.exp(), b, labels=labels)
    want = naive_siglip(x, y, lt, b, labels)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


def test_zero_logits_give_n_log_2():
    n = 5  # x and y in orthogonal subspaces: every logit is t·0 + 0 = 0
    y = torch.cat([torch.zeros(n, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)], 1)
    x = torch.cat([torch.eye(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)], 1)
    assert siglip_loss(x, y, 1.0, 0.0).item() == pytest.approx(n * math.log(2), abs=1e-12)


def test_normalisation_is_by_rows_not_pairs(rng):
    x = torch.randn(8, 4, generator=rng, dtype=torch.float64)
    y = torch.randn(8, 4, generator=rng, dtype=torch.float64)
    logits = 10.0 * F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T - 10.0
    z = 2 * torch.eye(8, dtype=torch.float64) - 1
    assert siglip_loss(x, y, 10.0, -10.0).item() == pytest.approx(
        float(F.softplus(-z * logits).sum() / 8), rel=1e-12
    )


def test_module_inits_and_logged_values():
    loss = SigLIPLoss()
    assert loss.log_scale.item() == pytest.approx(math.log(10.0))
    assert loss.bias.item() == -10.0
    assert loss.log_values() == pytest.approx({"logit_scale": 10.0, "logit_bias": -10.0})


def test_bad_input_is_a_clear_error():
    with pytest.raises(InputError, match="batch size mismatch"):
        siglip_loss(torch.randn(3, 4), torch.randn(2, 4), 10.0, -10.0)
    with pytest.raises(InputError, match="labels must have shape"):
        siglip_loss(torch.randn(3, 4), torch.randn(2, 4), 10.0, -10.0, labels=torch.ones(2, 2))
    with pytest.raises(InputError, match="non-finite"):
        siglip_loss(torch.full((2, 4), float("nan")), torch.randn(2, 4), 10.0, -10.0)
    with pytest.raises(InputError, match="empty batch"):
        siglip_loss(torch.randn(0, 4), torch.randn(0, 4), 10.0, -10.0)
