"""L-COCA and the captioning-only objective against naive float64 loops and the spec's oracles."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.generative import CaptioningLoss, CoCaLoss, caption_loss, coca_loss

F64 = torch.float64
PAD = 0


def unit(v):
    return v / v.norm()


def naive_caption(logits, ids, pad):
    """Masked mean written out: Σ over non-pad targets of −log softmax / their count."""
    total, count = 0.0, 0
    for i in range(ids.shape[0]):
        for k in range(ids.shape[1] - 1):
            target = int(ids[i, k + 1])
            if target == pad:
                continue
            row = logits[i, k]
            total = total - (row[target] - torch.log(torch.exp(row).sum()))
            count += 1
    return total / count


def naive_clip(x, y, s):
    n = x.shape[0]
    logits = [[s * (unit(x[i]) * unit(y[j])).sum() for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        total = total - (logits[i][i] - torch.logsumexp(torch.stack(logits[i]), 0)) / (2 * n)
        col = torch.stack([logits[k][i] for k in range(n)])
        total = total - (logits[i][i] - torch.logsumexp(col, 0)) / (2 * n)
    return total


def make_ids(n, length, vocab, rng, pad_tail=True):
    ids = torch.randint(1, vocab, (n, length), generator=rng)
    if pad_tail:  # right padding of varying length; the first two tokens are always real
        for i in range(n):
            ids[i, 2 + (i % (length - 1)) :] = PAD
    return ids


def close_all(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def small(cls=CoCaLoss, **kw):
    torch.manual_seed(0)
    return cls(vocab_size=11, width=16, layers=2, heads=2, max_len=8, dim=5, **kw).double()


@pytest.mark.parametrize("n,length", [(1, 2), (2, 4), (4, 6)])
def test_caption_loss_is_the_masked_mean_over_non_pad_targets(n, length, rng):
    ids = make_ids(n, length, 7, rng)
    logits = torch.randn(n, length - 1, 7, generator=rng, dtype=F64, requires_grad=True)
    close_all(caption_loss(logits, ids, PAD), naive_caption(logits, ids, PAD), (logits,))


def test_pad_targets_do_not_matter_and_all_pad_is_an_error(rng):
    ids = make_ids(3, 5, 7, rng)
    logits = torch.randn(3, 4, 7, generator=rng, dtype=F64)
    base = caption_loss(logits, ids, PAD)
    changed = logits.clone()
    changed[ids[:, 1:] == PAD] = 50.0
    assert torch.equal(caption_loss(changed, ids, PAD), base)
    uniform = caption_loss(torch.zeros(3, 4, 7, dtype=F64), ids, PAD)
    assert uniform.item() == pytest.approx(math.log(7), abs=1e-12)
    ids[:, 1:] = PAD
    with pytest.raises(InputError, match="every target token is pad_id"):
        caption_loss(logits, ids, PAD)


@pytest.mark.parametrize("n", [2, 5])
def test_coca_loss_matches_naive(n, rng):
    x = torch.randn(n, 4, generator=rng, dtype=F64, requires_grad=True)
    y = torch.randn(n, 4, generator=rng, dtype=F64, requires_grad=True)
    ids = make_ids(n, 5, 6, rng)
    logits = torch.randn(n, 4, 6, generator=rng, dtype=F64, requires_grad=True)
    t = torch.tensor(2.0, dtype=F64, requires_grad=True)
    got = coca_loss(x, y, logits, ids, t.exp(), pad_id=PAD, lambda_con=1.0, lambda_cap=2.0)
    want = naive_clip(x, y, t.exp()) + 2.0 * naive_caption(logits, ids, PAD)
    close_all(got, want, (x, y, logits, t))


def test_lambda_cap_zero_is_exactly_clip(rng):
    x, y = torch.randn(4, 5, generator=rng, dtype=F64), torch.randn(4, 5, generator=rng, dtype=F64)
    ids = make_ids(4, 5, 11, rng)
    logits = torch.randn(4, 4, 11, generator=rng, dtype=F64)
    assert torch.equal(coca_loss(x, y, logits, ids, 9.0, lambda_cap=0.0), clip_loss(x, y, 9.0))
    loss = small(lambda_cap=0.0)
    assert torch.equal(loss(x, y, text_ids=ids), clip_loss(x, y, loss.log_scale.exp()))
    assert torch.equal(loss(x, y), clip_loss(x, y, loss.log_scale.exp()))  # no decoder run, no ids needed


def test_module_equals_hand_computed_terms_values_and_gradients(rng):
    loss = small()
    x = torch.randn(3, 5, generator=rng, dtype=F64, requires_grad=True)
    y = torch.randn(3, 5, generator=rng, dtype=F64, requires_grad=True)
    ids = make_ids(3, 6, 11, rng)
    got = loss(x, y, text_ids=ids)
    logits = loss.decoder(x, ids[:, :-1])
    want = naive_clip(x, y, loss.log_scale.exp()) + 2.0 * naive_caption(logits, ids, PAD)
    params = (
        x,
        y,
        loss.log_scale,
        loss.decoder.memory.weight,
        loss.decoder.out.weight,
        loss.decoder.position,
    )
    close_all(got, want, params)
    logs = loss.log_values()
    with torch.no_grad():
        assert logs["loss/caption"] == pytest.approx(float(naive_caption(logits, ids, PAD)), rel=1e-10)
        assert logs["loss/contrastive"] == pytest.approx(
            float(naive_clip(x, y, loss.log_scale.exp())), rel=1e-10
        )
    assert logs["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6)
    cap = small(CaptioningLoss)
    torch.testing.assert_close(cap(x, text_ids=ids), naive_caption(cap.decoder(x, ids[:, :-1]), ids, PAD))
    torch.testing.assert_close(cap(x, y, text_ids=ids), cap(x, text_ids=ids))


def test_decoder_is_causal_and_reads_the_image(rng):
    loss = small(CaptioningLoss)
    x = torch.randn(2, 5, generator=rng, dtype=F64)
    ids = make_ids(2, 7, 11, rng, pad_tail=False)
    base = loss.decoder(x, ids)
    for k in range(1, 7):
        other = ids.clone()
        other[:, k] = (other[:, k] % 10) + 1  # a different real token at position k
        out = loss.decoder(x, other)
        torch.testing.assert_close(out[:, :k], base[:, :k], rtol=1e-12, atol=1e-12)
        assert (out[:, k] - base[:, k]).abs().max() > 1e-6
    assert (loss.decoder(x + 1.0, ids) - base).abs().max() > 1e-6


def test_clamp_and_batch_invariance(rng):
    loss = small()
    x, y = torch.randn(4, 5, generator=rng, dtype=F64), torch.randn(4, 5, generator=rng, dtype=F64)
    ids = make_ids(4, 5, 11, rng)
    p = torch.randperm(4, generator=rng)
    torch.testing.assert_close(loss(x[p], y[p], text_ids=ids[p]), loss(x, y, text_ids=ids))
    with torch.no_grad():
        loss.log_scale.fill_(8.0)
    loss.after_optimizer_step()
    assert loss.log_scale.item() == pytest.approx(math.log(100.0))


def test_errors(rng):
    loss = small()
    x, y = torch.randn(2, 5, dtype=F64), torch.randn(2, 5, dtype=F64)
    ids = make_ids(2, 4, 11, rng)
    with pytest.raises(InputError, match="needs the batch field text_ids"):
        loss(x, y)
    with pytest.raises(InputError, match="N=2 rows"):
        loss(x, y, text_ids=ids[:1])
    with pytest.raises(InputError, match="L >= 2"):
        loss(x, y, text_ids=ids[:, :1])
    with pytest.raises(InputError, match="vocab_size=11"):
        loss(x, y, text_ids=ids + 20)
    with pytest.raises(InputError, match="LongTensor"):
        loss(x, y, text_ids=ids.float())
    with pytest.raises(InputError, match="max_len=8"):
        loss(x, y, text_ids=torch.ones(2, 10, dtype=torch.long))
    with pytest.raises(InputError, match="batch of 1 pair"):
        loss(x[:1], y[:1], text_ids=ids[:1])
    with pytest.raises(InputError, match="does not use"):
        loss(x, y, text_ids=ids, labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="token_logits must have shape"):
        caption_loss(torch.zeros(2, 4, 3), ids, PAD)
    with pytest.raises(ConfigError, match="not both 0"):
        CoCaLoss(lambda_con=0.0, lambda_cap=0.0)
    with pytest.raises(ConfigError, match="pad_id"):
        CaptioningLoss(vocab_size=10, pad_id=10)
    assert small(allow_single=True)(x[:1], y[:1], text_ids=ids[:1]).isfinite()


def test_registered_names_build_and_run_on_float32(rng):
    x, y = torch.randn(4, 12, generator=rng), torch.randn(4, 12, generator=rng)
    ids = make_ids(4, 9, 1000, rng)
    for name in ("coca", "captioning"):
        loss = LOSSES.build(name)
        out = loss(x, y, text_ids=ids)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        out.backward()
        assert loss.decoder.out.weight.grad is not None
