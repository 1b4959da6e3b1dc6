"""L-BYOL, L-BARLOW, SimSiam and CLIP + SSL against naive float64 formulas (values and gradients),
the spec's oracles (BYOL: identical ⇒ 0, range, no gradient into targets; Barlow: whitened
orthogonal equal views ⇒ C = I ⇒ 0, per-dimension scale invariance) and the composition by name."""

import math

import pytest
import torch

import contrastkit.losses.supcon  # noqa: F401  registers "supcon" for the batch-field routing test
from contrastkit.core.errors import ConfigError, InputError, UnknownNameError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.infonce import ntxent_loss
from contrastkit.losses.ssl import (
    BarlowTwinsLoss,
    BYOLLoss,
    CLIPPlusSSLLoss,
    SimSiamLoss,
    barlow_loss,
    byol_loss,
    simsiam_loss,
)

F64 = torch.float64
VIEWS = ("image@0", "image@1", "image@0:ema", "image@1:ema")


def rand(rng, *shape):
    return torch.randn(*shape, generator=rng, dtype=F64, requires_grad=True)


def cos(a, b):
    return (a @ b) / (a.norm() * b.norm())


def check(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


# -------------------------------------------------------------------------------------------- BYOL


def naive_byol(p1, p2, z1, z2):
    n = p1.shape[0]
    total = 0.0
    for i in range(n):
        total = total + (2 - 2 * cos(p1[i], z2[i].detach())) + (2 - 2 * cos(p2[i], z1[i].detach()))
    return total / n


@pytest.mark.parametrize("n,d", [(1, 3), (2, 4), (5, 6)])
def test_byol_matches_naive(n, d, rng):
    p1, p2, z1, z2 = (rand(rng, n, d) for _ in range(4))
    check(byol_loss(p1, p2, z1, z2), naive_byol(p1, p2, z1, z2), (p1, p2))
    assert torch.autograd.grad(byol_loss(p1, p2, z1, z2), (z1, z2), allow_unused=True) == (None, None)


def test_byol_oracles_identical_zero_antipodal_max_and_range(rng):
    z1, z2 = rand(rng, 4, 5), rand(rng, 4, 5)
    assert byol_loss(3 * z2, 0.5 * z1, z1, z2).item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(-z2, -z1, z1, z2).item() == pytest.approx(8.0, rel=1e-12)  # each term 4
    for _ in range(5):
        p1, p2, z1, z2 = (rand(rng, 6, 3) for _ in range(4))
        one_term = byol_loss(p1, p1, z2, z2) / 2  # = mean_i (2 − 2cos(p1_i, z2_i))
        assert 0.0 <= one_term.item() <= 4.0
        assert 0.0 <= byol_loss(p1, p2, z1, z2).item() <= 8.0


def test_byol_no_gradient_into_target_parameters(rng):
    online, target = torch.nn.Linear(5, 4).double(), torch.nn.Linear(5, 4).double()
    v1, v2 = torch.randn(3, 5, generator=rng, dtype=F64), torch.randn(3, 5, generator=rng, dtype=F64)
    byol_loss(online(v1), online(v2), target(v1), target(v2)).backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in online.parameters())


def test_byol_unnormalised_is_squared_distance_and_invariances(rng):
    p1, p2, z1, z2 = (rand(rng, 4, 3) for _ in range(4))
    want = ((p1 - z2).square().sum(1) + (p2 - z1).square().sum(1)).mean()
    check(byol_loss(p1, p2, z1, z2, normalize=False), want, (p1, p2))
    base = byol_loss(p1, p2, z1, z2)
    perm = torch.randperm(4, generator=rng)
    torch.testing.assert_close(byol_loss(p1[perm], p2[perm], z1[perm], z2[perm]), base)
    torch.testing.assert_close(byol_loss(p2, p1, z2, z1), base)
    torch.testing.assert_close(byol_loss(2 * p1, p2, z1, 7 * z2), base)


