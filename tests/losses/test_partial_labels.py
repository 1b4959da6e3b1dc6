"""The multi-focal partial-label loss against a naive float64 loop."""

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.labels import catlip_loss
from contrastkit.losses.partial_labels import class_weights, multi_focal_loss


def naive(x, t, w, b, gp, gn, cw, reduction):
    n, c = t.shape
    total, known = 0.0, 0
    for i in range(n):
        xi = x[i] / x[i].norm()
        for k in range(c):
            p = torch.sigmoid(xi @ w[k] + b[k])
            wc = 1.0 if cw is None else cw[k]
            if t[i, k] == 1:
                total = total - wc * (1 - p) ** gp * torch.log(p)
            elif t[i, k] == 0:
                total = total - wc * p**gn * torch.log(1 - p)
            if t[i, k] != -1:
                known += 1
    return total / n if reduction == "batch_mean" else total / max(known, 1)


def _data(n=5, d=4, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c, d, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(-1, 2, (n, c), generator=g).double()
    return x, w, b, t


@pytest.mark.parametrize(
    ("gp", "gn", "beta", "reduction"),
    [(2.0, 2.0, 0.0, "batch_mean"), (0.0, 4.0, 0.5, "mean"), (1.5, 0.0, 1.0, "batch_mean")],
)
def test_matches_naive_loop(gp, gn, beta, reduction):
    x, w, b, t = _data(seed=int(gp * 10 + gn))
    cw = class_weights([10.0, 3.0, 1.0], beta) if beta else None
    got = multi_focal_loss(x, t, w, b, gamma_pos=gp, gamma_neg=gn, class_weight=cw, reduction=reduction)
    want = naive(x, t, w, b, gp, gn, cw, reduction)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, c in zip(torch.autograd.grad(got, (x, w, b)), torch.autograd.grad(want, (x, w, b))):
        torch.testing.assert_close(a, c, rtol=1e-8, atol=1e-10)


def test_unknown_labels_are_masked_and_gamma_zero_is_bce():
    x, w, b, t = _data(seed=3)
    t_known = t.clamp(min=0)
    # γ = 0, no unknowns, β = 0: CatLIP's BCE (batch_mean)
    torch.testing.assert_close(
        multi_focal_loss(x, t_known, w, b, gamma_pos=0.0, gamma_neg=0.0), catlip_loss(x, t_known, w, b)
    )
    # an unknown entry's logit gets no gradient, whatever its value
    t2 = t_known.clone()
    t2[0, 1] = -1
    (gw,) = torch.autograd.grad(multi_focal_loss(x[:1], t2[:1], w, b), (b,))
    assert gw[1] == 0 and gw[0] != 0
    # all unknown: 0 (and a zero gradient)
    assert float(multi_focal_loss(x, -torch.ones_like(t), w, b, reduction="mean").detach()) == 0.0
    assert class_weights([4.0, 1.0], 0.5).tolist() == [1.0, 2.0]


def test_module_head_and_errors():
    loss = losses.build("multi_focal", gamma_pos=1.0, class_counts=[5.0, 2.0, 1.0], beta=1.0)
    x, _, _, t = _data(seed=4)
    value = loss(x.float(), targets=t)
    h = loss.head
    want = multi_focal_loss(
        x.float(),
        t,
        h.weight,
        h.bias,
        gamma_pos=1.0,
        class_weight=class_weights([5.0, 2.0, 1.0], 1.0).float(),
    )
    torch.testing.assert_close(value, want)
    with pytest.raises(InputError, match=r"1 \(positive\), 0 \(negative\) or -1 \(unknown\)"):
        loss(x.float(), targets=t * 0.5)
    with pytest.raises(InputError, match="needs the batch field targets"):
        loss(x.float())
    with pytest.raises(ConfigError, match="class_counts has 2 entries"):
        losses.build("multi_focal", num_classes=3, class_counts=[1.0, 2.0])
