"""MultiModN (spec M-MULTIMODN) against a loop written from the reference's training step (batch
skip on NaN, E zero-initialised, sums over fixed denominators), the spec's two oracles, and the
per-sample policy = the mean over rows of the reference run on one-row batches."""

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.multimodn import MultiModN

F64 = torch.float64
MODS = ("attributes", "image", "text")


def model(**kw):
    torch.manual_seed(0)
    return MultiModN(MODS, 5, kw.pop("n_classes", 3), state_size=6, hidden=(4,), **kw).double()


def reference_loss(net, emb, targets):
    """The reference's train step: skip an encoder if its input has any NaN, E[k] = CE of the batch."""
    targets = targets[:, None] if targets.ndim == 1 else targets
    n_dec, n_enc = len(net.decoders), len(MODS)
    err = torch.zeros(n_enc + 1, n_dec, dtype=F64)
    change = torch.zeros(n_enc, dtype=F64)
    state = net.init_state.expand(targets.shape[0], -1)
    for t, dec in enumerate(net.decoders):
        err[0, t] = F.cross_entropy(dec(state), targets[:, t])
    for m, name in enumerate(MODS):
        x = emb[name]
        if x.isnan().any():
            continue
        old = state
        state = net.encoders[name](state, F.normalize(x, dim=-1))
        change[m] = ((state - old) ** 2).mean()
        for t, dec in enumerate(net.decoders):
            err[m + 1, t] = F.cross_entropy(dec(state), targets[:, t])
    return (
        net.err_penalty * err.sum() / (n_dec * (n_enc + 1)) + net.state_change_penalty * change.sum() / n_enc
    )


def emb_batch(g, n=5):
    return {m: torch.randn(n, 5, generator=g, dtype=F64) for m in MODS}


@pytest.mark.parametrize("policy", ["batch_skip", "per_sample"])
def test_complete_batches_match_the_reference_loop(policy, rng):
    net = model(missing_policy=policy, err_penalty=0.7, state_change_penalty=3.0, n_classes=[3, 2])
    emb = emb_batch(rng)
    y = torch.stack([torch.randint(0, 3, (5,), generator=rng), torch.randint(0, 2, (5,), generator=rng)], 1)
    got, want = net.loss(emb, None, y), reference_loss(net, emb, y)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    params = list(net.parameters())
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_batch_skip_reproduces_the_reference_nan_skip(rng):
    net = model(missing_policy="batch_skip", state_change_penalty=1.0)
    emb = emb_batch(rng)
    emb["image"][2, 0] = float("nan")  # one row: the whole batch skips the image encoder
    y = torch.randint(0, 3, (5,), generator=rng)
    torch.testing.assert_close(net.loss(emb, None, y), reference_loss(net, emb, y), rtol=1e-12, atol=1e-14)
    _, err, change = net.loss_terms(emb, None, y)
    assert torch.equal(err[2], torch.zeros(1, dtype=F64)) and change[1].item() == 0.0


@pytest.mark.parametrize("policy", ["batch_skip", "per_sample"])
def test_all_nan_modality_leaves_the_state_unchanged(policy, rng):
    net = model(missing_policy=policy)
    emb = emb_batch(rng)
    emb["text"] = torch.full_like(emb["text"], float("nan"))
    logits, used, _, state = net.steps(emb)
    assert logits[3] is None and not used[3].any()  # text: E row 3 unused
    without = {m: v for m, v in emb.items()}
    _, _, _, state_before = net.steps(without, {"text": torch.zeros(5, dtype=torch.bool)})
    assert torch.equal(state, state_before)
    _, err, _ = net.loss_terms(emb, None, torch.zeros(5, dtype=torch.long))
    assert err[3].item() == 0.0


def test_one_encoder_without_state_penalty_is_the_mean_of_two_errors(rng):
    torch.manual_seed(0)
    net = MultiModN(("image",), 5, [3, 4], state_size=6, err_penalty=2.5).double()
    x = torch.randn(7, 5, generator=rng, dtype=F64)
    y = torch.stack([torch.randint(0, 3, (7,), generator=rng), torch.randint(0, 4, (7,), generator=rng)], 1)
    s0 = net.init_state.expand(7, -1)
    s1 = net.encoders["image"](s0, F.normalize(x, dim=-1))
    want = 0
    for t, dec in enumerate(net.decoders):  # per decoder err_penalty·(E[0] + E[1])/2, averaged
        want = want + 2.5 * (F.cross_entropy(dec(s0), y[:, t]) + F.cross_entropy(dec(s1), y[:, t])) / 2
    torch.testing.assert_close(net.loss({"image": x}, None, y), want / 2, rtol=1e-12, atol=1e-14)


def test_per_sample_is_the_mean_of_the_reference_on_single_rows(rng):
    net = model(state_change_penalty=5.0)
    emb = emb_batch(rng, n=6)
    present = {
        "attributes": torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool),
        "image": torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool),
        "text": torch.tensor([0, 1, 1, 1, 1, 1], dtype=torch.bool),
    }
    y = torch.randint(0, 3, (6,), generator=rng)
    got = net.loss(emb, present, y)
    rows = []
    for i in range(6):
        one = {m: v[i : i + 1].clone() for m, v in emb.items()}
        for m in MODS:
            if not present[m][i]:
                one[m][:] = float("nan")
        rows.append(reference_loss(net, one, y[i : i + 1]))
    want = torch.stack(rows).mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    params = list(net.parameters())
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # the prediction skips missing rows: a row's logits do not depend on its missing values
    scrambled = {m: torch.where(present[m][:, None], v, torch.randn_like(v)) for m, v in emb.items()}
    torch.testing.assert_close(net(scrambled, present), net(emb, present), rtol=0, atol=0)


def test_shuffle_draws_the_order_from_the_generator(rng):
    net = model(shuffle=True)
    emb = emb_batch(rng)
    y = torch.randint(0, 3, (5,), generator=rng)
    a = net.loss(emb, None, y, generator=torch.Generator().manual_seed(4))
    b = net.loss(emb, None, y, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    net.eval()  # fixed order outside training
    torch.testing.assert_close(net.loss(emb, None, y), model().loss(emb, None, y), rtol=0, atol=0)


def test_config_and_input_errors(rng):
    with pytest.raises(ConfigError, match="missing_policy"):
        model(missing_policy="drop")
    with pytest.raises(InputError, match="labels have 2 task"):
        model().loss(emb_batch(rng), None, torch.zeros(5, 2, dtype=torch.long))