def test_byol_module_pairs_prediction_of_one_view_with_target_of_the_other(rng):
    emb = {k: rand(rng, 3, 4) for k in VIEWS}
    got = BYOLLoss()(emb)
    want = naive_byol(emb["image@0"], emb["image@1"], emb["image@0:ema"], emb["image@1:ema"])
    check(got, want, (emb["image@0"], emb["image@1"]))
    custom = BYOLLoss(predictions=("a", "b"), targets=("a:ema", "b:ema"))
    assert custom.inputs == ("a", "b", "a:ema", "b:ema")
    with pytest.raises(ConfigError, match="two key names"):
        BYOLLoss(predictions=("image@0",))
    with pytest.raises(InputError, match=r"needs embeddings \['image@1:ema'\]"):
        BYOLLoss()({k: v for k, v in emb.items() if k != "image@1:ema"})
    with pytest.raises(InputError, match="batch size mismatch"):
        byol_loss(emb["image@0"], emb["image@1"][:2], emb["image@0:ema"], emb["image@1:ema"])


# ----------------------------------------------------------------------------------------- SimSiam


def naive_simsiam(p1, p2, z1, z2):
    n = p1.shape[0]
    d12 = -sum(cos(p1[i], z2[i].detach()) for i in range(n)) / n
    d21 = -sum(cos(p2[i], z1[i].detach()) for i in range(n)) / n
    return 0.5 * d12 + 0.5 * d21


@pytest.mark.parametrize("n,d", [(1, 3), (2, 4), (6, 5)])
def test_simsiam_matches_naive(n, d, rng):
    p1, p2, z1, z2 = (rand(rng, n, d) for _ in range(4))
    check(simsiam_loss(p1, p2, z1, z2), naive_simsiam(p1, p2, z1, z2), (p1, p2))
    assert torch.autograd.grad(simsiam_loss(p1, p2, z1, z2), (z1, z2), allow_unused=True) == (None, None)
    emb = dict(zip(VIEWS, (p1, p2, z1, z2)))
    assert SimSiamLoss()(emb).item() == simsiam_loss(p1, p2, z1, z2).item()


def test_simsiam_limits_and_relation_to_byol(rng):
    p1, p2, z1, z2 = (rand(rng, 5, 4) for _ in range(4))
    assert simsiam_loss(z2, z1, z1, z2).item() == pytest.approx(-1.0, rel=1e-12)
    assert simsiam_loss(-z2, -z1, z1, z2).item() == pytest.approx(1.0, rel=1e-12)
    # byol = 4 − 2(cos12 + cos21) = 4 + 4·simsiam
    torch.testing.assert_close(byol_loss(p1, p2, z1, z2), 4 + 4 * simsiam_loss(p1, p2, z1, z2))
    custom = SimSiamLoss(projections=("image@0:proj", "image@1:proj"))
    assert custom.inputs == ("image@0", "image@1", "image@0:proj", "image@1:proj")


# ------------------------------------------------------------------------------------ Barlow Twins


def naive_barlow(a, b, lambd, eps):
    n, d = a.shape

    def standardise(z):
        cols = []
        for j in range(d):
            mean = sum(z[i, j] for i in range(n)) / n
            var = sum((z[i, j] - mean) ** 2 for i in range(n)) / n  # biased
            cols.append(torch.stack([(z[i, j] - mean) / torch.sqrt(var + eps) for i in range(n)]))
        return cols

    sa, sb = standardise(a), standardise(b)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(sa[i][m] * sb[j][m] for m in range(n)) / n
            loss = loss + ((1 - c) ** 2 if i == j else lambd * c**2)
    return loss


@pytest.mark.parametrize("n,d", [(2, 1), (3, 3), (6, 4)])
@pytest.mark.parametrize("lambd", [5e-3, 0.0051, 0.5])
def test_barlow_matches_naive(n, d, lambd, rng):
    x, y = rand(rng, n, d), rand(rng, n, d)
    check(barlow_loss(x, y, lambd=lambd), naive_barlow(x, y, lambd, 1e-5), (x, y))


def test_barlow_whitened_orthogonal_equal_views_give_identity_and_zero(rng):
    n, d = 10, 4
    centred = torch.randn(n, d, generator=rng, dtype=F64)
    centred = centred - centred.mean(0)
    z = torch.linalg.qr(centred).Q * math.sqrt(n)  # zero-mean orthogonal columns, biased variance 1
    torch.testing.assert_close(z.T @ z / n, torch.eye(d, dtype=F64))
    assert barlow_loss(z, z, eps=0.0).item() == pytest.approx(0.0, abs=1e-20)
    # with the default eps, C = I/(1 + eps) exactly: L = d · (1 − 1/(1+eps))²
    want = d * (1 - 1 / (1 + 1e-5)) ** 2
    assert barlow_loss(z, z).item() == pytest.approx(want, rel=1e-6)


