"""MV-InfoNCE, MV-DHEL, ColloSSL and TCL against naive float64 loops (values and gradients), the
spec's oracles, invariances, errors, and the modules' keys, queues and state."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.infonce import infonce_loss, ntxent_loss
from contrastkit.losses.multiview import (
    ColloSSLLoss,
    MVDHELLoss,
    MVInfoNCELoss,
    collossl_loss,
    mv_dhel_loss,
    mv_infonce_loss,
    stack_views,
)
from contrastkit.losses.tcl import TCLLoss, tcl_local_loss, tcl_loss, tcl_pool_patches, tcl_terms

F64 = torch.float64


def unit(v):
    return v / v.norm()


def e(a, b, tau):
    return torch.exp((a * b).sum() / tau)


def rand(rng, *shape):
    return torch.randn(*shape, generator=rng, dtype=F64, requires_grad=True)


def check(got, want, inputs, rtol=1e-6):
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-12)
    g1 = torch.autograd.grad(got, inputs, allow_unused=True)
    g2 = torch.autograd.grad(want, inputs, allow_unused=True)
    for a, b in zip(g1, g2):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a, b, rtol=rtol, atol=1e-12)


# --- naive oracles, written from the spec formulas -------------------------------------------


def naive_mv_infonce(views, tau):
    v, n, _ = views.shape
    z = [[unit(views[a, i]) for i in range(n)] for a in range(v)]
    total = 0.0
    for a in range(v):
        for i in range(n):
            num = sum(e(z[p][i], z[q][i], tau) for p in range(v) for q in range(v) if p != q)
            den = sum(e(z[a][i], z[w][j], tau) for w in range(v) for j in range(n) if (w, j) != (a, i))
            total = total - torch.log(num / den)
    return total / (v * n)


def naive_mv_dhel(views, tau):
    v, n, _ = views.shape
    z = [[unit(views[a, i]) for i in range(n)] for a in range(v)]
    total = 0.0
    for i in range(n):
        num = sum(e(z[p][i], z[q][i], tau) for p in range(v) for q in range(p + 1, v))
        den = 1.0
        for a in range(v):
            den = den * sum(e(z[a][i], z[a][j], tau) for j in range(n) if j != i)
        total = total - torch.log(num / den)
    return total / n


def naive_collossl(views, tau, anchor, pos, neg):
    _, n, _ = views.shape
    total = 0.0
    for i in range(n):
        a = unit(views[anchor, i])
        den = sum(e(a, unit(views[p, i]), tau) for p in pos)
        den = den + sum(e(a, unit(views[g, j]), tau) for g in neg for j in range(n) if j != i)
        for p in pos:
            total = total - torch.log(e(a, unit(views[p, i]), tau) / den) / len(pos)
    return total / n


# --- MV-InfoNCE / MV-DHEL ---------------------------------------------------------------------


@pytest.mark.parametrize("v,n,d", [(2, 2, 3), (3, 4, 5), (4, 3, 2)])
def test_mv_infonce_matches_naive(v, n, d, rng):
    views = rand(rng, v, n, d)
    tau = torch.tensor(0.3, dtype=F64, requires_grad=True)
    check(mv_infonce_loss(views, tau), naive_mv_infonce(views, tau), (views, tau))


@pytest.mark.parametrize("v,n,d", [(2, 2, 3), (3, 4, 5), (4, 3, 2)])
def test_mv_dhel_matches_naive(v, n, d, rng):
    views = rand(rng, v, n, d)
    tau = torch.tensor(0.3, dtype=F64, requires_grad=True)
    check(mv_dhel_loss(views, tau), naive_mv_dhel(views, tau), (views, tau))


def test_mv_infonce_single_sample_allowed_or_error(rng):
    views = rand(rng, 3, 1, 4)
    tau = torch.tensor(0.5, dtype=F64, requires_grad=True)
    check(mv_infonce_loss(views, tau, allow_single=True), naive_mv_infonce(views, tau), (views, tau))
    with pytest.raises(InputError, match="N=1"):
        mv_infonce_loss(views, 0.5)
    with pytest.raises(InputError, match="N >= 2"):
        mv_dhel_loss(views, 0.5)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_two_views_mv_infonce_is_ntxent_minus_log2(tau, rng):
    x, y = rand(rng, 6, 4), rand(rng, 6, 4)
    got = mv_infonce_loss(torch.stack([x, y]), tau)
    want = ntxent_loss(x, y, tau) - math.log(2)
    check(got, want, (x, y))


def test_two_views_mv_dhel_closed_form(rng):
    tau = 0.2
    x, y = rand(rng, 5, 3), rand(rng, 5, 3)
    xn, yn = F.normalize(x, dim=1), F.normalize(y, dim=1)
    off = ~torch.eye(5, dtype=torch.bool)
    lse_x = torch.stack([(xn[i] @ xn[off[i]].T / tau).logsumexp(0) for i in range(5)])
    lse_y = torch.stack([(yn[i] @ yn[off[i]].T / tau).logsumexp(0) for i in range(5)])
    want = (-(xn * yn).sum(1) / tau + lse_x + lse_y).mean()
    check(mv_dhel_loss(torch.stack([x, y]), tau), want, (x, y))


@pytest.mark.parametrize("fn", [mv_infonce_loss, mv_dhel_loss])
def test_view_and_batch_permutation_and_scale_invariance(fn, rng):
    views = torch.randn(4, 6, 5, generator=rng, dtype=F64)
    base = fn(views, 0.3)
    torch.testing.assert_close(fn(views[torch.randperm(4, generator=rng)], 0.3), base)
    torch.testing.assert_close(fn(views[:, torch.randperm(6, generator=rng)], 0.3), base)
    torch.testing.assert_close(fn(views * 3.7, 0.3), base)


def test_hand_values():
    # identical views of orthonormal samples: MV-InfoNCE rows have num = V(V−1)e^{1/τ},
    # den = (V−1)e^{1/τ} + V(N−1); V=3, N=2, τ=1: log((2e + 3)/(6e)) per row
    z = torch.eye(2, dtype=F64).expand(3, 2, 2)
    want = math.log((2 * math.e + 3) / (6 * math.e))
    assert mv_infonce_loss(z, 1.0).item() == pytest.approx(want, abs=1e-12)
    # MV-DHEL: num = 3e, each view's sum over j≠i is e^0 = 1 ⇒ −log(3e)
    assert mv_dhel_loss(z, 1.0).item() == pytest.approx(-math.log(3 * math.e), abs=1e-12)


def test_bad_views_raise_clear_errors(rng):
    with pytest.raises(InputError, match=r"shape \[V, N, d\]"):
        mv_infonce_loss(torch.randn(4, 3), 0.2)
    with pytest.raises(InputError, match="at least 2 views"):
        mv_dhel_loss(torch.randn(1, 4, 3), 0.2)
    with pytest.raises(InputError, match="empty batch"):
        mv_infonce_loss(torch.randn(2, 0, 3), 0.2)
    bad = torch.randn(2, 4, 3)
    bad[1, 2, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        mv_dhel_loss(bad, 0.2)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        mv_infonce_loss(torch.randn(2, 4, 3), 0.0)
    with pytest.raises(InputError, match="floating"):
        mv_infonce_loss(torch.ones(2, 4, 3, dtype=torch.long), 0.2)


# --- ColloSSL ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m,n,anchor,pos,neg",
    [(2, 3, 0, None, None), (3, 4, 1, None, None), (4, 3, 2, [0, 3], [1]), (4, 5, 0, [1], [1, 2, 3])],
)
def test_collossl_matches_naive(m, n, anchor, pos, neg, rng):
    views = rand(rng, m, n, 4)
    tau = torch.tensor(0.2, dtype=F64, requires_grad=True)
    others = [k for k in range(m) if k != anchor]
    got = collossl_loss(views, tau, anchor=anchor, positives=pos, negatives=neg)
    want = naive_collossl(views, tau, anchor, pos or others, neg or others)
    check(got, want, (views, tau))


def test_collossl_two_devices_is_one_directional_infonce(rng):
    x, y = rand(rng, 6, 4), rand(rng, 6, 4)
    check(collossl_loss(torch.stack([x, y]), 0.1), infonce_loss(x, y, 10.0), (x, y))
    check(collossl_loss(torch.stack([x, y]), 0.1, anchor=1), infonce_loss(y, x, 10.0), (x, y))


def test_collossl_invariances_and_single(rng):
    views = torch.randn(4, 5, 3, generator=rng, dtype=F64)
    base = collossl_loss(views, 0.2, anchor=0, positives=[1, 2], negatives=[2, 3])
    swapped = collossl_loss(views, 0.2, anchor=0, positives=[2, 1], negatives=[3, 2])
    torch.testing.assert_close(swapped, base)
    p = torch.randperm(5, generator=rng)
    torch.testing.assert_close(collossl_loss(views[:, p], 0.2, positives=[1, 2], negatives=[2, 3]), base)
    # N = 1: one positive and no negatives ⇒ exactly 0; otherwise an error
    one = torch.randn(2, 1, 3, dtype=F64)
    assert collossl_loss(one, 0.2, allow_single=True).item() == 0.0
    with pytest.raises(InputError, match="N=1"):
        collossl_loss(one, 0.2)


def test_collossl_device_errors():
    views = torch.randn(3, 4, 2)
    with pytest.raises(ConfigError, match="out of range"):
        collossl_loss(views, anchor=3)
    with pytest.raises(ConfigError, match="other than the anchor 0"):
        collossl_loss(views, positives=[0, 1])
    with pytest.raises(ConfigError, match="negatives must be distinct"):
        collossl_loss(views, negatives=[1, 1])
    with pytest.raises(ConfigError, match="at least one device"):
        collossl_loss(views, positives=[])


# --- modules ----------------------------------------------------------------------------------


def test_view_modules_read_their_keys_and_match_pure(rng):
    emb = {f"image@{v}": torch.randn(5, 4, generator=rng, dtype=F64) for v in range(3)}
    emb["text"] = torch.randn(5, 4, generator=rng, dtype=F64)
    views = torch.stack([emb[f"image@{v}"] for v in range(3)])
    loss = LOSSES.build("mv_infonce", n_views=3)
    torch.testing.assert_close(loss(emb), mv_infonce_loss(views, 0.2))
    torch.testing.assert_close(LOSSES.build("mv_dhel", n_views=3)(emb), mv_dhel_loss(views, 0.2))
    coll = LOSSES.build("collossl", n_views=3, anchor=2, positives=[0])
    torch.testing.assert_close(coll(emb), collossl_loss(views, 0.1, anchor=2, positives=[0]))
    keyed = MVInfoNCELoss(keys=["image@2", "text"], temperature=0.5)
    torch.testing.assert_close(keyed(emb), mv_infonce_loss(torch.stack([emb["image@2"], emb["text"]]), 0.5))
    assert LOSSES.build("mv_dhel").inputs == ("image@0", "image@1")


def test_view_modules_random_float32_and_half(rng):
    emb = {f"image@{v}": torch.randn(6, 8, generator=rng, requires_grad=True) for v in range(2)}
    for loss in (MVInfoNCELoss(), MVDHELLoss(), ColloSSLLoss()):
        value = loss(emb)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        (grad,) = torch.autograd.grad(value, emb["image@0"])
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    half = {k: v.detach().half() for k, v in emb.items()}
    torch.testing.assert_close(MVDHELLoss()(half), MVDHELLoss()(emb), rtol=1e-2, atol=1e-2)


def test_view_module_errors(rng):
    emb = {"image@0": torch.randn(4, 3), "image@1": torch.randn(4, 3)}
    with pytest.raises(InputError, match=r"needs embeddings \['image@2'\]"):
        MVInfoNCELoss(n_views=3)(emb)
    with pytest.raises(InputError, match="batch size mismatch: image@0 has 4 rows, image@1 has 3"):
        stack_views(["image@0", "image@1"], [torch.randn(4, 3), torch.randn(3, 3)])
    with pytest.raises(InputError, match="does not use"):
        MVDHELLoss()(emb, labels=torch.arange(4))
    with pytest.raises(ConfigError, match="n_views must be an integer >= 2"):
        MVDHELLoss(n_views=1)
    with pytest.raises(ConfigError, match="at least 2 distinct"):
        MVDHELLoss(keys=["image@0", "image@0"])
    with pytest.raises(ConfigError, match="other than the anchor"):
        ColloSSLLoss(n_views=3, positives=[0])


# --- TCL --------------------------------------------------------------------------------------


def naive_soft_ce(q, bank, q_m, alpha, tau):
    """Row by row: −Σ_j Y_j log p_j with Y = α softmax(q̂·bank/τ) + (1−α) onehot(i)."""
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        logits = torch.stack([(q[i] * b).sum() / tau for b in bank])
        with torch.no_grad():
            soft = torch.softmax(torch.stack([(q_m[i] * b).sum() / tau for b in bank]), 0)
        logp = logits - torch.logsumexp(logits, 0)
        for j in range(len(bank)):
            y = alpha * soft[j] + (1 - alpha) * (1.0 if j == i else 0.0)
            total = total - y * logp[j]
    return total / n


def naive_local(g, tokens, mask, tau):
    """Per anchor a and valid token k: −log softmax([g_a·l_ak, g_a·l_bk′ (b≠a, valid k′)])[0]."""
    n, length, _ = tokens.shape
    total = 0.0
    for a in range(n):
        negs = [
            (g[a] * tokens[b, k]).sum() / tau for b in range(n) if b != a for k in range(length) if mask[b, k]
        ]
        terms = 0.0
        for k in range(length):
            if mask[a, k]:
                logits = torch.stack([(g[a] * tokens[a, k]).sum() / tau, *negs])
                terms = terms - (logits[0] - torch.logsumexp(logits, 0))
        total = total + terms / int(mask[a].sum())
    return total / n


def naive_tcl(v, w, vm, wm, qi, qt, tau, alpha, it, tt, tmask):
    v, w, vm, wm = (F.normalize(t, dim=1) for t in (v, w, vm, wm))
    vm, wm = vm.detach(), wm.detach()
    bank_i = list(vm) + list(qi)
    bank_t = list(wm) + list(qt)
    terms = [
        naive_soft_ce(v, bank_t, vm, alpha, tau),
        naive_soft_ce(w, bank_i, wm, alpha, tau),
        naive_soft_ce(v, bank_i, vm, 0.0, tau),
        naive_soft_ce(w, bank_t, wm, 0.0, tau),
    ]
    if it is not None:
        terms += [
            naive_local(v, it, torch.ones(it.shape[:2], dtype=torch.bool), tau),
            naive_local(w, tt, tmask, tau),
        ]
    return sum(terms) / len(terms)


def tcl_batch(rng, n, k, d=4, li=3, lt=4):
    feats = [rand(rng, n, d) for _ in range(4)]
    queues = [F.normalize(torch.randn(k, d, generator=rng, dtype=F64), dim=1) for _ in range(2)]
    it = torch.randn(n, li, d, generator=rng, dtype=F64)
    tt = torch.randn(n, lt, d, generator=rng, dtype=F64)
    tmask = torch.ones(n, lt, dtype=torch.bool)
    tmask[0, 2:] = False  # sample 0 has 2 real tokens
    if n > 2:
        tmask[2, 1:] = False
    return feats, queues, it, tt, tmask


@pytest.mark.parametrize(
    "n,k,alpha,local", [(1, 3, 0.4, True), (2, 0, 0.4, True), (4, 3, 0.7, True), (3, 2, 0.0, False)]
)
def test_tcl_matches_naive(n, k, alpha, local, rng):
    (v, w, vm, wm), (qi, qt), it, tt, tmask = tcl_batch(rng, n, k)
    tau = torch.tensor(0.2, dtype=F64, requires_grad=True)
    tok = {"image_tokens": it, "text_tokens": tt, "text_mask": tmask} if local else {}
    got = tcl_loss(v, w, vm, wm, qi, qt, temperature=tau, alpha=alpha, **tok)
    want = naive_tcl(v, w, vm, wm, qi, qt, tau, alpha, *((it, tt, tmask) if local else (None, None, None)))
    check(got, want, (v, w, tau, vm, wm))  # momentum features get no gradient


def test_tcl_oracle_alpha0_empty_queue_is_clip_and_infonce(rng):
    v, w = rand(rng, 5, 4), rand(rng, 5, 4)
    tau = 0.1
    terms = tcl_terms(v, w, v.detach(), w.detach(), temperature=tau, alpha=0.0)
    torch.testing.assert_close(0.5 * (terms.i2t + terms.t2i), clip_loss(v, w, 1 / tau))
    torch.testing.assert_close(terms.i2i, infonce_loss(v, v.detach(), 1 / tau))
    torch.testing.assert_close(terms.t2t, infonce_loss(w, w.detach(), 1 / tau))
    assert terms.i2i_local is None and terms.t2t_local is None
    torch.testing.assert_close(
        tcl_loss(v, w, v, w, temperature=tau, alpha=0.0), torch.stack(terms[:4]).mean()
    )


def test_tcl_single_local_token_is_infonce(rng):
    g = F.normalize(rand(rng, 6, 4), dim=1)
    loc = F.normalize(torch.randn(6, 4, generator=rng, dtype=F64), dim=1)
    got = tcl_local_loss(g, loc[:, None], None, 0.2)
    check(got, infonce_loss(g, loc, 5.0, normalize=False), (g,))


def test_tcl_padding_contributes_exactly_zero(rng):
    g = rand(rng, 4, 3)
    tokens = torch.randn(4, 5, 3, generator=rng, dtype=F64)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    base = tcl_local_loss(g, tokens, mask, 0.3)
    (gb,) = torch.autograd.grad(base, g)
    scrambled = tokens.clone()
    scrambled[mask == 0] = 1e3 * torch.randn(int((mask == 0).sum()), 3, generator=rng, dtype=F64)
    other = tcl_local_loss(g, scrambled, mask.bool(), 0.3)
    (go,) = torch.autograd.grad(other, g)
    assert other.item() == base.item()
    torch.testing.assert_close(go, gb, rtol=0, atol=1e-15)
    check(tcl_local_loss(g, tokens, mask, 0.3), naive_local(g, tokens, mask.bool(), 0.3), (g,))


def test_tcl_pool_patches_and_errors(rng):
    tokens = torch.randn(2, 16, 3, generator=rng, dtype=F64)  # 4×4 patches, c = 2 → 2×2 tokens
    pooled = tcl_pool_patches(tokens)
    grid = tokens.reshape(2, 4, 4, 3)
    want = torch.stack([grid[:, r : r + 2, c : c + 2].mean((1, 2)) for r in (0, 2) for c in (0, 2)], 1)
    torch.testing.assert_close(pooled, want)
    assert tcl_pool_patches(torch.randn(1, 256, 2)).shape == (1, 16, 2)
    with pytest.raises(InputError, match="cannot pool 196 patch tokens"):
        tcl_pool_patches(torch.randn(1, 196, 2))  # 14×14: c = 3 but 14 // 3 = 4
    with pytest.raises(InputError, match="cannot pool 15"):
        tcl_pool_patches(torch.randn(1, 15, 2))


def test_tcl_bad_inputs(rng):
    v = torch.randn(3, 4)
    with pytest.raises(InputError, match="both image_tokens and text_tokens"):
        tcl_loss(v, v, v, v, image_tokens=torch.randn(3, 2, 4))
    with pytest.raises(InputError, match="no valid token"):
        tcl_local_loss(v, torch.randn(3, 2, 4), torch.tensor([[1, 0], [0, 0], [1, 1]]))
    with pytest.raises(InputError, match="boolean or 0/1"):
        tcl_local_loss(v, torch.randn(3, 2, 4), torch.full((3, 2), 2))
    with pytest.raises(InputError, match=r"tokens must have shape \[N=3, L, d=4\]"):
        tcl_local_loss(v, torch.randn(3, 2, 5))
    with pytest.raises(InputError, match=r"image_queue must have shape \[K, d\] with d=4"):
        tcl_loss(v, v, v, v, torch.randn(5, 3))
    with pytest.raises(InputError, match="batch size mismatch"):
        tcl_loss(v, torch.randn(2, 4), v, v)
    with pytest.raises(ConfigError, match="alpha must be in"):
        tcl_loss(v, v, v, v, alpha=1.5)


def test_tcl_module_queue_after_loss_ramp_and_clamp(rng):
    d, k = 4, 6
    loss = LOSSES.build(
        "tcl", dim=d, queue_size=k, random_init=False, local=False, alpha=0.4, alpha_warmup_steps=2
    )
    assert loss.filled.item() == 0 and loss.temperature.item() == pytest.approx(0.07)
    seen_i, seen_t = [], []
    for step in range(3):
        emb = {
            key: torch.randn(4, d, generator=rng, dtype=F64)
            for key in ("image", "text", "image:ema", "text:ema")
        }
        queue_i = torch.cat(seen_i)[-k:] if seen_i else torch.zeros(0, d, dtype=F64)
        queue_t = torch.cat(seen_t)[-k:] if seen_t else torch.zeros(0, d, dtype=F64)
        assert loss.current_alpha() == pytest.approx(0.4 * min(1.0, step / 2))
        value = loss(emb)
        # the loss used the queue as it was *before* this batch (order in the queue is irrelevant)
        want = tcl_loss(
            emb["image"], emb["text"], emb["image:ema"], emb["text:ema"],
            queue_i, queue_t, temperature=0.07, alpha=0.4 * min(1.0, step / 2),
        )  # fmt: skip
        torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=1e-6)
        seen_i.append(F.normalize(emb["image:ema"], dim=1))
        seen_t.append(F.normalize(emb["text:ema"], dim=1))
    assert loss.filled.item() == 6 and loss.ptr.item() == 12 % 6 and loss.step.item() == 3
    # ring of 6 filled by batches of 4: batch 2 went to rows 8..11 mod 6 = 2..5, the pointer is back at 0
    torch.testing.assert_close(
        loss.image_queue[2:6].double(), seen_i[2].float().double(), rtol=1e-6, atol=1e-6
    )
    loss.eval()
    loss(emb)
    assert loss.step.item() == 3 and loss.ptr.item() == 0
    with torch.no_grad():
        loss.temperature.fill_(2.0)
    loss.after_optimizer_step()
    assert loss.temperature.item() == pytest.approx(0.5)
    assert set(loss.log_values()) >= {"temperature", "tcl_alpha", "queue_filled", "tcl_i2t", "tcl_t2t"}


def test_tcl_module_local_fields_and_float32(rng):
    loss = TCLLoss(dim=8, queue_size=16)
    emb = {
        key: torch.randn(5, 8, generator=rng, requires_grad=True)
        for key in ("image", "text", "image:ema", "text:ema")
    }
    with pytest.raises(InputError, match="needs the batch fields image_tokens and text_tokens"):
        loss(emb)
    aux = {
        "image_tokens": torch.randn(5, 4, 8),
        "text_tokens": torch.randn(5, 6, 8),
        "text_mask": torch.ones(5, 6),
    }
    value = loss(emb, **aux)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    gi, gt = torch.autograd.grad(value, (emb["image"], loss.temperature))
    assert torch.isfinite(gi).all() and gi.abs().sum() > 0 and torch.isfinite(gt)
    assert "tcl_t2t_local" in loss.log_values()
    with pytest.raises(InputError, match="does not use"):
        TCLLoss(dim=8, queue_size=16, local=False)(emb, **aux)
    with pytest.raises(InputError, match=r"needs embeddings \['text:ema'\]"):
        loss({k: v for k, v in emb.items() if k != "text:ema"}, **aux)
    with pytest.raises(InputError, match="does not match the queues' dim=8"):
        TCLLoss(dim=8, queue_size=16, local=False)({k: v[:, :4] for k, v in emb.items()})
    with pytest.raises(ConfigError, match="min_temperature <= init_temperature"):
        TCLLoss(dim=8, init_temperature=1.0)
