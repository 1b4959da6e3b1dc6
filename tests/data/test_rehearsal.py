"""D-REHEARSAL: herding picks, class-balanced memories, and the replaying batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.batching import SamplerContext
from contrastkit.data.pairs import ClassTask
from contrastkit.data.rehearsal import (
    REHEARSAL_KEY,
    RehearsalBatchSampler,
    assemble_memory,
    class_quotas,
    herding_order,
    rehearsal_sampler,
    select_class,
)
from contrastkit.data.samplers import SAMPLERS


def test_herding_on_hand_made_features_returns_the_expected_indices():
    # 1-D: μ = 3.25; pick 2 (|2−3.25|), then x nearest 2·3.25−2 = 4.5 → 1, then 6.75 → 10 (row 3), then 0
    assert herding_order(np.array([[0.0], [1.0], [2.0], [10.0]]), 4).tolist() == [2, 1, 3, 0]
    # 2-D: μ = (0.02, 0): (0.1, 0) first; then nearest (−0.06, 0) → (−1, 0); then (0.96, 0) → (1, 0);
    # then (−0.02, 0): (0, 1) and (0, −1) tie → the lower index 2, then 3
    f = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.1, 0.0]])
    assert herding_order(f, 5).tolist() == [4, 1, 0, 2, 3]
    assert herding_order(f, 2).tolist() == [4, 1]  # a prefix: the order does not depend on k
    assert herding_order(f, 9).tolist() == [4, 1, 0, 2, 3]  # k > n: every row once
    with pytest.raises(InputError, match="finite"):
        herding_order(np.array([[np.nan, 0.0]]), 1)


def test_herding_keeps_the_running_mean_closest_to_the_class_mean_greedily():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(30, 4))
    order = herding_order(f, 10)
    mu = f.mean(0)
    for k in range(1, 11):  # naive: at each step no other unpicked row gives a closer running mean
        prefix = f[order[: k - 1]].sum(0)
        best = np.linalg.norm(mu - (prefix + f[order[k - 1]]) / k)
        others = [np.linalg.norm(mu - (prefix + f[j]) / k) for j in range(30) if j not in order[: k - 1]]
        assert best <= min(others) + 1e-12


def test_class_quotas_and_memory_counts_are_balanced_and_deterministic_from_the_seed():
    assert class_quotas([3, 1, 7], 10) == {3: 4, 1: 3, 7: 3}
    assert class_quotas([5, 2], 0) == {5: 0, 2: 0} and class_quotas([], 4) == {}
    labels = np.repeat(np.arange(6), [50, 40, 30, 60, 45, 35])
    rng_items = {c: np.flatnonzero(labels == c) for c in range(6)}
    rank = {c: select_class(rng_items[c], 20, "random", seed=7, label=c) for c in range(6)}
    memory = assemble_memory(rank, [0, 1, 2, 3, 4, 5], 50)  # 50 over 6 classes: 9, 9, 8, 8, 8, 8
    assert np.bincount(labels[memory], minlength=6).tolist() == [9, 9, 8, 8, 8, 8]
    assert len(set(memory.tolist())) == 50
    again = {c: select_class(rng_items[c], 20, "random", seed=7, label=c) for c in range(6)}
    assert np.array_equal(assemble_memory(again, list(range(6)), 50), memory)  # the seed decides
    other = {c: select_class(rng_items[c], 20, "random", seed=8, label=c) for c in range(6)}
    assert not np.array_equal(assemble_memory(other, list(range(6)), 50), memory)
    first = assemble_memory(rank, [0, 1], 50)  # after the first stage: 25 each, same order
    assert np.bincount(labels[first], minlength=6).tolist() == [20, 20, 0, 0, 0, 0]  # ranked only 20
    assert np.array_equal(memory[:9], first[:9])  # a shrinking class keeps the prefix of its ranking
    herded = select_class(rng_items[0], 3, "herding", features=np.arange(50.0)[:, None])
    assert herded.tolist() == rng_items[0][herding_order(np.arange(50.0)[:, None], 3)].tolist()
    with pytest.raises(ConfigError, match="selection"):
        select_class(rng_items[0], 3, "best")


def _context(labels: np.ndarray, batch: int, start: int = 0, shard=(0, 1)) -> SamplerContext:
    task = ClassTask(("a", "b", "c", "d"), ("{}",), labels)
    n_caps = np.full(len(labels), 2)
    return SamplerContext.single(n_caps, batch, seed=3, start=start, shard=shard, tasks={"t": task})


def test_rehearsal_batches_are_current_rows_then_memory_rows_flagged_and_resumable(tmp_path):
    labels = np.repeat(np.arange(4), 25)
    memory = np.array([0, 3, 7, 30, 31, 40, 44, 45])  # classes a and b
    np.save(tmp_path / "m.npy", memory)
    ctx = _context(labels, 16)
    s = SAMPLERS.build("rehearsal", context=ctx, classes=("c", "d"), task="t", memory=str(tmp_path / "m.npy"),
                       memory_per_batch=4)  # fmt: skip
    it = iter(s)
    batches = [next(it) for _ in range(6)]
    for b in batches:
        items = np.array([i for i, _ in b])
        assert set(labels[items[:12]].tolist()) <= {2, 3} and set(items[12:].tolist()) <= set(memory.tolist())
        assert len(set(items[12:].tolist())) == 4 and all(0 <= j < 2 for _, j in b)
    seen = [i for b in batches[:2] for i, _ in b[12:]]
    assert sorted(seen) == sorted(memory.tolist())  # the memory is walked in epochs
    resumed = iter(SAMPLERS.build("rehearsal", context=_context(labels, 16, start=4), classes=("c", "d"),
                                  task="t", memory=str(tmp_path / "m.npy"), memory_per_batch=4))  # fmt: skip
    assert list(next(resumed)) == list(batches[4])
    flag = s.transform({"image": torch.zeros(16)}, (3, 0, 0))
    assert flag[REHEARSAL_KEY].tolist() == [False] * 12 + [True] * 4
    mem = str(tmp_path / "m.npy")
    ranks = [rehearsal_sampler(_context(labels, 16, shard=(r, 2)), ("c", "d"), "t", mem, 4) for r in range(2)]
    flag = ranks[1].transform({"image": torch.zeros(8)}, (3, 0, 8))  # rank 1 of 2: global rows 8 … 15
    assert flag[REHEARSAL_KEY].tolist() == [False] * 4 + [True] * 4
    halves = [next(iter(r)) for r in ranks]
    assert list(halves[0]) + list(halves[1]) == list(batches[0])


def test_rehearsal_defaults_and_errors(tmp_path):
    labels = np.repeat(np.arange(4), 25)
    np.save(tmp_path / "m.npy", np.arange(10))
    s = rehearsal_sampler(_context(labels, 20), ("c", "d"), "t", str(tmp_path / "m.npy"))
    assert s.memory_per_batch == round(20 * 10 / 60)  # the memory's share of the pooled data: 3
    none = rehearsal_sampler(_context(labels, 20), ("c",), "t")  # no memory: the stage's classes only
    assert none.memory_per_batch == 0
    assert set(labels[[i for i, _ in next(iter(none))]].tolist()) == {2}
    with pytest.raises(ConfigError, match="unknown"):
        rehearsal_sampler(_context(labels, 20), ("c", "zebra"), "t")
    with pytest.raises(ConfigError, match="holds 10 items"):
        rehearsal_sampler(_context(labels, 20), ("c",), "t", str(tmp_path / "m.npy"), 12)
    with pytest.raises(ConfigError, match="fewer than"):
        RehearsalBatchSampler(np.ones(100), np.arange(5), np.arange(3), 8, 2, seed=0)
    np.save(tmp_path / "bad.npy", np.array([0, 100]))
    with pytest.raises(InputError, match="outside"):
        rehearsal_sampler(_context(labels, 20), ("c",), "t", str(tmp_path / "bad.npy"))