def test_barlow_hand_value_and_invariances(rng):
    # N = 2, D = 1: standardised values are ±1, so C = ±1 and L = 0 or 4
    a = torch.tensor([[1.0], [3.0]], dtype=F64)
    assert barlow_loss(a, a, eps=0.0).item() == pytest.approx(0.0, abs=1e-15)
    assert barlow_loss(a, -a, eps=0.0).item() == pytest.approx(4.0, rel=1e-15)
    x, y = rand(rng, 7, 3), rand(rng, 7, 3)
    base = barlow_loss(x, y, eps=0.0)
    scale = torch.tensor([0.1, 5.0, 2.0], dtype=F64)  # per-dimension positive scale and any shift
    torch.testing.assert_close(barlow_loss(x * scale + 3.0, y * scale.flip(0) - 1.0, eps=0.0), base)
    perm = torch.randperm(7, generator=rng)
    torch.testing.assert_close(barlow_loss(x[perm], y[perm], eps=0.0), base)
    dims = torch.tensor([2, 0, 1])
    torch.testing.assert_close(barlow_loss(x[:, dims], y[:, dims], eps=0.0), base)
    torch.testing.assert_close(barlow_loss(y, x, eps=0.0), base)  # C ↦ Cᵀ


def test_barlow_module_and_errors(rng):
    x, y = rand(rng, 4, 3), rand(rng, 4, 3)
    assert BarlowTwinsLoss(lambd=0.0051)(x, y).item() == barlow_loss(x, y, lambd=0.0051).item()
    fn, kw = BarlowTwinsLoss().pure()
    assert fn is barlow_loss and kw == {"lambd": 5e-3, "eps": 1e-5}
    with pytest.raises(InputError, match="needs N >= 2"):
        barlow_loss(x[:1], y[:1])
    with pytest.raises(InputError, match="embedding dimension mismatch"):
        barlow_loss(x, y[:, :2])
    with pytest.raises(InputError, match="non-finite"):
        barlow_loss(x.detach().clone().fill_(float("inf")), y)
    with pytest.raises(ConfigError, match="lambd"):
        barlow_loss(x, y, lambd=-1.0)
    with pytest.raises(ConfigError, match="lambd and eps"):
        BarlowTwinsLoss(eps=-1.0)


# ------------------------------------------------------------------------------------ CLIP + SSL


def batch(rng, n=5, d=4):
    return {k: rand(rng, n, d) for k in (*VIEWS, "text")}


@pytest.mark.parametrize("ssl", ["ntxent", "barlow", "byol", "simsiam"])
def test_clip_plus_ssl_is_the_weighted_sum_of_its_terms(ssl, rng):
    emb = batch(rng)
    loss = CLIPPlusSSLLoss(ssl=ssl, ssl_weight=0.3, contrastive_params={"init_temperature": 0.1}).double()
    got = loss(emb)
    scale = loss.terms["image_text"].log_scale.exp()
    v0, v1, e0, e1 = (emb[k] for k in VIEWS)
    ssl_value = {
        "ntxent": lambda: ntxent_loss(v0, v1, 0.1),
        "barlow": lambda: barlow_loss(v0, v1),
        "byol": lambda: naive_byol(v0, v1, e0, e1),
        "simsiam": lambda: naive_simsiam(v0, v1, e0, e1),
    }[ssl]()
    want = clip_loss(emb["image@0"], emb["text"], scale) + 0.3 * ssl_value
    inputs = (v0, v1, emb["text"], loss.terms["image_text"].log_scale)
    check(got, want, inputs)
    logs = loss.log_values()
    assert logs[f"loss/ssl_{ssl}"] == pytest.approx(float(ssl_value.detach()), rel=1e-9)
    assert logs["loss/clip"] == pytest.approx(
        float(clip_loss(emb["image@0"], emb["text"], scale).detach()), rel=1e-9
    )
    assert logs["clip/logit_scale"] == pytest.approx(10.0)


