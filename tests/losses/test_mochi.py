"""L-MOCHI against naive float64 loops (values and gradients), the spec's oracles and the queue's
bookkeeping (enqueue after the loss, wrap-around, filled slots, checkpoint/resume, determinism)."""

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES
from contrastkit.losses.mochi import MoCHiLoss, mochi_loss, mochi_synthetics

F64 = torch.float64


def unit(v):
    return v / v.norm()


def naive_moco(q, k, queue, tau, extra=None):
    """−log softmax over [q·k, q·Q_1..K, q·h_1..] / τ, one query at a time; ``extra[b]`` lists the
    synthetic negatives of query b."""
    total = 0.0
    for b in range(q.shape[0]):
        qb = unit(q[b])
        logits = [qb @ unit(k[b])] + [qb @ queue[m] for m in range(queue.shape[0])]
        if extra is not None:
            logits += [qb @ h for h in extra[b]]
        logits = torch.stack(logits) / tau
        total = total - (logits[0] - torch.logsumexp(logits, 0))
    return total / q.shape[0]


def naive_synthetics(q, queue, syn):
    """Rebuild every synthetic from the drawn indices and mixing weights, by the spec formula."""
    out = []
    for b in range(q.shape[0]):
        qb = unit(q[b]).detach()
        hs = []
        for t in range(syn.pair_index.shape[1]):
            i, j = syn.pair_index[b, t].tolist()
            a = syn.alpha[b, t]
            hs.append(unit(a * queue[i] + (1 - a) * queue[j]))
        for t in range(syn.query_index.shape[1]):
            j = int(syn.query_index[b, t])
            be = syn.beta[b, t]
            hs.append(unit(be * qb + (1 - be) * queue[j]))
        out.append(hs)
    return out


def rand_queue(rng, k, d):
    return F.normalize(torch.randn(k, d, generator=rng, dtype=F64), dim=1)


def rand(rng, *shape):
    return torch.randn(*shape, generator=rng, dtype=F64, requires_grad=True)


def check(got, want, inputs):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("b,kq,d", [(1, 5, 3), (2, 7, 4), (6, 20, 8)])
def test_no_mixing_is_plain_moco_infonce(b, kq, d, rng):
    q, k, queue = rand(rng, b, d), rand(rng, b, d), rand_queue(rng, kq, d)
    got = mochi_loss(q, k, queue, n_hard=4, n_mix=0, n_mix_query=0, temperature=0.2)
    check(got, naive_moco(q, k, queue, 0.2), (q, k))


@pytest.mark.parametrize(
    "b,kq,d,n,s,s2", [(1, 6, 3, 4, 3, 2), (2, 9, 5, 3, 4, 0), (5, 30, 8, 10, 6, 5), (3, 4, 4, 10, 2, 2)]
)
def test_mixing_matches_naive_rebuild(b, kq, d, n, s, s2, rng):
    q, k, queue = rand(rng, b, d), rand(rng, b, d), rand_queue(rng, kq, d)
    kw = {"n_hard": n, "n_mix": s, "n_mix_query": s2}
    got = mochi_loss(q, k, queue, temperature=0.1, generator=torch.Generator().manual_seed(7), **kw)
    syn = mochi_synthetics(q, queue, generator=torch.Generator().manual_seed(7), **kw)
    assert syn.type1.shape == (b, s, d) and syn.type2.shape == (b, s2, d)
    rebuilt = naive_synthetics(q, queue, syn)
    for bb in range(b):
        torch.testing.assert_close(torch.stack(rebuilt[bb]), torch.cat([syn.type1[bb], syn.type2[bb]]))
    check(got, naive_moco(q, k, queue, 0.1, rebuilt), (q, k))


def test_synthetics_obey_the_spec_properties(rng):
    b, kq, d, n = 4, 50, 6, 8
    q = rand(rng, b, d)
    queue = rand_queue(rng, kq, d)
    syn = mochi_synthetics(
        q, queue, n_hard=n, n_mix=40, n_mix_query=40, generator=torch.Generator().manual_seed(1)
    )
    qn = F.normalize(q.detach(), dim=1)
    sims = qn @ queue.T
    for bb in range(b):  # drawn from the N hardest entries of that query, i ≠ j
        hardest = set(sorted(range(kq), key=lambda m: -float(sims[bb, m]))[:n])
        assert set(syn.pair_index[bb].flatten().tolist()) <= hardest
        assert set(syn.query_index[bb].tolist()) <= hardest
    assert (syn.pair_index[..., 0] != syn.pair_index[..., 1]).all()
    assert ((syn.alpha >= 0) & (syn.alpha < 1)).all() and ((syn.beta >= 0) & (syn.beta < 0.5)).all()
    for h in (syn.type1, syn.type2):
        torch.testing.assert_close(h.norm(dim=-1), torch.ones(h.shape[:2], dtype=F64))
        assert not h.requires_grad
    # type 2: q·h′ ≥ q·n_j
    q_h2 = torch.einsum("bd,bsd->bs", qn, syn.type2)
    assert (q_h2 >= sims.gather(1, syn.query_index) - 1e-12).all()


