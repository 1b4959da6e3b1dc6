"""Masked pairwise-anchor CLIP and GRAM (batch field ``present``) against the loss of the sub-batch
of usable rows: float64 values and gradients, skipped pairs, the all-skipped 0, module plumbing."""

import math

import pytest
import torch

from contrastkit.core.errors import InputError
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.multimodal import GRAMLoss, PairwiseCLIPLoss, gram_loss, pairwise_clip_loss

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:gram_loss with k=2")


def rand(g, *shape):
    return torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)


def close(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    ga = torch.autograd.grad(got, inputs, allow_unused=True, materialize_grads=True)
    gb = torch.autograd.grad(want, inputs, allow_unused=True, materialize_grads=True)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def sub_pairwise(mods, scales, masks):
    """The oracle: for each pair, clip_loss on the rows where both are present (≥ 2 rows)."""
    out = []
    for m in range(1, len(mods)):
        both = masks[0] & masks[m]
        if both.sum() >= 2:
            out.append(clip_loss(mods[0][both], mods[m][both], scales[m - 1]))
    return sum(out) / len(out)


@pytest.mark.parametrize("trial", range(6))
def test_pairwise_clip_equals_the_sub_batch_loss_with_random_masks(trial):
    g = torch.Generator().manual_seed(trial)
    n, k = 9, 4
    mods = [rand(g, n, 5) for _ in range(k)]
    log_s = torch.tensor([2.0, 2.5, 1.5], dtype=F64, requires_grad=True)
    masks = [torch.rand(n, generator=g) < 0.7 for _ in range(k)]
    if trial == 0:  # one pair left with a single row: skipped, the mean runs over the others
        masks[2] = torch.zeros(n, dtype=torch.bool)
        masks[2][int(masks[0].nonzero()[0])] = True
    got = pairwise_clip_loss(mods, list(log_s.exp()), present=masks)
    close(got, sub_pairwise(mods, list(log_s.exp()), masks), (*mods, log_s))


def test_pairwise_clip_unmasked_modalities_and_all_true_masks_change_nothing(rng):
    mods = [rand(rng, 5, 3) for _ in range(3)]
    base = pairwise_clip_loss(mods, 10.0)
    assert torch.equal(pairwise_clip_loss(mods, 10.0, present=[None, None, None]), base)
    ones = torch.ones(5, dtype=torch.bool)
    torch.testing.assert_close(
        pairwise_clip_loss(mods, 10.0, present=[ones, None, ones]), base, rtol=0, atol=0
    )
    # a mask on one non-anchor modality touches only its pair
    mask = torch.tensor([True, False, True, True, False])
    want = 0.5 * (clip_loss(mods[0][mask], mods[1][mask], 10.0) + clip_loss(mods[0], mods[2], 10.0))
    close(pairwise_clip_loss(mods, 10.0, present=[None, mask, None]), want, tuple(mods))


def test_pairwise_clip_with_every_pair_skipped_is_a_zero_that_keeps_the_graph(rng):
    mods = [rand(rng, 4, 3) for _ in range(3)]
    log_s = torch.tensor(2.0, dtype=F64, requires_grad=True)
    anchor_mask = torch.tensor([True, False, False, False])  # one anchor row: no pair has 2 rows
    got = pairwise_clip_loss(mods, log_s.exp(), present=[anchor_mask, None, None])
    assert got.item() == 0.0 and got.dtype == F64 and got.requires_grad
    grads = torch.autograd.grad(got, (*mods, log_s))
    assert all(gr is not None and torch.equal(gr, torch.zeros_like(gr)) for gr in grads)


@pytest.mark.parametrize("trial", range(4))
def test_gram_uses_the_rows_where_every_modality_is_present(trial):
    g = torch.Generator().manual_seed(10 + trial)
    n = 8
    mods = [rand(g, n, 4) for _ in range(3)]
    log_t = torch.tensor(math.log(0.2), dtype=F64, requires_grad=True)
    masks = [torch.rand(n, generator=g) < 0.8, None, torch.rand(n, generator=g) < 0.8]
    masks[0][:3] = True
    masks[2][:3] = True  # at least 3 complete rows
    rows = masks[0] & masks[2]
    want = gram_loss([t[rows] for t in mods], log_t.exp())
    close(gram_loss(mods, log_t.exp(), present=masks), want, (*mods, log_t))


def test_gram_with_fewer_than_two_complete_rows_is_a_graph_zero(rng):
    mods = [rand(rng, 4, 3) for _ in range(3)]
    one = torch.tensor([False, True, False, False])
    got = gram_loss(mods, 0.1, present=[None, one, None])
    assert got.item() == 0.0
    assert all(torch.equal(gr, torch.zeros_like(gr)) for gr in torch.autograd.grad(got, mods))


def test_modules_take_the_present_field(rng):
    keys = ("text", "image", "attributes")
    emb = {k: rand(rng, 6, 4) for k in keys}
    present = {"image": torch.tensor([True, True, False, True, False, True])}
    pw = PairwiseCLIPLoss()
    scale = pw.log_scale.exp()
    # anchor text first, others sorted: attributes (no mask), image (masked)
    img = present["image"]
    want = 0.5 * (
        clip_loss(emb["text"], emb["attributes"], scale)
        + clip_loss(emb["text"][img], emb["image"][img], scale)
    )
    close(pw(emb, present=present), want, (emb["text"], emb["image"], pw.log_scale))
    gr = GRAMLoss()
    want = gram_loss([emb["text"][img], emb["attributes"][img], emb["image"][img]], gr.log_temperature.exp())
    close(gr(emb, present=present), want, (emb["image"], gr.log_temperature))
    assert "present" in pw.accepts and "present" in gr.accepts
    torch.testing.assert_close(pw(emb, present=None), pw(emb))


def test_bad_present_masks_are_named():
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(
        InputError, match=r"present mask of modality 1 must be a bool \[N=4\] tensor, got torch.int64"
    ):
        pairwise_clip_loss([x, x, x], 10.0, present=[None, torch.ones(4, dtype=torch.long), None])
    with pytest.raises(InputError, match="present has 2 masks for 3 modalities"):
        gram_loss([x, x, x], present=[None, None])
    emb = {k: x for k in ("text", "image", "audio")}
    with pytest.raises(InputError, match=r"present names \['imgae'\]"):
        PairwiseCLIPLoss()(emb, present={"imgae": torch.ones(4, dtype=torch.bool)})