def test_clip_plus_ssl_keys_weights_and_sub_loss_state(rng):
    emb = batch(rng)
    loss = CLIPPlusSSLLoss(ssl="moco3", image_text_weight=0.5, ssl_params={"temperature": 0.2}).double()
    assert loss.inputs == ("image@0", "text", "image@1", "image@0:ema", "image@1:ema")
    scale = loss.terms["image_text"].log_scale.exp()
    v0, v1, e0, e1 = (emb[k] for k in VIEWS)
    from contrastkit.losses.momentum import moco3_loss

    want = 0.5 * clip_loss(v0, emb["text"], scale) + moco3_loss(v0, v1, e0, e1, temperature=0.2)
    torch.testing.assert_close(loss(emb), want)
    custom = CLIPPlusSSLLoss(ssl="barlow", image_text=("image", "text"), views=("image@1", "image@2"))
    assert custom.inputs == ("image", "text", "image@1", "image@2")
    with torch.no_grad():  # the contrastive term's clamp runs through the composite
        loss.terms["image_text"].log_scale.fill_(10.0)
    loss.after_optimizer_step()
    assert loss.terms["image_text"].log_scale.item() == pytest.approx(math.log(100.0))


def test_clip_plus_ssl_routes_batch_fields_and_errors(rng):
    emb = batch(rng, n=4)
    labels = torch.tensor([0, 1, 0, 2])
    loss = CLIPPlusSSLLoss(ssl="supcon").double()
    assert loss.accepts == frozenset({"labels", "pair_weights"})
    torch.testing.assert_close(
        loss(emb, labels=labels),
        loss.terms["image_text"](emb["image@0"], emb["text"])
        + loss.terms["ssl"](emb["image@0"], emb["image@1"], labels=labels),
    )
    with pytest.raises(InputError, match="does not use"):
        CLIPPlusSSLLoss()(emb, labels=labels)
    with pytest.raises(InputError, match=r"needs embeddings \['text'\]"):
        CLIPPlusSSLLoss()({k: v for k, v in emb.items() if k != "text"})
    with pytest.raises(UnknownNameError, match="unknown loss 'nope'"):
        CLIPPlusSSLLoss(ssl="nope")
    with pytest.raises(ConfigError, match="must be a pair loss"):
        CLIPPlusSSLLoss(contrastive="byol")
    with pytest.raises(ConfigError, match="unknown parameter"):
        CLIPPlusSSLLoss(ssl="byol", ssl_params={"temperature": 0.1})
    with pytest.raises(ConfigError, match="two key names"):
        CLIPPlusSSLLoss(views=("image@0",))


# -------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["byol", "simsiam", "barlow", "clip_plus_ssl"])
def test_registered_and_runs_in_float32(name, rng):
    loss = LOSSES.build(name)
    emb = {k: torch.randn(6, 8, generator=rng) for k in (*VIEWS, "text")}
    value = loss(emb["image@0"], emb["image@1"]) if name == "barlow" else loss(emb)
    assert value.dtype == torch.float32 and value.ndim == 0 and torch.isfinite(value)
    half = {k: v.half() for k, v in emb.items()}
    value16 = loss(half["image@0"], half["image@1"]) if name == "barlow" else loss(half)
    assert value16.dtype == torch.float32
    torch.testing.assert_close(value16, value, rtol=2e-2, atol=2e-2)


def test_loss_owned_predictor_is_applied_to_each_online_view_and_trains():
    from contrastkit.losses.ssl import BYOLLoss, SimSiamLoss, byol_loss, simsiam_loss

    g = torch.Generator().manual_seed(3)
    emb = {k: torch.randn(5, 4, generator=g, dtype=torch.float64) for k in ("a", "b", "a:ema", "b:ema")}
    for cls, fn, kw in ((BYOLLoss, byol_loss, "targets"), (SimSiamLoss, simsiam_loss, "projections")):
        loss = cls(("a", "b"), **{kw: ("a:ema", "b:ema")}, predictor_hidden=6, dim=4).double()
        q1, q2 = loss.predictor(emb["a"]), loss.predictor(emb["b"])
        want = fn(q1, q2, emb["a:ema"], emb["b:ema"])
        got = loss(emb)
        assert torch.allclose(got, want, atol=1e-12)
        got.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.predictor.parameters())
    with pytest.raises(ConfigError, match="needs dim"):
        BYOLLoss(predictor_hidden=8)
