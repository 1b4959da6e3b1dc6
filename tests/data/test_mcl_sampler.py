"""D-MCL data side: the group-pure batch sampler against a naive per-rank oracle, and mixed-radix labels."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.data import SAMPLERS, ClassTask, SamplerContext
from contrastkit.data.mcl import MCLBatchSampler, combine_labels

# 4 groups of 13, 9, 20, 3 items (the last smaller than any batch), labels not 0..G-1, 5 unused
GROUPS = np.concatenate([np.full(13, 7), np.full(9, 2), np.full(20, 11), np.full(3, 4), np.full(5, -1)])
GROUPS = GROUPS[np.random.default_rng(0).permutation(len(GROUPS))]
NCAPS = (np.arange(len(GROUPS)) % 3 + 1).astype(np.int64)


def naive_epoch(groups, ncaps, b, world, seed, epoch):
    """The spec's per-rank algorithm, written out with lists (pop from the end)."""
    rng = np.random.default_rng([seed, 0x4D43, epoch])
    names = sorted({int(g) for g in groups if g >= 0})
    lists = {}
    for g in names:
        members = [i for i in range(len(groups)) if groups[i] == g]
        perm = [members[j] for j in rng.permutation(len(members))]
        kept = perm[: (len(perm) // (b * world)) * b * world]
        lists[g] = [[kept[j] for j in range(len(kept)) if j % world == r] for r in range(world)]
    caps = (rng.random(len(groups)) * ncaps).astype(np.int64)
    out = [[] for _ in range(world)]  # per rank: (group, batch)
    while any(lists[g][0] for g in names):
        for g in names:
            if not lists[g][0]:
                continue
            for r in range(world):
                batch, lists[g][r] = lists[g][r][-b:], lists[g][r][:-b]
                out[r].append((g, [(i, int(caps[i])) for i in batch]))
    return out


def take(sampler, n):
    return [list(x) for x in itertools.islice(iter(sampler), n)]


@pytest.mark.parametrize("world", [1, 2])
def test_matches_naive_oracle_over_epochs(world):
    b = 2
    samplers = [MCLBatchSampler(NCAPS, GROUPS, b * world, 5, 0, (r, world)) for r in range(world)]
    per_epoch = sum(c // (b * world) for c in Counter(GROUPS[GROUPS >= 0].tolist()).values())
    assert samplers[0].batches_per_epoch == per_epoch
    got = [take(s, 2 * per_epoch) for s in samplers]
    for epoch in range(2):
        want = naive_epoch(GROUPS, NCAPS, b, world, 5, epoch)
        assert len(want[0]) == per_epoch  # counts match len
        for r in range(world):
            assert got[r][epoch * per_epoch : (epoch + 1) * per_epoch] == [batch for _, batch in want[r]]
        for k, (g, _) in enumerate(want[0]):
            assert samplers[0].batch_group(epoch * per_epoch + k) == g


def test_group_pure_no_repeats_lockstep_d2():
    b, world = 3, 2
    ranks = [MCLBatchSampler(NCAPS, GROUPS, b * world, 1, 0, (r, world)) for r in range(world)]
    n = ranks[0].batches_per_epoch
    batches = [take(s, n) for s in ranks]
    seen = []
    for k in range(n):
        rows = [i for r in range(world) for i, _ in batches[r][k]]
        assert len(rows) == b * world
        assert len({int(GROUPS[i]) for i in rows}) == 1  # the GLOBAL batch is group-pure
        assert {int(GROUPS[i]) for i, _ in batches[0][k]} == {int(GROUPS[i]) for i, _ in batches[1][k]}
        seen += rows
    assert len(seen) == len(set(seen))  # no index twice per epoch
    assert all(GROUPS[i] not in (-1, 4) for i in seen)  # unused items, a group smaller than bD: never
    assert all(0 <= c < NCAPS[i] for bt in batches[0] for i, c in bt)


def test_exact_resume_and_len_formula():
    full = take(MCLBatchSampler(NCAPS, GROUPS, 4, 9), 30)
    for start in (0, 1, 7, 13, 29):
        assert take(MCLBatchSampler(NCAPS, GROUPS, 4, 9, start), 30 - start) == full[start:]
    s = MCLBatchSampler(NCAPS, GROUPS, 4, 9)
    assert s.batches_per_epoch == 13 // 4 + 9 // 4 + 20 // 4 + 3 // 4
    assert full[: s.batches_per_epoch] != full[s.batches_per_epoch : 2 * s.batches_per_epoch]  # reshuffled


def test_one_group_is_truncated_shuffled_batching():
    groups = np.zeros(23, dtype=np.int64)
    s = MCLBatchSampler(np.ones(23), groups, 4, 0, 0, (1, 2))
    assert s.batches_per_epoch == 23 // 4
    items = [i for bt in take(s, s.batches_per_epoch) for i, _ in bt]
    assert len(items) == len(set(items)) == (23 // 4) * 2


def test_errors():
    with pytest.raises(InputError, match="epoch would be empty"):
        MCLBatchSampler(NCAPS, GROUPS, 32, 0)
    with pytest.raises(InputError, match="group labels for"):
        MCLBatchSampler(NCAPS, GROUPS[:-1], 4, 0)
    with pytest.raises(InputError, match="equal shards"):
        MCLBatchSampler(NCAPS, GROUPS, 5, 0, 0, (0, 2))


def test_mixed_radix_bijection_and_reference_parity():
    rng = np.random.default_rng(1)
    k = 4
    stages = [rng.integers(0, k, 500) for _ in range(3)]
    p = combine_labels(stages, k)
    naive = [sum(int(c[i]) * k ** (2 - s) for s, c in enumerate(stages)) for i in range(500)]
    assert p.tolist() == naive
    tuples = list(zip(*(c.tolist() for c in stages)))
    assert len(set(zip(tuples, p.tolist()))) == len(set(tuples)) == len(set(p.tolist()))  # a bijection
    assert p.min() >= 0 and p.max() < k**3
    ref = combine_labels(stages, k, "current_only")
    assert ref.tolist() == [int(c) * (k**2 + k + 1) for c in stages[-1]]  # c^(t) alone, reloaded per stage
    stages[1][3] = -1
    assert combine_labels(stages, k)[3] == -1
    with pytest.raises(InputError, match="must lie in"):
        combine_labels([np.array([0, 4])], k)
    with pytest.raises(InputError, match="combine must be"):
        combine_labels(stages, k, "both")  # type: ignore[arg-type]


def test_registry_groups_file_and_task(tmp_path):
    path = tmp_path / "groups.npy"
    np.save(path, GROUPS)
    ctx = SamplerContext.single(NCAPS, 4, 2, start=3)
    got = take(SAMPLERS.build("mcl", context=ctx, groups=str(path)), 5)
    assert got == take(MCLBatchSampler(NCAPS, GROUPS, 4, 2, 3), 5)
    task = ClassTask(tuple("abcdefghijkl"), ("{}",), np.where(GROUPS < 0, -1, GROUPS))
    ctx = SamplerContext.single(NCAPS, 4, 2, tasks={"g": task})
    assert take(SAMPLERS.build("mcl", context=ctx, task="g"), 5) == take(
        MCLBatchSampler(NCAPS, GROUPS, 4, 2), 5
    )
    with pytest.raises(ConfigError, match="exactly one of groups"):
        SAMPLERS.build("mcl", context=ctx)
    with pytest.raises(MissingFileError, match="no group-label file"):
        SAMPLERS.build("mcl", context=ctx, groups=str(tmp_path / "nope.npy"))
    np.save(path, GROUPS[:-2])
    with pytest.raises(InputError, match="labels for"):
        SAMPLERS.build("mcl", context=ctx, groups=str(path))
