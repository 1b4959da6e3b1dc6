"""L-MOCO2 / L-MOCO3 against naive float64 loops (values and gradients), the spec's oracles (queue
used before the enqueue, pointer wrap-around, explicit InfoNCE with K+1 candidates, the 2τ factor,
momentum schedule end points), the enhanced-negative-sampling filter and the queue's checkpointing."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.infonce import infonce_loss
from contrastkit.losses.momentum import (
    MoCo2Loss,
    MoCo3Loss,
    byol_momentum,
    cosine_momentum,
    moco2_loss,
    moco3_loss,
    moco3_momentum,
)

F64 = torch.float64


def unit(v):
    return v / v.norm()


def rand(rng, *shape):
    return torch.randn(*shape, generator=rng, dtype=F64, requires_grad=True)


def rand_queue(rng, k, d):
    return F.normalize(torch.randn(k, d, generator=rng, dtype=F64), dim=1)


def naive_moco(q, k, queue, tau, top_k=None, max_sim=None):
    """−log softmax over [q·k, kept q·Q_m] / τ, one query at a time; the filter by plain sorting."""
    total = 0.0
    for b in range(q.shape[0]):
        qb, kb = unit(q[b]), unit(k[b].detach())
        sims = [(float(qb.detach() @ queue[m]), m) for m in range(queue.shape[0])]
        if max_sim is not None:
            sims = [(s, m) for s, m in sims if s <= max_sim]
        if top_k is not None:
            sims = sorted(sims, reverse=True)[:top_k]
        logits = torch.stack([qb @ kb] + [qb @ queue[m] for _, m in sims]) / tau
        total = total - (logits[0] - torch.logsumexp(logits, 0))
    return total / q.shape[0]


def check(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------------------------------- MoCo v2


@pytest.mark.parametrize("b,kq,d", [(1, 5, 3), (2, 7, 4), (6, 20, 8)])
@pytest.mark.parametrize("top_k,max_sim", [(None, None), (3, None), (None, 0.2), (2, 0.1), (50, None)])
def test_moco2_matches_naive_loop(b, kq, d, top_k, max_sim, rng):
    q, k, queue = rand(rng, b, d), rand(rng, b, d), rand_queue(rng, kq, d)
    got = moco2_loss(q, k, queue, temperature=0.2, top_k=top_k, max_similarity=max_sim)
    check(got, naive_moco(q, k, queue, 0.2, top_k, max_sim), (q,))


def test_moco2_keys_get_no_gradient(rng):
    q, k, queue = rand(rng, 3, 4), rand(rng, 3, 4), rand_queue(rng, 6, 4)
    (grad_k,) = torch.autograd.grad(moco2_loss(q, k, queue), (k,), allow_unused=True)
    assert grad_k is None


@pytest.mark.parametrize("n", [2, 5])
def test_queue_of_true_negatives_is_an_explicit_infonce_with_k_plus_1_candidates(n, rng):
    q, k = rand(rng, n, 6), rand(rng, n, 6)
    keys = F.normalize(k.detach(), dim=1)
    per_query = [
        moco2_loss(q[i : i + 1], k[i : i + 1], keys[torch.arange(n) != i], temperature=0.3) for i in range(n)
    ]
    got = torch.stack(per_query).mean()
    want = infonce_loss(q, k.detach(), scale=1 / 0.3)  # CE over the N = K + 1 keys of the batch
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # hand form: one query, its key and one negative key at known cosines
    qq = torch.tensor([[1.0, 0.0]], dtype=F64)
    kk = torch.tensor([[0.6, 0.8]], dtype=F64)
    qu = torch.tensor([[0.0, 1.0]], dtype=F64)
    hand = math.log(1 + math.exp((0.0 - 0.6) / 0.2))
    assert moco2_loss(qq, kk, qu).item() == pytest.approx(hand, rel=1e-12)


def test_filters_that_keep_everything_are_plain_moco_and_filtering_lowers_the_loss(rng):
    q, k, queue = rand(rng, 4, 5), rand(rng, 4, 5), rand_queue(rng, 12, 5)
    plain = moco2_loss(q, k, queue)
    for kw in ({"top_k": 12}, {"top_k": 100}, {"max_similarity": 1.0 + 1e-9}):
        torch.testing.assert_close(moco2_loss(q, k, queue, **kw), plain, rtol=1e-12, atol=0)
    assert moco2_loss(q, k, queue, top_k=3) < plain
    assert moco2_loss(q, k, queue, max_similarity=0.0) < plain
    assert moco2_loss(q, k, queue, max_similarity=-2.0).item() == 0.0  # no negative survives
    assert moco2_loss(q, k, queue, max_similarity=-2.0, top_k=3).item() == 0.0  # top-k never revives
    few = moco2_loss(q, k, queue, max_similarity=-0.3, top_k=8)  # fewer than k survivors per query
    torch.testing.assert_close(few, naive_moco(q, k, queue, 0.2, 8, -0.3), rtol=1e-9, atol=1e-12)
    assert moco2_loss(q, k, queue[:0]).item() == 0.0  # empty queue


def test_moco2_invariances(rng):
    q, k, queue = rand(rng, 5, 4), rand(rng, 5, 4), rand_queue(rng, 9, 4)
    base = moco2_loss(q, k, queue, top_k=4)
    perm = torch.randperm(5, generator=rng)
    torch.testing.assert_close(moco2_loss(q[perm], k[perm], queue, top_k=4), base)
    torch.testing.assert_close(
        moco2_loss(3.0 * q, 0.5 * k, queue[torch.randperm(9, generator=rng)], top_k=4), base
    )


def make_moco2(**kw):
    return MoCo2Loss(**({"dim": 4, "queue_size": 8, "seed": 3} | kw)).double()


def test_module_uses_the_queue_before_enqueueing_then_wraps_around(rng):
    loss = make_moco2()
    assert loss.inputs == ("image@0", "image@1:ema")
    for step in range(3):  # batches of 3 into a queue of 8 (8 % 3 ≠ 0): pointer 0 → 3 → 6 → 1
        q, k = rand(rng, 3, 4), rand(rng, 3, 4)
        before = loss.queue.clone()
        got = loss({"image@0": q, "image@1:ema": k, "text": rand(rng, 3, 4)})
        check(got, naive_moco(q, k, before, 0.2), (q,))
        rows = [(3 * step + i) % 8 for i in range(3)]
        torch.testing.assert_close(loss.queue[rows], F.normalize(k.detach(), dim=1))
        untouched = [r for r in range(8) if r not in rows]
        torch.testing.assert_close(loss.queue[untouched], before[untouched])
        assert not loss.queue.requires_grad
    assert int(loss.ptr) == 1


def test_module_batch_larger_than_the_queue_keeps_the_last_keys(rng):
    loss = make_moco2(queue_size=4)
    k = rand(rng, 6, 4)
    loss({"image@0": rand(rng, 6, 4), "image@1:ema": k})
    written = F.normalize(k.detach(), dim=1)[-4:]  # rows 2..5 land at (0 + i) mod 4 for i = 0..5
    torch.testing.assert_close(loss.queue[[2, 3, 0, 1]], written)
    assert int(loss.ptr) == 2


def test_module_initial_queue_is_unit_random_and_seeded():
    a, b, c = make_moco2(seed=1), make_moco2(seed=1), make_moco2(seed=2)
    torch.testing.assert_close(a.queue.norm(dim=1), torch.ones(8, dtype=F64))
    assert torch.equal(a.queue, b.queue) and not torch.equal(a.queue, c.queue)


def test_module_state_is_checkpointed_and_resumes_identically(rng):
    loss = make_moco2()
    loss({"image@0": rand(rng, 3, 4), "image@1:ema": rand(rng, 3, 4)})
    state = loss.state_dict()
    assert set(state) == {"queue", "ptr"} and int(state["ptr"]) == 3
    resumed = make_moco2(seed=99)
    resumed.load_state_dict(state)
    batch = {"image@0": rand(rng, 3, 4), "image@1:ema": rand(rng, 3, 4)}
    assert loss(batch).item() == resumed(batch).item()
    assert torch.equal(loss.queue, resumed.queue) and int(resumed.ptr) == 6


def test_module_eval_mode_leaves_the_state_untouched(rng):
    loss = make_moco2().eval()
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    q, k = rand(rng, 3, 4), rand(rng, 3, 4)
    check(loss({"image@0": q, "image@1:ema": k}), naive_moco(q, k, state["queue"], 0.2), (q,))
    assert all(torch.equal(v, state[n]) for n, v in loss.state_dict().items())


def test_module_symmetric_pairs_average_and_enqueue_every_key_set(rng):
    loss = make_moco2(query=["image@0", "image@1"], key=["image@1:ema", "image@0:ema"], top_k=5)
    q0, q1, k0, k1 = (rand(rng, 2, 4) for _ in range(4))
    before = loss.queue.clone()
    got = loss({"image@0": q0, "image@1": q1, "image@0:ema": k0, "image@1:ema": k1})
    want = 0.5 * (naive_moco(q0, k1, before, 0.2, 5) + naive_moco(q1, k0, before, 0.2, 5))
    check(got, want, (q0, q1))
    torch.testing.assert_close(loss.queue[:4], F.normalize(torch.cat([k1, k0]).detach(), dim=1))
    assert int(loss.ptr) == 4


def test_moco2_errors(rng):
    q, k = rand(rng, 2, 4), rand(rng, 2, 4)
    with pytest.raises(InputError, match="queue must have shape"):
        moco2_loss(q, k, rand_queue(rng, 5, 3))
    with pytest.raises(InputError, match="batch size mismatch"):
        moco2_loss(q, k[:1], rand_queue(rng, 5, 4))
    with pytest.raises(InputError, match="non-finite"):
        moco2_loss(q, k, torch.full((3, 4), float("nan"), dtype=F64))
    with pytest.raises(ConfigError, match="top_k"):
        moco2_loss(q, k, rand_queue(rng, 5, 4), top_k=0)
    with pytest.raises(ConfigError, match="temperature"):
        moco2_loss(q, k, rand_queue(rng, 5, 4), temperature=0.0)
    with pytest.raises(ConfigError, match="as many names"):
        MoCo2Loss(dim=4, query=["image@0", "image@1"], key="image@1:ema")
    with pytest.raises(ConfigError, match="queue_size"):
        MoCo2Loss(dim=4, queue_size=0)
    loss = make_moco2()
    with pytest.raises(InputError, match=r"needs embeddings \['image@1:ema'\]"):
        loss({"image@0": q})
    with pytest.raises(InputError, match="does not match the queue's dim=4"):
        loss({"image@0": rand(rng, 2, 5), "image@1:ema": rand(rng, 2, 5)})
    with pytest.raises(InputError, match="does not use"):
        loss({"image@0": q, "image@1:ema": k}, labels=torch.arange(2))


# ----------------------------------------------------------------------------------------- MoCo v3


def naive_ctr(q, k, tau):
    total = 0.0
    n = q.shape[0]
    for i in range(n):
        logits = torch.stack([unit(q[i]) @ unit(k[j].detach()) / tau for j in range(n)])
        total = total + torch.logsumexp(logits, 0) - logits[i]
    return 2 * tau * total / n


@pytest.mark.parametrize("n,d", [(2, 3), (3, 5), (7, 4)])
@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_moco3_matches_naive_loop(n, d, tau, rng):
    q1, q2, k1, k2 = (rand(rng, n, d) for _ in range(4))
    got = moco3_loss(q1, q2, k1, k2, temperature=tau)
    check(got, naive_ctr(q1, k2, tau) + naive_ctr(q2, k1, tau), (q1, q2))
    grads = torch.autograd.grad(moco3_loss(q1, q2, k1, k2), (k1, k2), allow_unused=True)
    assert grads == (None, None)


@pytest.mark.parametrize("tau", [1.0, 0.2, 0.05])
def test_moco3_is_2tau_times_infonce(tau, rng):
    q1, q2, k1, k2 = (rand(rng, 5, 6) for _ in range(4))
    ce = infonce_loss(q1, k2.detach(), scale=1 / tau) + infonce_loss(q2, k1.detach(), scale=1 / tau)
    torch.testing.assert_close(moco3_loss(q1, q2, k1, k2, temperature=tau), 2 * tau * ce, rtol=1e-10, atol=0)


def test_moco3_single_and_invariances(rng):
    q1, q2, k1, k2 = (rand(rng, 1, 3) for _ in range(4))
    with pytest.raises(InputError, match="batch of 1"):
        moco3_loss(q1, q2, k1, k2)
    assert moco3_loss(q1, q2, k1, k2, allow_single=True).item() == 0.0
    q1, q2, k1, k2 = (rand(rng, 6, 3) for _ in range(4))
    base = moco3_loss(q1, q2, k1, k2)
    perm = torch.randperm(6, generator=rng)
    torch.testing.assert_close(moco3_loss(q1[perm], q2[perm], k1[perm], k2[perm]), base)
    torch.testing.assert_close(moco3_loss(q2, q1, k2, k1), base)  # swapping the views
    torch.testing.assert_close(moco3_loss(2 * q1, q2, 0.1 * k1, k2), base)


def test_moco3_module_reads_its_keys(rng):
    emb = {key: rand(rng, 4, 5) for key in ("image@0", "image@1", "image@0:ema", "image@1:ema")}
    loss = MoCo3Loss(temperature=0.2)
    want = moco3_loss(emb["image@0"], emb["image@1"], emb["image@0:ema"], emb["image@1:ema"], temperature=0.2)
    assert loss(emb).item() == want.item()
    custom = MoCo3Loss(queries=("a", "b"), keys=("a:ema", "b:ema"))
    assert custom.inputs == ("a", "b", "a:ema", "b:ema")
    with pytest.raises(ConfigError, match="two query keys"):
        MoCo3Loss(queries=("image@0",))
    with pytest.raises(InputError, match="needs embeddings"):
        loss({"image@0": emb["image@0"]})
    with pytest.raises(InputError, match="embedding dimension mismatch"):
        moco3_loss(emb["image@0"], emb["image@1"], rand(rng, 4, 3), rand(rng, 4, 3))


# ------------------------------------------------------------------------------ momentum schedules


@pytest.mark.parametrize("base", [0.99, 0.996, 0.0])
def test_cosine_momentum_end_points_and_midpoint(base):
    assert cosine_momentum(0, 100, base) == pytest.approx(base, abs=1e-15)
    assert cosine_momentum(100, 100, base) == 1.0
    assert cosine_momentum(50, 100, base) == pytest.approx((1 + base) / 2, abs=1e-15)
    values = [cosine_momentum(t, 100, base) for t in range(101)]
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_named_schedules_and_errors():
    assert moco3_momentum(0, 10) == pytest.approx(0.99) and moco3_momentum(10, 10) == 1.0
    assert byol_momentum(0, 10) == pytest.approx(0.996) and byol_momentum(10, 10) == 1.0
    t, total, base = 3, 7, 0.9
    assert byol_momentum(t, total, base) == pytest.approx(
        1 - (1 - base) * (math.cos(math.pi * t / total) + 1) / 2, abs=1e-15
    )
    with pytest.raises(InputError, match="step must be in"):
        cosine_momentum(11, 10, 0.99)
    with pytest.raises(ConfigError, match="total"):
        cosine_momentum(0, 0, 0.99)
    with pytest.raises(ConfigError, match="base momentum"):
        cosine_momentum(0, 10, 1.5)


# -------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name,kw", [("moco2", {"dim": 8, "queue_size": 16}), ("moco3", {})])
def test_registered_and_runs_in_float32(name, kw, rng):
    loss = LOSSES.build(name, **kw)
    emb = {
        key: torch.randn(4, 8, generator=rng) for key in ("image@0", "image@1", "image@0:ema", "image@1:ema")
    }
    value = loss(emb)
    assert value.dtype == torch.float32 and value.ndim == 0 and torch.isfinite(value)
    with pytest.raises(ConfigError, match="unknown parameter"):
        LOSSES.build(name, temprature=0.1, **kw)