def test_type1_with_nonnegative_similarities_is_at_least_the_smaller_one(rng):
    q = torch.rand(3, 5, generator=rng, dtype=F64)
    queue = F.normalize(torch.rand(40, 5, generator=rng, dtype=F64), dim=1)
    syn = mochi_synthetics(
        q, queue, n_hard=10, n_mix=50, n_mix_query=0, generator=torch.Generator().manual_seed(2)
    )
    sims = F.normalize(q, dim=1) @ queue.T
    q_h = torch.einsum("bd,bsd->bs", F.normalize(q, dim=1), syn.type1)
    smaller = torch.minimum(sims.gather(1, syn.pair_index[..., 0]), sims.gather(1, syn.pair_index[..., 1]))
    assert (q_h >= smaller - 1e-12).all()


def test_seeded_generator_is_deterministic_and_the_seed_matters(rng):
    q, k, queue = rand(rng, 4, 6), rand(rng, 4, 6), rand_queue(rng, 30, 6)
    kw = {"n_hard": 10, "n_mix": 8, "n_mix_query": 4}
    runs = [mochi_loss(q, k, queue, generator=torch.Generator().manual_seed(s), **kw) for s in (3, 3, 4)]
    assert runs[0].item() == runs[1].item()
    assert runs[0].item() != runs[2].item()


def test_hard_negatives_raise_the_loss(rng):
    q, k, queue = rand(rng, 4, 6), rand(rng, 4, 6), rand_queue(rng, 30, 6)
    plain = mochi_loss(q, k, queue, n_hard=5, n_mix=0, n_mix_query=0)
    mixed = mochi_loss(
        q, k, queue, n_hard=5, n_mix=10, n_mix_query=10, generator=torch.Generator().manual_seed(0)
    )
    assert mixed > plain


def make(**kw):
    args = {
        "dim": 4,
        "n_hard": 3,
        "n_mix": 2,
        "n_mix_query": 2,
        "warmup_steps": 0,
        "queue_size": 8,
        "seed": 5,
    }
    return MoCHiLoss(**(args | kw)).double()


def test_module_uses_the_queue_before_enqueueing_then_enqueues_with_wraparound(rng):
    loss = make(warmup_steps=10)  # in warm-up: plain MoCo
    for step in range(3):  # batches of 3 into a queue of 8: pointer 0 → 3 → 6 → 1
        q, k = rand(rng, 3, 4), rand(rng, 3, 4)
        before = loss.queue.clone()
        got = loss(q, k)
        check(got, naive_moco(q, k, before, 0.2), (q, k))
        rows = [(3 * step + i) % 8 for i in range(3)]
        torch.testing.assert_close(loss.queue[rows], F.normalize(k.detach(), dim=1))
        untouched = [r for r in range(8) if r not in rows]
        torch.testing.assert_close(loss.queue[untouched], before[untouched])
        assert not loss.queue.requires_grad
    assert int(loss.ptr) == 1 and int(loss.step) == 3 and int(loss.filled) == 8


def test_module_after_warmup_mixes_with_the_step_generator(rng):
    loss = make(warmup_steps=1)
    loss(rand(rng, 2, 4), rand(rng, 2, 4))
    q, k = rand(rng, 2, 4), rand(rng, 2, 4)
    before = loss.queue.clone()
    assert loss.mixing_active()
    got = loss(q, k)
    gen = torch.Generator().manual_seed((5 * 0x9E3779B97F4A7C15 + 1) % 2**63)
    want = mochi_loss(q, k, before, n_hard=3, n_mix=2, n_mix_query=2, temperature=0.2, generator=gen)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got > naive_moco(q, k, before, 0.2)


def test_empty_queue_uses_only_filled_slots(rng):
    loss = make(random_init=False, n_hard=10)
    q, k = rand(rng, 2, 4), rand(rng, 2, 4)
    assert loss(q, k).item() == 0.0  # no negatives yet: softmax over the positive alone
    q2, k2 = rand(rng, 3, 4), rand(rng, 3, 4)
    filled = loss.queue[:2].clone()
    gen = torch.Generator().manual_seed((5 * 0x9E3779B97F4A7C15 + 1) % 2**63)
    syn = mochi_synthetics(q2, filled, n_hard=10, n_mix=2, n_mix_query=2, generator=gen)
    got = loss(q2, k2)
    check(got, naive_moco(q2, k2, filled, 0.2, naive_synthetics(q2, filled, syn)), (q2, k2))
    assert int(loss.filled) == 5


