"""S-GRADCACHE partial graphs and the memory plan: partial graphs give the same gradients as full
ones (float64, dropout on) and keep what ``partial_bytes`` counts; the planner spends a budget by
time saved per byte; no plan changes the RNG stream, gradients or BatchNorm statistics."""

import gc
import warnings

import pytest
import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models import DualEncoder, Tower
from contrastkit.scale import (
    GraphPlan,
    ScaleConfig,
    TowerCost,
    backward_through_chunks,
    chunks_to_keep,
    embed_in_chunks,
    graph_bytes,
    measure_costs,
    partial_bytes,
    plan_graphs,
)
from tests.scale.test_grad_cache_keep import C, N, grads, reference, setup

PLANS = [
    (0, 4),
    (1, 2),
    ({"image": 0, "text": 3}, {"image": 4}),
    ({"text": 2}, {"image": 1, "text": 1}),
    (4, 9),
]


def cached(model, loss, batch, keep, partial):
    torch.manual_seed(123)
    c = embed_in_chunks(model, batch, C, keep, partial=partial)
    after_pass1 = torch.get_rng_state()
    loss(c.reps["image"], c.reps["text"]).backward()
    backward_through_chunks(model, batch, c)
    assert all(not kept for kept in c.graphs.values())
    return grads(model, loss), after_pass1, torch.get_rng_state(), c


@pytest.mark.parametrize(("keep", "partial"), PLANS)
def test_partial_graphs_give_full_autograd_gradients_with_dropout(keep, partial):
    model, loss, batch = setup()
    ref = reference(model, loss, batch)
    got, _, _, _ = cached(model, loss, batch, keep, partial)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_partial_graphs_change_neither_the_rng_stream_nor_float32_gradients():
    model, loss, batch = setup(torch.float32)
    base, rng1, rng2, _ = cached(model, loss, batch, 0, 0)
    for keep, partial in PLANS:
        got, r1, r2, _ = cached(model, loss, batch, keep, partial)
        assert torch.equal(r1, rng1) and torch.equal(r2, rng2)
        assert all(torch.equal(a, b) for a, b in zip(got, base))


def test_which_chunks_are_full_partial_or_rerun():
    model, _, batch = setup()
    c = embed_in_chunks(model, batch, C, {"text": 1}, keep_last=False, partial={"image": 2, "text": 2})
    assert {m: sorted(g) for m, g in c.graphs.items()} == {"image": [2, 3], "text": [1, 2, 3]}
    assert [s is None for s in c.rng_states["image"]] == [False, False, True, True]
    c = embed_in_chunks(model, batch, C, 0, keep_first=False, partial=9)
    assert sorted(c.graphs["image"]) == [1, 2, 3]  # chunk 0 keeps nothing: final() re-runs it


class Mlp(Tower):
    """Linear(8→16) → dropout → GELU → Linear(16→4): a partial graph keeps the two ``addmm``
    outputs (B·16 + B·4 floats), a full one also the GELU input's dropout mask and output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.GELU(), nn.Linear(16, 4))
        self.output_dim = 4

    def forward(self, x):
        return self.net(x)


def test_partial_bytes_count_the_product_outputs_and_are_below_the_full_graph():
    torch.manual_seed(0)
    model = DualEncoder({"image": Mlp(), "text": Mlp()}, embed_dim=3)
    batch = {"image": torch.randn(10, 8), "text": torch.randn(10, 8)}
    got = partial_bytes(model, batch, 5)
    # per chunk of 5: the two tower products plus the projection's mm (5·3)
    assert got == {"image": 4 * 5 * (16 + 4 + 3), "text": 4 * 5 * (16 + 4 + 3)}
    full = graph_bytes(model, batch, 5)
    assert all(full[m] > got[m] for m in got)


def _live_bytes() -> int:
    """Bytes of the distinct storages of every CPU tensor the garbage collector can see."""
    gc.collect()
    seen: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance on deprecated torch aliases warns
        warnings.simplefilter("ignore")
        for o in gc.get_objects():
            if isinstance(o, torch.Tensor) and o.device.type == "cpu":
                s = o.untyped_storage()
                seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def test_partial_graphs_hold_what_partial_bytes_counts():
    """Storages alive after pass 1, beyond what existed before and the embeddings: exactly the
    partial graphs of the three chunks asked for, plus one CPU RNG state per chunk (recorded for
    the five re-run chunks, and by each partial chunk's checkpoint for its recompute)."""
    torch.manual_seed(0)
    model = DualEncoder({"image": Mlp(), "text": Mlp()}, embed_dim=3)
    batch = {"image": torch.randn(20, 8), "text": torch.randn(20, 8)}
    per = partial_bytes(model, batch, 5)
    rng = torch.get_rng_state().nbytes
    before = _live_bytes()
    c = embed_in_chunks(model, batch, 5, 0, keep_last=False, partial={"text": 3})
    reps = sum(r.untyped_storage().nbytes() for r in c.reps.values())
    assert _live_bytes() - before - reps == 3 * per["text"] + 8 * rng


def test_batchnorm_towers_refuse_partial_graphs():
    model, _, batch = setup(bn=True)
    with pytest.raises(ConfigError, match="BatchNorm in training mode"):
        embed_in_chunks(model, batch, C, 0, partial=1)
    costs = measure_costs(model, batch, C, repeats=1)
    assert all(c.partial_bytes is None and c.partial_s is None for c in costs.values())


class InPlace(Tower):
    """A Linear with ReLU(inplace=True) right after it: the ReLU overwrites the kept product."""

    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 12), nn.ReLU(inplace=True), nn.Linear(12, 12))
        self.output_dim = 12

    def forward(self, x):
        return self.net(x)


