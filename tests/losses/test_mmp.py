"""MMP (spec M-MMP): mask sampling, the prediction formula against a per-row loop, the spec's oracles
(nothing masked = the inner loss; the alignment gradient never reaches the target embedding),
completion for evaluation, and reproducible masks across a resume."""

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.mmp import MaskedModalityProjection, MMPLoss, mask_seed, sample_modality_masks
from contrastkit.losses.multimodal import pairwise_clip_loss

F64 = torch.float64
MODS = ("attributes", "image", "text")


def emb_batch(g, n=6, d=5):
    return {m: torch.randn(n, d, generator=g, dtype=F64, requires_grad=True) for m in MODS}


def build(**kw):
    torch.manual_seed(0)
    return MMPLoss(MODS, 5, **kw).double()


def test_masks_follow_the_rules():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(4000, 3, generator=g) < 0.8
    present[:, 1] |= ~present.any(1)  # every row has something
    masked = sample_modality_masks(present, 0.5, torch.Generator().manual_seed(1))
    assert masked.shape == present.shape and masked.dtype == torch.bool
    assert bool(masked[~present].all())  # truly missing: always masked
    assert not bool(masked.all(1).any())  # never everything
    full = present.all(1)  # complete rows: the 7 non-empty patterns equally likely (p = 1/2)
    patterns = (masked[full].long() * torch.tensor([1, 2, 4])).sum(1)
    freq = torch.bincount(patterns, minlength=8)[:7].double() / full.sum()
    assert torch.allclose(freq, torch.full((7,), 1 / 7, dtype=F64), atol=0.03)
    again = sample_modality_masks(present, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(masked, again)
    nonempty = sample_modality_masks(present, 0.3, torch.Generator().manual_seed(2), nonempty=True)
    assert bool(nonempty.any(1).all()) and not bool(nonempty.all(1).any())
    assert not bool(sample_modality_masks(present[full], 0.0, g).any())
    with pytest.raises(ConfigError, match=r"p_mask must be in \[0, 1\)"):
        sample_modality_masks(present, 1.0, g)
    with pytest.raises(InputError, match="at least one present modality"):
        sample_modality_masks(torch.zeros(2, 3, dtype=torch.bool), 0.5, g)


def test_prediction_is_the_mean_of_the_available_projections(rng):
    torch.manual_seed(0)
    proj = MaskedModalityProjection(MODS, 5, hidden=7).double()
    emb = emb_batch(rng)
    masked = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 1, 1]], dtype=torch.bool
    )
    present = torch.ones_like(masked)
    present[2, 0] = False  # truly missing: replaced, not aligned
    out, align = proj.replace(emb, masked, present)
    sq, count = 0.0, 0
    for i in range(6):
        for j, m in enumerate(MODS):
            if not masked[i, j]:
                assert torch.equal(out[m][i], emb[m][i])
                continue
            srcs = [a for k, a in enumerate(MODS) if k != j and not masked[i, k]]
            want = sum(proj.proj[m][a](emb[a][i : i + 1])[0] for a in srcs) / len(srcs)
            torch.testing.assert_close(out[m][i], want, rtol=1e-12, atol=1e-14)
            if present[i, j]:
                sq, count = sq + ((want - emb[m][i].detach()) ** 2).sum(), count + 1
    torch.testing.assert_close(align, sq / count, rtol=1e-12, atol=1e-14)


def test_nothing_masked_is_exactly_the_inner_loss(rng):
    loss = build(p_mask=0.0)
    emb = emb_batch(rng)
    value = loss(emb)
    inner = pairwise_clip_loss([emb["text"], emb["attributes"], emb["image"]], loss.inner.log_scale.exp())
    assert torch.equal(value, inner + 0.0)
    ga = torch.autograd.grad(value, [*emb.values(), loss.inner.log_scale])
    gb = torch.autograd.grad(inner, [*emb.values(), loss.inner.log_scale])
    assert all(torch.equal(a, b) for a, b in zip(ga, gb))
    assert loss.log_values()["mmp/align"] == 0.0 and loss.log_values()["mmp/masked"] == 0.0