def test_eval_mode_leaves_the_state_untouched_and_does_not_mix(rng):
    loss = make().eval()
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    q, k = rand(rng, 3, 4), rand(rng, 3, 4)
    check(loss(q, k), naive_moco(q, k, state["queue"], 0.2), (q, k))
    for name, v in loss.state_dict().items():
        assert torch.equal(v, state[name])


def test_state_dict_resume_is_identical(rng):
    batches = [
        (torch.randn(3, 4, generator=rng, dtype=F64), torch.randn(3, 4, generator=rng, dtype=F64))
        for _ in range(5)
    ]
    a = make(warmup_steps=1)
    for q, k in batches[:3]:
        a(q, k)
    b = make(warmup_steps=1, seed=5)
    b.load_state_dict(a.state_dict())
    for q, k in batches[3:]:
        assert a(q, k).item() == b(q, k).item()
    assert set(a.state_dict()) == {"queue", "ptr", "filled", "step"}
    torch.testing.assert_close(a.queue, b.queue, rtol=0, atol=0)
    c = make(warmup_steps=1, seed=6)
    c.load_state_dict(a.state_dict())
    assert c(*batches[0]).item() != a(*batches[0]).item()  # same state, other seed → other draws


def test_registered_and_runs_on_float32(rng):
    loss = LOSSES.build(
        "mochi", dim=16, n_hard=256, n_mix=512, n_mix_query=256, warmup_steps=0, queue_size=1024
    )
    x, y = torch.randn(8, 16, generator=rng, requires_grad=True), torch.randn(8, 16, generator=rng)
    plain = loss.eval()(x, y)
    value = loss.train()(x, y)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value > plain  # same queue, plus hard synthetic negatives
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert loss.log_values() == {"queue_filled": 1024.0, "mochi_mixing": 1.0}


def test_bad_input_and_config_are_clear_errors():
    loss = make()
    with pytest.raises(InputError, match="does not match the queue's dim=4"):
        loss(torch.randn(2, 5, dtype=F64), torch.randn(2, 5, dtype=F64))
    with pytest.raises(InputError, match="batch size mismatch"):
        loss(torch.randn(2, 4, dtype=F64), torch.randn(3, 4, dtype=F64))
    with pytest.raises(InputError, match="non-finite"):
        loss(torch.full((2, 4), float("nan"), dtype=F64), torch.randn(2, 4, dtype=F64))
    with pytest.raises(InputError, match="does not use"):
        loss(torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64), labels=torch.arange(2))
    with pytest.raises(InputError, match=r"queue must have shape \[K, d\]"):
        mochi_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(5, 3), n_hard=2, n_mix=1, n_mix_query=1)
    with pytest.raises(ConfigError, match="n_hard"):
        make(n_hard=0)
    with pytest.raises(ConfigError, match="must be >= 0"):
        make(n_mix=-1)
    with pytest.raises(ConfigError, match="warmup_steps must be an integer >= 0"):
        make(warmup_steps=-1)
    with pytest.raises(TypeError):
        MoCHiLoss(dim=4)  # N, s, s′ and the warm-up are required (paper defaults unverified)


def test_chunked_synthetic_logits_equal_the_materialised_ones_and_save_less_memory(rng):
    """Query chunks with synthetics rebuilt in backward give the same logits and gradients as
    building every synthetic at once, while autograd keeps only a chunk's worth of them."""
    from contrastkit.losses.mochi import _build, _draw, _synthetic_logits

    b, kq, d = 12, 40, 8
    q, queue = rand(rng, b, d), rand_queue(rng, kq, d)
    draws = _draw((q @ queue.T).detach(), kq, 16, 10, 4, torch.Generator().manual_seed(3))
    t1, t2 = _build(q.detach(), queue, draws)
    want = torch.cat([torch.einsum("bd,bsd->bs", q, t1), torch.einsum("bd,bsd->bs", q, t2)], dim=1)
    (gw,) = torch.autograd.grad(want.square().sum(), q)

    def saved_bytes(budget):
        total = {}

        def pack(t):  # distinct storages: the queue is saved by reference by every chunk
            total[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = _synthetic_logits(q, queue, draws, budget=budget)
        return out, sum(total.values())

    got, small = saved_bytes(budget=14 * d)  # one query per chunk
    (gg,) = torch.autograd.grad(got.square().sum(), q)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(gg, gw, rtol=0, atol=1e-12)
    # autograd of the checkpointed chunks keeps only their inputs (queries, queue, draws): no
    # synthetic negative; materialising them keeps all B·(s+s′)·d of them for the backward pass
    synthetics = b * 14 * d * 8
    assert small < synthetics, (small, synthetics)
    inputs = (2 * q.numel() + queue.numel() + draws.alpha.numel() + draws.beta.numel()) * 8
    assert small <= inputs + draws.pair.numel() * 8 + draws.j.numel() * 8