def test_a_tower_whose_inplace_op_changes_a_kept_output_refuses_partial_graphs():
    """Found by a probe (one partial forward+backward of two rows), not by a failing step: an
    explicit count raises a ConfigError naming it, ``partial_chunks`` skips the tower with a
    warning, a memory budget plans full graphs only; the other tower keeps its partial graphs."""
    from contrastkit.scale.partial_graph import partial_probe

    model, loss, batch = setup()
    model.towers["image"] = InPlace(7).to(torch.float64)
    rng = torch.get_rng_state()
    assert "in-place operation in the 'image' tower" in partial_probe(model, "image", batch["image"])
    assert partial_probe(model, "text", batch["text"]) is None
    assert torch.equal(torch.get_rng_state(), rng) and all(p.grad is None for p in model.parameters())
    with pytest.raises(ConfigError, match="in-place operation in the 'image' tower"):
        embed_in_chunks(model, batch, C, 0, partial=1)
    with pytest.warns(UserWarning, match="no partial graphs for 'image': an in-place operation"):
        plan = chunks_to_keep(model, batch, C, None, None, partial=2)
    assert plan.partial == {"image": 0, "text": 2}
    costs = measure_costs(model, batch, C, repeats=1)
    assert costs["image"].partial_bytes is None and costs["text"].partial_bytes is not None
    ref = reference(model, loss, batch)  # and the plan trains exactly
    got, _, _, _ = cached(model, loss, batch, 0, plan.partial)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_rerun_chunks_update_batchnorm_statistics_once_whatever_is_kept():
    model, loss, batch = setup(bn=True)
    start = [b.clone() for b in model.buffers()]
    with torch.no_grad():  # the chunked forward, once: what every plan must leave behind
        torch.manual_seed(5)
        for m, x in batch.items():
            for i in range(0, N, C):
                model.encode(m, x[i : i + C])
    want = [b.clone() for b in model.buffers()]
    for keep in (0, 2, 4):
        with torch.no_grad():
            for b, s in zip(model.buffers(), start):
                b.copy_(s)
        torch.manual_seed(5)
        c = embed_in_chunks(model, batch, C, keep, keep_last=False)
        loss(c.reps["image"], c.reps["text"]).backward()
        backward_through_chunks(model, batch, c)
        assert all(torch.equal(a, b) for a, b in zip(model.buffers(), want))


def test_plan_spends_the_budget_by_time_saved_per_byte():
    mib = 2**20
    costs = {
        "image": TowerCost(66 * mib, 0.050),  # no partial graphs (BatchNorm)
        "text": TowerCost(103 * mib, 0.042, 32 * mib, 0.021),
    }
    chunks = {"image": 16, "text": 16}
    # half of all full graphs: every image graph (0.76 ms/MiB), then text partial (0.66 ms/MiB)
    plan = plan_graphs(costs, chunks, 8 * 169 * mib)
    assert plan == GraphPlan({"image": 16, "text": 0}, {"image": 0, "text": 9})
    assert plan.bytes(costs) == (16 * 66 + 9 * 32) * mib
    assert plan.describe(chunks) == "image: 16 full of 16; text: 9 partial, 0 full of 16"
    # enough for everything partial and two upgrades of text to full
    plan = plan_graphs(costs, chunks, (16 * 66 + 16 * 32 + 2 * 71) * mib + 5)
    assert plan == GraphPlan({"image": 16, "text": 2}, {"image": 0, "text": 14})
    assert plan_graphs(costs, chunks, 10**15) == GraphPlan({"image": 16, "text": 16}, {"image": 0, "text": 0})
    assert plan_graphs(costs, chunks, 0) == GraphPlan({"image": 0, "text": 0}, {"image": 0, "text": 0})
    # a partial graph that saves less per byte than the upgrade is never used
    slow = {"text": TowerCost(100, 1.0, 90, 0.5)}
    assert plan_graphs(slow, {"text": 4}, 250) == GraphPlan({"text": 2}, {"text": 0})
    # ... except with what is left after the full graphs
    assert plan_graphs(slow, {"text": 4}, 290) == GraphPlan({"text": 2}, {"text": 1})
    # a graph of zero bytes (a locked tower) is always kept
    assert plan_graphs({"image": TowerCost(0, 0.1)}, {"image": 3}, 0).full == {"image": 3}


