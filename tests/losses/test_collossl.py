"""ColloSSL with MMD device selection (``collossl_mmd``) against naive float64 loops: the RBF MMD,
the device choice, and the weighted multi-view contrastive loss (values and gradients)."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.collossl import (
    ColloSSLMMDLoss,
    DeviceChoice,
    choose_devices,
    collossl_mmd_loss,
    device_mmd,
    median_bandwidth,
    multiview_contrastive_loss,
    rbf_mmd2,
    select_devices,
    split_devices,
)
from contrastkit.losses.infonce import infonce_loss
from contrastkit.losses.multiview import collossl_loss

F64 = torch.float64


def rand(rng, *shape, grad=True):
    return torch.randn(*shape, generator=rng, dtype=F64, requires_grad=grad)


def check(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# --- naive oracles, written from the module docstring's formulas -------------------------------


def naive_loss(views, tau, anchor, pos, neg, w):
    """ℓ_i = −(1/|P|) Σ_p log(e(a_i,p_i) / [Σ_p′ e(a_i,p′_i) + Σ_g w_g Σ_{j≠i} e(a_i,g_j)]), mean_i."""
    _, n, _ = views.shape
    z = views / views.norm(dim=-1, keepdim=True)

    def e(u, v):
        return torch.exp((u * v).sum() / tau)

    total = 0.0
    for i in range(n):
        a = z[anchor, i]
        den = sum(e(a, z[p, i]) for p in pos)
        for g, wg in zip(neg, w):
            for j in range(n):
                if j != i:
                    den = den + wg * e(a, z[g, j])
        total = total - sum(torch.log(e(a, z[p, i]) / den) for p in pos) / len(pos)
    return total / n


def naive_mmd(x, y, sigma):
    def k(u, v):
        return math.exp(-float(((u - v) ** 2).sum()) / (2 * sigma**2))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n)) / n**2
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m)) / m**2
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


# --- the weighted multi-view contrastive loss -------------------------------------------------


@pytest.mark.parametrize(
    "m, n, anchor, pos, neg, w",
    [
        (3, 4, 0, (1,), (2,), (1.0,)),
        (4, 5, 1, (0,), (2, 3), (0.4, 1.6)),
        (4, 3, 3, (0, 2), (1,), (1.0,)),
        (3, 6, 2, (0,), (0, 1), (1.3, 0.7)),  # negatives "all": the positive device at other times too
        (2, 2, 0, (1,), (1,), (1.0,)),
    ],
)
def test_loss_matches_naive_loop(m, n, anchor, pos, neg, w, rng):
    views = rand(rng, m, n, 5)
    choice = DeviceChoice(anchor, pos, neg, w, (0.0,) * m)
    got = multiview_contrastive_loss(views, 0.3, choice)
    check(got, naive_loss(views, 0.3, anchor, pos, neg, w), (views,))


def test_loss_gradcheck_including_temperature(rng):
    views = rand(rng, 3, 4, 3)
    tau = torch.tensor(0.5, dtype=F64, requires_grad=True)
    choice = DeviceChoice(0, (2,), (1,), (1.0,), (0.0,) * 3)
    assert torch.autograd.gradcheck(lambda v, t: multiview_contrastive_loss(v, t, choice), (views, tau))


def test_uniform_weights_equal_the_hand_set_collossl(rng):
    views = rand(rng, 4, 5, 6)
    choice = DeviceChoice(1, (2,), (0, 3), (1.0, 1.0), (0.0,) * 4)
    want = collossl_loss(views, 0.2, anchor=1, positives=[2], negatives=[0, 3])
    check(multiview_contrastive_loss(views, 0.2, choice), want, (views,))


def test_two_devices_is_one_directional_infonce(rng):
    x, y = rand(rng, 5, 4), rand(rng, 5, 4)
    got = collossl_mmd_loss(torch.stack([x, y]), None, 0.1, negatives="all")
    check(got, infonce_loss(x, y, 10.0), (x, y))


def test_hand_value_weights_scale_the_negatives():
    # a_i = p_i = e_i, g_j = e_{j+1 mod 3}: for each i the other times j ≠ i hold one g_j = a_i
    # (j = i − 1) and one orthogonal g_j, so with τ = 1: ℓ = log(e + w(e + 1)) − 1
    eye = torch.eye(3, dtype=F64)
    views = torch.stack([eye, eye, eye[[1, 2, 0]]])
    choice = DeviceChoice(0, (1,), (2,), (0.5,), (0.0,) * 3)
    got = multiview_contrastive_loss(views, 1.0, choice)
    want = math.log(math.e + 0.5 * (math.e + 1.0)) - 1.0
    assert abs(float(got) - want) < 1e-12


def test_time_permutation_invariance_and_single(rng):
    views = rand(rng, 3, 6, 4, grad=False)
    choice = DeviceChoice(0, (1,), (2,), (1.0,), (0.0,) * 3)
    perm = torch.randperm(6, generator=rng)
    base = multiview_contrastive_loss(views, 0.2, choice)
    torch.testing.assert_close(multiview_contrastive_loss(views[:, perm], 0.2, choice), base)
    one = views[:, :1]
    assert float(multiview_contrastive_loss(one, 0.2, choice, allow_single=True)) == 0.0
    with pytest.raises(InputError, match="N=1"):
        multiview_contrastive_loss(one, 0.2, choice)


# --- MMD and device selection -----------------------------------------------------------------


def test_rbf_mmd_matches_naive_double_loop(rng):
    x, y = rand(rng, 5, 3, grad=False), rand(rng, 4, 3, grad=False) + 0.7
    for sigma in (0.5, 1.0, 3.0):
        assert abs(float(rbf_mmd2(x, y, sigma)) - naive_mmd(x, y, sigma)) < 1e-12
    assert float(rbf_mmd2(x, x, 1.0)) == 0.0


def test_median_bandwidth_and_device_mmd(rng):
    a, b = rand(rng, 4, 2, 3, grad=False), rand(rng, 4, 2, 3, grad=False)
    rows = torch.cat([a.reshape(4, -1), b.reshape(4, -1)])
    dists = [float((rows[i] - rows[j]).norm()) for i in range(8) for j in range(8) if i != j]
    sigma = median_bandwidth([a, b])
    assert abs(sigma - sorted(dists)[(len(dists) - 1) // 2]) < 1e-12  # the lower median, as torch
    m = device_mmd([a, b, a])
    want = math.sqrt(naive_mmd(a.reshape(4, -1), b.reshape(4, -1), sigma))
    assert abs(float(m[0, 1]) - want) < 1e-12 and float(m[0, 2]) == 0.0
    torch.testing.assert_close(m, m.T)
    assert torch.all(m.diagonal() == 0)


def test_selection_picks_the_closest_device_and_weights_inverse_mmd(rng):
    base = rand(rng, 16, 3, 8, grad=False)
    data = [base, base + 0.05 * rand(rng, 16, 3, 8, grad=False), 3 * base + 2, base.flip(-1) + 1]
    mmd = device_mmd(data, bandwidth=2.0)
    c = select_devices(mmd, anchor=0)
    assert c.positives == (1,) and c.negatives == (2, 3)
    w2, w3 = c.weights
    assert abs((w2 + w3) / 2 - 1) < 1e-12 and abs(w2 / w3 - float(mmd[0, 3] / mmd[0, 2])) < 1e-9
    assert select_devices(mmd, 0, weighting="uniform").weights == (1.0, 1.0)
    assert select_devices(mmd, 0, negatives="all").negatives == (1, 2, 3)
    two = select_devices(mmd, 0, num_positives=2, negatives="all")
    closest = sorted((1, 2, 3), key=lambda d: float(mmd[0, d]))[:2]
    assert two.positives == tuple(sorted(closest)) and two.negatives == (1, 2, 3)


def test_selection_errors():
    mmd = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ConfigError, match="negatives: all"):
        select_devices(mmd, 0)  # two devices leave no 'rest'
    with pytest.raises(ConfigError, match="anchor device 2"):
        select_devices(mmd, 2, negatives="all")
    with pytest.raises(ConfigError, match="num_positives"):
        select_devices(mmd, 0, num_positives=2, negatives="all")
    with pytest.raises(InputError, match="mmd_on='embeddings'"):
        device_mmd([torch.zeros(3, 2, 5), torch.zeros(3, 3, 5)])


def test_full_loss_is_the_choice_then_the_loss_and_all_anchors_average(rng):
    views = rand(rng, 3, 6, 4)
    data = [rand(rng, 6, 2, 5, grad=False) for _ in range(3)]
    choices = choose_devices(views, data, anchor="all", bandwidth=1.5)
    assert [c.anchor for c in choices] == [0, 1, 2]
    want = sum(naive_loss(views, 0.1, c.anchor, c.positives, c.negatives, c.weights) for c in choices) / 3
    check(collossl_mmd_loss(views, data, 0.1, anchor="all", bandwidth=1.5), want, (views,))


# --- the registered module --------------------------------------------------------------------


def test_module_reads_device_embeddings_and_the_series_field(rng):
    n, devices = 6, [[0, 1], [2, 3], [4, 5]]
    z = rand(rng, n, 3, 8)
    series = rand(rng, n, 6, 10, grad=False)
    loss = LOSSES.build("collossl_mmd", devices=devices, temperature=0.2, bandwidth=2.0)
    got = loss({"series": z}, series=series)
    data = split_devices(series, devices)
    check(got, collossl_mmd_loss(z.transpose(0, 1), data, 0.2, bandwidth=2.0), (z,))
    choice = choose_devices(z.transpose(0, 1), data, bandwidth=2.0)[0]
    logged = loss.log_values()
    assert logged["collossl_positive"] == choice.positives[0]
    assert logged["collossl_mmd"] == choice.mmd[choice.positives[0]]
    emb_only = ColloSSLMMDLoss(mmd_on="embeddings", negatives="all")
    torch.testing.assert_close(
        emb_only({"series": z}), collossl_mmd_loss(z.transpose(0, 1), None, negatives="all")
    )


def test_module_errors(rng):
    z = rand(rng, 4, 3, 8)
    with pytest.raises(InputError, match="batch field 'series'"):
        ColloSSLMMDLoss()({"series": z})
    with pytest.raises(InputError, match=r"\[N, D, d\]"):
        ColloSSLMMDLoss(mmd_on="embeddings")({"series": z[:, 0]})
    with pytest.raises(InputError, match="does not use"):
        ColloSSLMMDLoss(mmd_on="embeddings")({"series": z}, labels=torch.zeros(4))
    with pytest.raises(InputError, match="2 devices in params.devices, 3"):
        ColloSSLMMDLoss(devices=[[0], [1]])({"series": z}, series=torch.zeros(4, 2, 5))
    with pytest.raises(ConfigError, match="distinct channel"):
        ColloSSLMMDLoss(devices=[[0, 1], [1]])
    with pytest.raises(ConfigError):
        LOSSES.build("collossl_mmd", mmd_on="pixels")


def test_trains_end_to_end_with_the_device_tower(rng):
    from contrastkit.models.dual_encoder import ModelConfig, TowerConfig, build_model

    devices = [[0, 1, 2], [3, 4, 5]]
    cfg = ModelConfig(towers={"series": TowerConfig("series_devices", {"devices": devices})}, embed_dim=8)
    model = build_model(cfg)
    series = torch.randn(6, 6, 20, generator=rng)
    loss = LOSSES.build("collossl_mmd", devices=devices, negatives="all")
    emb = model({"series": series})
    value = loss(emb, series=series)
    z = emb["series"].detach().double().requires_grad_()
    want = naive_loss(z.transpose(0, 1), 0.1, 0, (1,), (1,), (1.0,))  # two devices: 1 is both
    assert abs(float(value.detach()) - float(want.detach())) < 1e-5
    value.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
