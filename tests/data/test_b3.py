"""b3 sampler (S-B3): the k-NN window, communities, batch filling, determinism, resume, rank split,
and the teacher embeddings the trainer computes."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.data import SAMPLERS, SamplerContext
from contrastkit.data.b3 import (
    B3Sampler,
    b3_communities,
    b3_graph,
    b3_neighbours,
    load_embeddings,
    mine_communities,
)
from contrastkit.data.pairs import PairSet


def take(sampler, n: int) -> list[list[tuple[int, int]]]:
    return [list(b) for b in itertools.islice(iter(sampler), n)]


def naive_window(q: np.ndarray, t: np.ndarray, p: int, m: int) -> list[list[int]]:
    """Ranks [p, p+m) of every row among j != i by cosine, by a plain sort."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    out = []
    for i in range(len(q)):
        others = [j for j in range(len(q)) if j != i]
        ranked = sorted(others, key=lambda j: -float(q[i] @ t[j]))
        out.append(ranked[p : p + m])
    return out


def clusters(k: int, size: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, list[set[int]]]:
    """``k`` tight, mutually orthogonal clusters of ``size`` points (item ``i`` in cluster ``i % k``)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:k] * 10
    owner = np.arange(k * size) % k
    x = centres[owner] + rng.normal(scale=0.1, size=(k * size, d))
    return x.astype(np.float32), [set(np.flatnonzero(owner == c).tolist()) for c in range(k)]


def test_window_matches_a_plain_sort():
    rng = np.random.default_rng(1)
    q, t = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    for p, m in [(0, 5), (3, 7), (30, 20)]:  # the last is cut at n − 1
        got = b3_neighbours(q, t, p, m)
        assert got.tolist() == naive_window(q, t, p, m)
    assert b3_neighbours(q, t, 2, 0).shape == (40, 0)


def test_planted_cliques_become_the_batches():
    x, groups = clusters(4, 16)
    parts = mine_communities(x, x, batch_size=16, seed=0, p=0, m=15)  # every clique complete
    assert sorted(map(set, (c.tolist() for c in parts)), key=min) == sorted(groups, key=min)
    s = B3Sampler(np.ones(64, dtype=np.int64), parts, 16, seed=5)
    for batch in take(s, 12):  # three epochs: each batch is one whole clique
        assert {i for i, _ in batch} in groups


def test_two_clusters_batches_stay_inside():
    x, groups = clusters(2, 64)
    parts = mine_communities(x, x, batch_size=32, seed=0, p=2, m=10)
    for c in parts:  # a community never mixes the clusters
        assert any(set(c.tolist()) <= g for g in groups)
    s = B3Sampler(np.ones(128, dtype=np.int64), parts, 32, seed=1)
    for batch in take(s, 8):  # clusters of 64 = two whole batches each: never mixed
        assert any({i for i, _ in batch} <= g for g in groups)


def test_each_item_once_per_epoch_and_leftover_batch():
    x = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    parts = mine_communities(x, x, batch_size=10, seed=0, p=1, m=4)
    s = B3Sampler(np.ones(100, dtype=np.int64), parts, 10, seed=2)
    for e in range(2):
        items = [i for b in take(B3Sampler(np.ones(100), parts, 10, 2, start=10 * e), 10) for i, _ in b]
        assert sorted(items) == list(range(100))
    assert s.batches_per_epoch == 10
    odd = B3Sampler(np.ones(103, dtype=np.int64), [*parts, np.array([100, 101, 102])], 10, seed=2)
    epoch = take(odd, 11)
    assert odd.batches_per_epoch == 11 and all(len(b) == 10 for b in epoch)
    last = [i for i, _ in epoch[-1]]
    assert len(set(last)) == 10  # leftovers completed with distinct items
    assert {i for b in epoch for i, _ in b} == set(range(103))


def test_m_zero_is_random_batching():
    x = np.random.default_rng(0).normal(size=(60, 4))
    parts = mine_communities(x, x, batch_size=10, seed=0, p=0, m=0)
    assert all(len(c) == 1 for c in parts) and len(parts) == 60
    firsts = {
        tuple(sorted(i for i, _ in take(B3Sampler(np.ones(60), parts, 10, seed), 1)[0])) for seed in range(5)
    }
    assert len(firsts) == 5  # seed-dependent random batches


def test_tiny_set_falls_back_to_random_with_a_warning():
    x = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.warns(UserWarning, match="too few to mine"):
        parts = mine_communities(x, x, batch_size=16, seed=0)
    assert len(parts) == 30


def test_louvain_is_seeded_and_sorted():
    x, _ = clusters(3, 20)
    g = b3_graph(b3_neighbours(x, x, 0, 6))
    a, b = b3_communities(g, seed=4), b3_communities(g, seed=4)
    assert [c.tolist() for c in a] == [c.tolist() for c in b]
    assert [int(c[0]) for c in a] == sorted(int(c[0]) for c in a)


def test_determinism_resume_and_rank_split():
    x = np.random.default_rng(3).normal(size=(90, 5))
    parts = mine_communities(x, x, batch_size=12, seed=0, p=2, m=6)
    caps = np.arange(90) % 3 + 1
    full = take(B3Sampler(caps, parts, 12, seed=7), 20)
    assert full == take(B3Sampler(caps, parts, 12, seed=7), 20)
    assert full != take(B3Sampler(caps, parts, 12, seed=8), 20)
    assert take(B3Sampler(caps, parts, 12, seed=7, start=13), 7) == full[13:]  # across an epoch
    shards = [take(B3Sampler(caps, parts, 12, seed=7, shard=(r, 3)), 20) for r in range(3)]
    assert [[row for s in shards for row in s[k]] for k in range(20)] == full
    assert all(c < caps[i] for b in full for i, c in b)


def test_registry_reads_the_cached_embeddings(tmp_path: Path):
    x, groups = clusters(4, 16)
    path = tmp_path / "e.npz"
    np.savez(path, query=x, target=x)
    ctx = SamplerContext.single([1] * 64, 16, 0)
    s = SAMPLERS.build("b3", context=ctx, embeddings=str(path), p=0, m=15)
    assert all({i for i, _ in b} in groups for b in take(s, 8))
    np.savez(tmp_path / "one.npz", embeddings=x)
    q, t = load_embeddings(str(tmp_path / "one.npz"))
    assert np.array_equal(q, t)
    with pytest.raises(ConfigError, match="needs teacher embeddings"):
        SAMPLERS.build("b3", context=ctx)
    with pytest.raises(InputError, match="63 teacher embeddings for 64"):
        np.savez(tmp_path / "short.npz", embeddings=x[:63])
        SAMPLERS.build("b3", context=ctx, embeddings=str(tmp_path / "short.npz"))
    with pytest.raises(ConfigError, match="data.sources"):
        SAMPLERS.build(
            "b3",
            context=SamplerContext((np.ones(64), np.ones(64)), 16, 0, weights=(1, 1)),
            embeddings=str(path),
        )


# ----------------------------------------------------------------------------------- train layer
def test_config_checks_before_any_data():
    from contrastkit.train.config import RunConfig
    from contrastkit.train.setup import check_config

    def cfg(params: dict) -> RunConfig:
        from contrastkit.core.config import from_dict

        return from_dict(RunConfig, {"data": {"sampler": {"name": "b3", "params": params}}})

    with pytest.raises(ConfigError, match="needs its teacher"):
        check_config(cfg({}))
    with pytest.raises(MissingFileError, match="no such run folder"):
        check_config(cfg({"teacher": "no/such/run"}))
    with pytest.raises(MissingFileError, match="no embeddings file"):
        check_config(cfg({"embeddings": "no/such.npz"}))


def test_teacher_embeddings_equal_a_loop():
    from contrastkit.models.dual_encoder import ModelConfig, build_model
    from contrastkit.train.teacher import teacher_embeddings

    torch.manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    caps = (("a red square",), ("a blue circle", "blue round"), ("green",), ("x y", "y", "z"), ("q",))
    pairs = PairSet(images, caps)
    model = build_model(ModelConfig.tiny(), texts=[c for cs in caps for c in cs]).eval()
    q, t = teacher_embeddings(model, pairs, batch_size=2)
    with torch.no_grad():
        for i in range(5):
            img = F.normalize(model.encode("image", images[i : i + 1]), dim=-1)[0]
            assert np.allclose(q[i], img.numpy(), atol=1e-5)
            txt = F.normalize(model.encode("text", model.tokenize(list(caps[i]))), dim=-1).mean(0)
            assert np.allclose(t[i], F.normalize(txt, dim=0).numpy(), atol=1e-5)


@pytest.mark.slow
def test_b3_run_with_a_run_as_teacher(tmp_path: Path):
    """A 2-step teacher run, then a b3 run that caches its embeddings and resumes exactly."""
    from contrastkit.core.config import from_dict
    from contrastkit.train.config import RunConfig
    from contrastkit.train.trainer import resume, train

    base = {
        "out_dir": str(tmp_path),
        "data": {
            "params": {"image_size": 32},
            "splits": {"train": {"n": 160}, "test": {"n": 20}},
            "eval_splits": ["test"],
        },
        "train": {"steps": 2, "batch_size": 16, "progress": False, "ckpt_every": 2, "threads": 1},
    }
    model = {"towers": {k: {"name": v.name, "params": v.params} for k, v in _tiny().towers.items()}}
    model["embed_dim"] = 32
    train(from_dict(RunConfig, {**base, "name": "teacher", "model": model}))
    b3 = {"name": "b3", "params": {"teacher": str(tmp_path / "teacher"), "p": 2, "m": 8}}
    cfg = {**base, "name": "student", "model": model}
    cfg["data"] = {**base["data"], "sampler": b3}
    cfg["train"] = {**base["train"], "steps": 4}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(from_dict(RunConfig, cfg))
    z = np.load(tmp_path / "student" / "b3_teacher.npz")
    assert z["query"].shape == (160, 32) and str(z["teacher"]) == str(tmp_path / "teacher")
    resume(tmp_path / "student", steps=6)  # the cache is reused


def _tiny():
    from contrastkit.models.dual_encoder import ModelConfig

    return ModelConfig.tiny()