def test_a_memory_budget_plan_fits_and_measuring_changes_nothing():
    model, _, batch = setup(torch.float32, bn=True)
    full = graph_bytes(model, batch, C)
    stats = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    lines: list[str] = []
    budget = int(2.5 * sum(full.values()))
    plan = chunks_to_keep(model, batch, C, None, budget, report=lines.append)
    used = sum(plan.full[m] * full[m] for m in full)
    assert used <= budget and plan.partial == {"image": 0, "text": 0}
    assert all(plan.full[m] == 4 or budget - used < full[m] for m in full)  # nothing more fits
    assert len(lines) == 1 and "graph plan for image (7,), text (9,)" in lines[0]
    chunks_to_keep(model, batch, C, None, budget, report=lines.append)
    assert len(lines) == 1  # measured once per input shape
    none = {"image": 0, "text": 0}
    assert chunks_to_keep(model, batch, C, 3, None) == GraphPlan({"image": 3, "text": 3}, none)
    with pytest.warns(UserWarning) as warned:  # BatchNorm towers: one warning for each
        assert chunks_to_keep(model, batch, C, None, None, partial=2).partial == none
    assert sorted(str(w.message).split(":")[1] for w in warned) == [
        " no partial graphs for 'image'",
        " no partial graphs for 'text'",
    ]
    with warnings.catch_warnings(record=True) as again:  # once per model, not every step
        warnings.simplefilter("always")
        assert chunks_to_keep(model, batch, C, None, None, partial=2).partial == none
    assert again == []
    plain, _, _ = setup(torch.float32)
    assert chunks_to_keep(plain, batch, C, None, None, partial=2).partial == {"image": 2, "text": 2}
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), stats))
    assert all(p.grad is None for p in model.parameters())  # timing used autograd.grad


def test_errors():
    model, _, batch = setup()
    with pytest.raises(InputError, match="partial must be an integer"):
        embed_in_chunks(model, batch, C, 0, partial=-1)
    with pytest.raises(InputError, match="no modality 'audio'"):
        embed_in_chunks(model, batch, C, {"audio": 1})
    for kwargs, match in [
        ({"chunk_size": 4, "partial_chunks": -1}, "partial_chunks must be an integer"),
        ({"chunk_size": 4, "partial_chunks": 1, "graph_memory": "1GiB"}, "both set"),
        ({"partial_chunks": 1}, "need scale.chunk_size"),
    ]:
        with pytest.raises(ConfigError, match=match):
            ScaleConfig(**kwargs)
    assert ScaleConfig(chunk_size=4, keep_chunks=1, partial_chunks=2).partial_chunks == 2


def _tiny_losses(tmp_path, name, precision, **scale):
    import dataclasses

    from contrastkit.train import RunConfig, read_metrics, train

    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    t = dataclasses.replace(base.train, steps=3, log_every=1, ckpt_every=3, precision=precision)
    cfg = dataclasses.replace(base, scale=ScaleConfig(chunk_size=8, **scale), train=t)
    return [r["loss"] for r in read_metrics(train(cfg).run_dir)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_partial_chunks_skip_a_batchnorm_tower_and_change_no_loss(tmp_path, precision):
    """The tiny run's image tower is a BatchNorm ResNet: ``partial_chunks`` warns and gives it none,
    while the text tower keeps partial graphs — under bf16 autocast too, whose cast cache a partial
    forward turns off (with it, the recompute would run casts its forward reused)."""
    base = _tiny_losses(tmp_path, "plain", precision)
    with pytest.warns(UserWarning, match="no partial graphs for 'image'.*BatchNorm"):
        got = _tiny_losses(tmp_path, "partial", precision, keep_chunks=1, partial_chunks=2)
    assert len(base) == 3 and got == base


class Tokens(Tower):
    """[B, L, 8] → mean over L of Linear(8→6): any length L, as padded text has."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 6)
        self.output_dim = 6

    def forward(self, x):
        return self.net(x).mean(1)


def test_a_new_padded_length_remeasures_bytes_and_reports_only_a_changed_plan():
    torch.manual_seed(0)
    model = DualEncoder({"image": Mlp(), "text": Tokens()}, embed_dim=3)
    lines: list[str] = []

    def plan(length: int, budget: int) -> GraphPlan:
        batch = {"image": torch.randn(8, 8), "text": torch.randn(8, length, 8)}
        return chunks_to_keep(model, batch, 4, None, budget, report=lines.append)

    assert plan(5, 10**9) == GraphPlan({"image": 2, "text": 2}, {"image": 0, "text": 0})
    assert plan(7, 10**9).full == {"image": 2, "text": 2}  # new shape, same plan: no new line
    assert len(lines) == 1 and "text (5, 8)" in lines[0]
    assert plan(9, 0).full == {"image": 0, "text": 0}  # a new shape whose plan differs
    assert len(lines) == 2 and "text (9, 8)" in lines[1] and "image: 0 full of 2" in lines[1]
