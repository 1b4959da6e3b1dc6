"""GRAM and pairwise-anchor CLIP against naive float64 loops (values and gradients), the spec's
volume oracles (k = 2, orthonormal, repeated vector, permutations, QR), and the modules' keys."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.multimodal import (
    GRAMLoss,
    PairwiseCLIPLoss,
    gram_loss,
    gram_volume,
    modality_keys,
    pairwise_clip_loss,
)

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:gram_loss with k=2")


def unit(v):
    return v / v.norm()


def rand(rng, *shape):
    return torch.randn(*shape, generator=rng, dtype=F64, requires_grad=True)


def check(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def leibniz_det(g):
    """det by the permutation expansion (independent of torch.linalg)."""
    k = g.shape[0]
    total = 0.0
    for perm in itertools.permutations(range(k)):
        inversions = sum(perm[a] > perm[b] for a in range(k) for b in range(a + 1, k))
        term = (-1.0) ** inversions
        for r in range(k):
            term = term * g[r, perm[r]]
        total = total + term
    return total


def naive_volume(vectors, eps=1e-12):
    a = torch.stack(vectors, dim=1)  # d × k
    return torch.clamp(leibniz_det(a.T @ a), min=eps).sqrt()


def naive_ce_ls(logits, target, eps_ls):
    logp = logits - torch.logsumexp(logits, 0)
    return -((1 - eps_ls) * logp[target] + eps_ls * logp.mean())


def naive_gram(mods, tau, ls=0.1):
    n = mods[0].shape[0]
    vol = [
        [naive_volume([unit(mods[0][i])] + [unit(m[j]) for m in mods[1:]]) for j in range(n)]
        for i in range(n)
    ]
    rows = sum(naive_ce_ls(torch.stack([-vol[i][j] / tau for j in range(n)]), i, ls) for i in range(n))
    cols = sum(naive_ce_ls(torch.stack([-vol[i][j] / tau for i in range(n)]), j, ls) for j in range(n))
    return 0.5 * (rows / n + cols / n)


def naive_clip(x, y, s):
    n = x.shape[0]
    logits = [[s * (unit(x[i]) * unit(y[j])).sum() for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        total = total - (logits[i][i] - torch.logsumexp(torch.stack(logits[i]), 0))
        total = total - (logits[i][i] - torch.logsumexp(torch.stack([logits[r][i] for r in range(n)]), 0))
    return total / (2 * n)


# --- GRAM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n,d", [(2, 3, 3), (3, 2, 4), (3, 5, 6), (4, 3, 5)])
def test_gram_matches_naive(k, n, d, rng):
    mods = [rand(rng, n, d) for _ in range(k)]
    log_t = torch.tensor(math.log(0.3), dtype=F64, requires_grad=True)
    check(gram_loss(mods, log_t.exp()), naive_gram(mods, log_t.exp()), (*mods, log_t))


def test_gram_label_smoothing_zero_and_stacked_input(rng):
    mods = [rand(rng, 4, 5) for _ in range(3)]
    check(gram_loss(mods, 0.2, label_smoothing=0.0), naive_gram(mods, 0.2, ls=0.0), tuple(mods))
    torch.testing.assert_close(gram_loss(torch.stack(mods), 0.2), gram_loss(mods, 0.2))


def test_gram_batch_of_one():
    mods = [torch.randn(1, 4, dtype=F64) for _ in range(3)]
    assert gram_loss(mods, allow_single=True).item() == 0.0
    with pytest.raises(InputError, match="batch of 1"):
        gram_loss(mods)


def test_volume_k2_is_sine(rng):
    a, b = F.normalize(torch.randn(2, 7, 5, generator=rng, dtype=F64), dim=-1)
    vol = gram_volume(a, [b])
    want = (1 - (a @ b.T) ** 2).sqrt()
    torch.testing.assert_close(vol, want, rtol=1e-10, atol=1e-12)
    # antipodal pairs: volume 0 (floored at sqrt(eps)), like identical ones — the k=2 blind spot
    assert gram_volume(a[:1], [-a[:1]]).item() == pytest.approx(1e-6, rel=1e-3)


def test_volume_orthonormal_is_one_and_repeated_vector_is_zero(rng):
    q, _ = torch.linalg.qr(torch.randn(6, 4, generator=rng, dtype=F64))
    cols = [q[:, c][None] for c in range(4)]
    assert gram_volume(cols[0], cols[1:]).item() == pytest.approx(1.0, abs=1e-12)
    # a repeated vector spans nothing: det G = 0, volume = sqrt(eps) (eps floor, spec numerics)
    rep = gram_volume(cols[0], [cols[1], cols[1], cols[2]])
    assert rep.item() < 1.01e-6
    zero_eps = gram_volume(cols[0], [cols[1], cols[1]], eps=1e-300)
    assert zero_eps.item() < 1e-7
    # and its gradient stays finite (the reason for the floor)
    x = cols[0].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(gram_volume(x, [x.detach(), cols[2]]).sum(), x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("k", [3, 4])
def test_volume_qr_oracle_and_permutation_invariance(k, rng):
    vecs = F.normalize(torch.randn(k, 6, generator=rng, dtype=F64), dim=1)
    _, r = torch.linalg.qr(vecs.T)
    want = r.diagonal().prod().abs()
    got = gram_volume(vecs[:1], [v[None] for v in vecs[1:]])[0, 0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    for perm in itertools.permutations(range(k)):
        p = vecs[list(perm)]
        torch.testing.assert_close(
            gram_volume(p[:1], [v[None] for v in p[1:]])[0, 0], want, rtol=1e-10, atol=1e-14
        )


def test_gram_loss_invariances(rng):
    mods = [torch.randn(6, 5, generator=rng, dtype=F64) for _ in range(4)]
    base = gram_loss(mods, 0.1)
    torch.testing.assert_close(gram_loss([mods[0], mods[3], mods[1], mods[2]], 0.1), base)
    p = torch.randperm(6, generator=rng)
    torch.testing.assert_close(gram_loss([m[p] for m in mods], 0.1), base)
    torch.testing.assert_close(gram_loss([m * 2.5 for m in mods], 0.1), base)


def test_gram_hand_value():
    # N=2, k=2, identical orthonormal pairs, τ=1, eps→0: logits rows [0, −1]; CE with smoothing ε:
    # (1−ε)·log(1+e⁻¹) + ε·mean(log(1+e⁻¹), 1+log(1+e⁻¹)) = log(1+e⁻¹) + ε/2
    e = torch.eye(2, dtype=F64)
    got = gram_loss([e, e], 1.0, eps=1e-300)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-1)) + 0.05, abs=1e-12)


def test_gram_warns_for_two_modalities():
    with pytest.warns(UserWarning, match=r"k=2 modalities.*θ"):
        gram_loss([torch.randn(3, 4), torch.randn(3, 4)], 0.07)


def test_gram_bad_inputs():
    x = torch.randn(4, 3)
    with pytest.raises(InputError, match="at least 2 modalities"):
        gram_loss([x])
    with pytest.raises(
        InputError, match=r"batch size mismatch: modality 0 \(anchor\) has 4 rows, modality 2 has 3"
    ):
        gram_loss([x, x, torch.randn(3, 3)])
    with pytest.raises(InputError, match="embedding dimension mismatch"):
        gram_loss([x, torch.randn(4, 5)])
    with pytest.raises(InputError, match="empty batch"):
        gram_loss([torch.randn(0, 3), torch.randn(0, 3)])
    bad = x.clone()
    bad[1, 1] = float("inf")
    with pytest.raises(InputError, match="non-finite"):
        gram_loss([x, bad, x])
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        gram_loss([x, x, x], -1.0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        gram_loss([x, x, x], label_smoothing=2.0)
    with pytest.raises(InputError, match=r"shape \[k, N, d\]"):
        gram_loss(torch.randn(4, 3))


# --- pairwise-anchor CLIP ---------------------------------------------------------------------


def test_pairwise_clip_two_modalities_is_clip(rng):
    x, y = rand(rng, 5, 4), rand(rng, 5, 4)
    log_s = torch.tensor(2.0, dtype=F64, requires_grad=True)
    check(pairwise_clip_loss([x, y], log_s.exp()), clip_loss(x, y, log_s.exp()), (x, y, log_s))


@pytest.mark.parametrize("n", [2, 4])
def test_pairwise_clip_matches_naive_shared_and_per_pair(n, rng):
    mods = [rand(rng, n, 3) for _ in range(4)]
    ls = torch.tensor([1.0, 2.0, 2.5], dtype=F64, requires_grad=True)
    want = sum(naive_clip(mods[0], mods[m], ls[m - 1].exp()) for m in range(1, 4)) / 3
    check(pairwise_clip_loss(mods, list(ls.exp())), want, (*mods, ls))
    shared = torch.tensor(1.5, dtype=F64, requires_grad=True)
    want = sum(naive_clip(mods[0], mods[m], shared.exp()) for m in range(1, 4)) / 3
    check(pairwise_clip_loss(mods, shared.exp()), want, (*mods, shared))


def test_pairwise_clip_errors_and_single():
    mods = [torch.randn(1, 3, dtype=F64) for _ in range(3)]
    assert pairwise_clip_loss(mods, 10.0, allow_single=True).item() == 0.0
    with pytest.raises(InputError, match="batch of 1"):
        pairwise_clip_loss(mods, 10.0)
    with pytest.raises(InputError, match="got 1 scales for 2 anchor pairs"):
        pairwise_clip_loss([torch.randn(3, 2)] * 3, [10.0])


# --- modules ----------------------------------------------------------------------------------


def batch(rng, n=5, d=4):
    keys = ("text", "image", "attributes", "image@0", "image@1", "image:ema", "text:ema")
    return {k: torch.randn(n, d, generator=rng, dtype=F64, requires_grad=True) for k in keys}


def test_modality_keys_anchor_first_and_plain_names_only(rng):
    emb = batch(rng)
    assert modality_keys(emb, "text", None, "L") == ["text", "attributes", "image"]
    assert modality_keys(emb, "image", None, "L") == ["image", "attributes", "text"]
    assert modality_keys(emb, "text", ["image", "text"], "L") == ["text", "image"]
    with pytest.raises(InputError, match="L needs the anchor modality 'audio'"):
        modality_keys(emb, "audio", None, "L")
    with pytest.raises(InputError, match=r"needs embeddings \['video'\]"):
        modality_keys(emb, "text", ["text", "video"], "L")
    with pytest.raises(InputError, match="at least 2 modalities"):
        modality_keys({"text": emb["text"], "text@0": emb["text"]}, "text", None, "L")


def test_gram_module_reads_modalities_and_matches_pure(rng):
    emb = batch(rng)
    loss = LOSSES.build("gram")
    assert loss.log_values()["temperature"] == pytest.approx(0.07)
    got = loss(emb)
    want = gram_loss([emb["text"], emb["attributes"], emb["image"]], loss.log_temperature.exp())
    check(got, want, (emb["text"], emb["image"], loss.log_temperature))
    two = GRAMLoss(modalities=["image", "text"])
    with pytest.warns(UserWarning, match="k=2"):
        torch.testing.assert_close(two(emb), gram_loss([emb["text"], emb["image"]], 0.07))
    with pytest.raises(ConfigError, match="including the anchor 'text'"):
        GRAMLoss(modalities=["image", "attributes"])
    with pytest.raises(ConfigError, match="plain names"):
        GRAMLoss(modalities=["text", "image@0"])
    with pytest.raises(InputError, match="does not use"):
        loss(emb, labels=torch.arange(5))


def test_pairwise_clip_module_shared_and_per_pair(rng):
    emb = batch(rng)
    shared = LOSSES.build("pairwise_clip")
    want = pairwise_clip_loss([emb["text"], emb["attributes"], emb["image"]], 1 / 0.07)
    torch.testing.assert_close(shared(emb), want)
    per = PairwiseCLIPLoss(anchor="image", modalities=["image", "text", "attributes"], per_pair=True)
    assert sorted(per.log_scales) == ["attributes", "text"]
    with torch.no_grad():
        per.log_scales["text"].fill_(1.0)
        per.log_scales["attributes"].fill_(9.0)
    per.after_optimizer_step()  # clamp to [0, ln 100]
    assert per.log_values() == pytest.approx({"logit_scale_text": math.e, "logit_scale_attributes": 100.0})
    want = 0.5 * (
        clip_loss(emb["image"], emb["attributes"], 100.0) + clip_loss(emb["image"], emb["text"], math.e)
    )
    torch.testing.assert_close(per(emb), want)
    with pytest.raises(ConfigError, match="per_pair=True needs the modality names"):
        PairwiseCLIPLoss(per_pair=True)


def test_modules_run_on_random_float32(rng):
    emb = {k: torch.randn(6, 8, generator=rng, requires_grad=True) for k in ("text", "image", "attributes")}
    for loss in (GRAMLoss(), PairwiseCLIPLoss()):
        value = loss(emb)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        grads = torch.autograd.grad(value, (emb["image"], *loss.parameters()))
        assert all(torch.isfinite(g).all() for g in grads) and grads[0].abs().sum() > 0