def test_alignment_gradient_does_not_reach_the_target_embedding(rng):
    torch.manual_seed(0)
    proj = MaskedModalityProjection(MODS, 5).double()
    emb = emb_batch(rng)
    masked = torch.zeros(6, 3, dtype=torch.bool)
    masked[:, 2] = True  # text predicted from attributes and image
    _, align = proj.replace(emb, masked, torch.ones_like(masked))
    g_text, g_img = torch.autograd.grad(align, (emb["text"], emb["image"]), allow_unused=True)
    assert g_text is None  # sg(e_text): no path at all
    assert g_img.abs().sum() > 0  # the sources and projections do learn
    # the whole loss: masked rows of the target get no gradient (inner sees ê, alignment sg(e))
    loss = build(p_mask=0.5)
    e2 = emb_batch(torch.Generator().manual_seed(3))
    masks = loss.masks(torch.ones(6, 3, dtype=torch.bool))  # the masks of the next call
    assert masks.any() and not masks.all()
    value = loss(e2)
    for j, m in enumerate(MODS):
        (gm,) = torch.autograd.grad(value, e2[m], retain_graph=True)
        assert torch.equal(gm[masks[:, j]], torch.zeros_like(gm[masks[:, j]]))


def test_truly_missing_rows_are_always_replaced_and_never_aligned(rng):
    loss = build(p_mask=0.0)
    emb = emb_batch(rng)
    present = {"image": torch.tensor([True, False, True, True, False, True])}
    value = loss(emb, present=present)
    filled = loss.complete(emb, present)
    inner = pairwise_clip_loss(
        [filled["text"], filled["attributes"], filled["image"]], loss.inner.log_scale.exp()
    )
    torch.testing.assert_close(value, inner, rtol=1e-12, atol=1e-14)
    assert loss.log_values()["mmp/align"] == 0.0
    (g,) = torch.autograd.grad(value, emb["image"])
    assert torch.equal(g[~present["image"]], torch.zeros(2, 5, dtype=F64))  # missing rows unused
    torch.testing.assert_close(filled["text"], emb["text"], rtol=0, atol=0)
    loss.eval()  # no random masking in eval mode, even with p_mask > 0
    loss.p_mask = 0.9
    torch.testing.assert_close(loss(emb, present=present), value, rtol=0, atol=0)


def test_masks_are_reproducible_across_a_resume_and_follow_the_step_field(rng):
    a = build()
    for _ in range(3):
        a(emb_batch(rng))
    state = a.state_dict()
    assert int(state["calls"]) == 3
    b = build()
    b.load_state_dict(state)
    emb = emb_batch(torch.Generator().manual_seed(9))
    va, vb = a(emb), b(emb)
    assert torch.equal(va, vb) and int(b.calls) == 4
    full = torch.ones(6, 3, dtype=torch.bool)
    want = sample_modality_masks(full, 0.5, torch.Generator().manual_seed(mask_seed(0, 17)))
    assert torch.equal(a.masks(full, step=17), want)
    c = build()
    torch.testing.assert_close(c(emb, step=torch.tensor(3)), va, rtol=0, atol=0)  # step 3 = a's 4th call


def test_registry_config_errors_and_logged_values(rng):
    loss = LOSSES.build("mmp", modalities=list(MODS), dim=5, inner="gram", inner_params={"anchor": "image"})
    assert isinstance(loss, MMPLoss) and loss.accepts == {"present", "step"}
    value = loss({m: torch.randn(6, 5, generator=rng) for m in MODS})
    assert torch.isfinite(value) and {"mmp/inner", "mmp/align", "mmp/masked", "temperature"} <= set(
        loss.log_values()
    )
    with pytest.raises(ConfigError, match="multi-modality inner loss"):
        MMPLoss(MODS, 5, inner="clip")
    with pytest.raises(ConfigError, match="cannot wrap itself"):
        MMPLoss(MODS, 5, inner="mmp")
    with pytest.raises(ConfigError, match="p_mask"):
        MMPLoss(MODS, 5, p_mask=1.0)
    with pytest.raises(ConfigError, match="2 distinct modalities"):
        MMPLoss(("text",), 5)
    with pytest.raises(InputError, match="none of the modalities present"):
        loss({m: torch.randn(2, 5) for m in MODS}, present={m: torch.tensor([True, False]) for m in MODS})
    with pytest.raises(InputError, match="does not use"):
        loss({m: torch.randn(2, 5) for m in MODS}, labels=torch.arange(2))
