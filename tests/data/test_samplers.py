"""Batch samplers (data.sampler): composition, determinism, exact resume, rank split, errors."""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, UnknownNameError
from contrastkit.data import SAMPLERS, ClassTask, DataConfig, SamplerConfig, SamplerContext, make_shapes
from contrastkit.data.config import SourceConfig
from contrastkit.data.loading import Mixture, check_data, train_loader
from contrastkit.data.mix import MixBatchSampler
from contrastkit.data.pairs import PairBatchSampler
from contrastkit.data.samplers import build_sampler
from contrastkit.data.zerovl import CoinFlipMixup

# 6 classes of 6…11 items, 4 uncovered items (label −1), 1–3 captions each
LABELS = np.concatenate([np.full(6 + c, c) for c in range(6)] + [np.full(4, -1)])
NCAPS = (np.arange(len(LABELS)) % 3 + 1).astype(np.int64)
TASK = ClassTask(tuple("abcdef"), ("{}",), LABELS)
BOUND = [0, 7, 15, 24, 39, 49]  # the binding set of seed 3


def take(sampler, n: int) -> list:
    return [list(b) for b in itertools.islice(iter(sampler), n)]


def one(name: str, batch_size: int = 6, start: int = 0, shard=(0, 1), **params):
    ctx = SamplerContext.single(
        NCAPS, batch_size, 3, start=start, shard=shard, tasks={"t": TASK}, label_task="t"
    )
    return SAMPLERS.build(name, context=ctx, **params)


SIZES = (40, 80, 120)  # three sources for the mixture samplers


def mixture(name: str, batch_size: int = 8, start: int = 0, shard=(0, 1), **params):
    caps = tuple(np.ones(n, dtype=np.int64) * (i + 1) for i, n in enumerate(SIZES))
    ctx = SamplerContext(caps, batch_size, 3, start, shard, weights=(0.5, 0.25, 0.25))
    return SAMPLERS.build(name, context=ctx, **params)


# ------------------------------------------------------------------------------ random = today's


def test_random_is_todays_pair_batch_sampler_bit_for_bit():
    for start, shard in [(0, (0, 1)), (7, (1, 2)), (40, (3, 4))]:
        old = PairBatchSampler(NCAPS, 8, 3, start, shard)
        new = one("random", 8, start, shard)
        a, b = list(itertools.islice(iter(old), 12)), list(itertools.islice(iter(new), 12))
        assert a == b and [(x.step, x.offset, x.total) for x in a] == [(x.step, x.offset, x.total) for x in b]
    assert take(one("random", 4), 1) == [[(23, 2), (39, 0), (31, 0), (28, 1)]]


def test_random_on_a_mixture_is_todays_mix_batch_sampler():
    caps = [np.ones(n, dtype=np.int64) for n in SIZES]
    for mode in ("rows", "batch"):
        ctx = SamplerContext(tuple(caps), 8, 3, 5, (1, 2), weights=(0.5, 0.25, 0.25), mix=mode)
        old = MixBatchSampler(caps, (0.5, 0.25, 0.25), 8, 3, 5, (1, 2), mode)
        assert take(SAMPLERS.build("random", context=ctx), 10) == take(old, 10)


def test_default_loader_gives_the_same_tensors_as_before(tmp_path):
    pairs = make_shapes("train", 64)
    cfg = DataConfig.tiny()
    assert cfg.sampler == SamplerConfig("random", {})
    tok = lambda texts: torch.tensor([[len(t)] for t in texts])  # noqa: E731
    new = next(iter(train_loader(pairs, cfg, tok, 16, 5, start=3)))
    keys = next(iter(PairBatchSampler([len(c) for c in pairs.captions], 16, 5, 3)))
    assert torch.equal(new["image"], pairs.images[[i for i, _ in keys]])
    assert new["text"].flatten().tolist() == [len(pairs.captions[i][j]) for i, j in keys]


# ------------------------------------------------------------------------------ class_mix


def test_class_mix_has_m_examples_of_c_classes_in_every_batch():
    batches = take(one("class_mix", 6, per_class=2), 60)  # 3 classes × 2 each; 6 classes → 2 batches a round
    for b in batches:
        labs = LABELS[[i for i, _ in b]]
        assert sorted(np.bincount(labs, minlength=6).tolist()) == [0, 0, 0, 2, 2, 2]
        assert len({i for i, _ in b}) == 6 and (labs >= 0).all()  # distinct; uncovered items never drawn
        assert all(0 <= c < NCAPS[i] for i, c in b)
    per_class = np.bincount(np.concatenate([LABELS[[i for i, _ in b]] for b in batches]), minlength=6)
    assert per_class.tolist() == [60] * 6  # each class once per round of 2 batches: 30 rounds × 2 rows


def test_class_mix_walks_each_class_in_epochs():
    batches = take(one("class_mix", 6, per_class=2), 40)
    drawn = [i for b in batches for i, _ in b if LABELS[i] == 5]  # class 5 has 11 items: 5 chunks/epoch
    assert len(drawn) == 40 and len(set(drawn[:10])) == 10 and len(set(drawn[10:20])) == 10


def test_class_mix_rounds_with_left_over_classes_and_binding():
    # 6 classes, 4 per batch: one batch a round, 2 classes sit out (the replay path on resume)
    batches = take(one("class_mix", 8, per_class=2, classes_per_batch=4), 30)
    counts = np.bincount(np.concatenate([LABELS[[i for i, _ in b]] for b in batches]), minlength=6)
    assert counts.sum() == 240 and (counts % 2 == 0).all()
    assert take(one("class_mix", 8, 17, per_class=2, classes_per_batch=4), 5) == batches[17:22]
    bound = take(one("class_mix", 6, per_class=2, batch_binding=True), 12)
    for b in bound:
        assert set(LABELS[[i for i, _ in b]].tolist()) == set(range(6))  # every class, via the binding set
        assert len({i for i, _ in b}) == len(b) and 6 <= len(b) <= 12


def test_class_mix_concrete_first_batch():
    # seed 3: classes 2, 3, 5 open round 0, two examples each, rows shuffled
    b = take(one("class_mix", 6, per_class=2), 1)[0]
    assert sorted(LABELS[[i for i, _ in b]].tolist()) == [2, 2, 3, 3, 5, 5]
    assert b == [(18, 0), (13, 1), (40, 0), (25, 1), (26, 2), (43, 1)]


# ------------------------------------------------------------------------------ batch_binding (spec oracle)


def test_batch_binding_spec_oracle():
    sampler = one("batch_binding", 8)
    bound = sampler.bound(0).tolist()
    assert sorted(LABELS[bound].tolist()) == list(range(6))  # one example per class
    assert bound == BOUND
    plain = take(PairBatchSampler(NCAPS, 8, 3), 18)  # 55 items, batches of 8: 6 batches an epoch
    for b, p in zip(take(sampler, 18), plain):
        assert b[:8] == p  # every epoch shuffles all items (S included) into batches: random's
        present = {i for i, _ in p}
        assert [i for i, _ in b[8:]] == [i for i in bound if i not in present]  # S appended once
        assert len(b) == 8 + 6 - len(present & set(bound)) == len({i for i, _ in b})  # no duplicates
        assert set(LABELS[[i for i, _ in b]].tolist()) >= set(range(6))  # every class in every batch
    epoch0 = [i for p in plain[:6] for i, _ in p]
    assert len(set(epoch0)) == 48  # a permutation of the 55 items, the incomplete last batch dropped
    rebind = one("batch_binding", 8, rebind_each_epoch=True)
    assert rebind.bound(0).tolist() == rebind.bound(5).tolist() == bound  # the same within an epoch
    assert [rebind.bound(6 * e).tolist() != bound for e in range(1, 4)] == [True, True, True]


# ------------------------------------------------------------------------------ single_source (ZeroVL)


def test_single_source_batches_are_source_pure_and_frequencies_follow_sizes():
    batches = take(mixture("single_source"), 10_000)
    src = np.array([b[0][0] for b in batches])
    assert all(len({s for s, _, _ in b}) == 1 for b in batches[:2000])
    counts = np.bincount(src, minlength=3)
    expected = 10_000 * np.array(SIZES) / sum(SIZES)  # ∝ size, not the weights (0.5, 0.25, 0.25)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 13.82  # χ² with 2 degrees of freedom, p = 0.001
    assert counts.tolist() == [1625, 3359, 5016]  # the numbers of seed 3
    first = [b for b in batches if b[0][0] == 0][:5]  # source 0: 40 items = 5 batches an epoch
    assert len({i for b in first for _, i, _ in b}) == 40


def test_single_source_skips_sources_smaller_than_a_batch():
    with pytest.warns(UserWarning, match=r"source\(s\) \[0\] have fewer items than one batch of 48"):
        batches = take(mixture("single_source", 48), 200)
    assert {b[0][0] for b in batches} == {1, 2}


def test_single_source_resume_across_a_block_of_draws():
    fresh = take(mixture("single_source"), 4110)
    assert take(mixture("single_source", start=4090), 20) == fresh[4090:]


# ------------------------------------------------------------------------------ every sampler: invariants


CASES = [  # batch sizes that split over 1, 2 and 4 processes
    ("random", lambda **k: one("random", batch_size=8, **k)),
    ("class_mix", lambda **k: one("class_mix", batch_size=12, per_class=2, **k)),
    ("class_mix/4of6", lambda **k: one("class_mix", per_class=1, classes_per_batch=4, batch_size=4, **k)),
    ("single_source", lambda **k: mixture("single_source", **k)),
    ("source_mix", lambda **k: mixture("source_mix", proportions=[1, 1, 2], **k)),
]
BOUND_CASES = [  # one process only
    ("batch_binding", lambda **k: one("batch_binding", batch_size=8, rebind_each_epoch=True, **k)),
    ("class_mix+binding", lambda **k: one("class_mix", batch_size=8, per_class=2, batch_binding=True, **k)),
]


@pytest.mark.parametrize("name,make", CASES + BOUND_CASES, ids=[c[0] for c in CASES + BOUND_CASES])
def test_same_seed_same_batches_and_exact_resume(name, make):
    fresh = take(make(), 40)
    assert take(make(), 40) == fresh
    assert take(make(), 40) != [list(b) for b in itertools.islice(iter(make()), 1, 41)]  # batches differ
    for k in (1, 7, 23):
        tail = list(itertools.islice(iter(make(start=k)), 40 - k))
        assert [list(b) for b in tail] == fresh[k:] and [b.step for b in tail] == list(range(k, 40))


@pytest.mark.parametrize("name,make", CASES, ids=[c[0] for c in CASES])
def test_rank_shards_make_up_the_global_batch(name, make):
    glob = take(make(), 15)
    for world in (2, 4):
        shards = [list(itertools.islice(iter(make(shard=(r, world))), 15)) for r in range(world)]
        for k in range(15):
            assert [row for r in range(world) for row in shards[r][k]] == glob[k]
            assert [shards[r][k].offset for r in range(world)] == [
                r * len(glob[k]) // world for r in range(world)
            ]


def test_source_mix_quotas():
    for b in take(mixture("source_mix", proportions=[1, 1, 2]), 20):
        assert np.bincount([s for s, _, _ in b], minlength=3).tolist() == [2, 2, 4]
    for b in take(mixture("source_mix"), 5):  # default: the data.sources weights 0.5/0.25/0.25
        assert np.bincount([s for s, _, _ in b], minlength=3).tolist() == [4, 2, 2]
    # 8/3 rows each: floors 2, 2, 2 and equal remainders, the two extra rows to the earlier sources
    batches = take(mixture("source_mix", proportions=[1, 1, 1]), 40)
    assert all(np.bincount([s for s, _, _ in b], minlength=3).tolist() == [3, 3, 2] for b in batches)
    stream0 = [i for b in batches for s, i, _ in b if s == 0]  # source 0 (40 items) walks its epochs
    assert sorted(stream0[:40]) == list(range(40)) and sorted(stream0[40:80]) == list(range(40))
    assert all(c == 0 for b in batches for s, _, c in b if s == 0)  # source 0 has one caption per item
    assert {c for b in batches for s, _, c in b if s == 2} == {0, 1, 2}  # three: drawn uniformly
    with pytest.raises(ConfigError, match=r"'source_mix': 2 proportions for 3 sources"):
        mixture("source_mix", proportions=[1, 1])


# ------------------------------------------------------------------------------ mixup


def test_mixup_draws_and_pixels():
    mix = CoinFlipMixup(prob=1.0)
    draws = [mix.draw(3, k) for k in range(4000)]
    lam = np.array([d[0] for d in draws])
    assert abs(lam.mean() - 0.5) < 0.03 and abs(lam.var() - 0.2083) < 0.02  # Beta(0.1, 0.1)
    assert abs(np.mean([d[1] == "image" for d in draws]) - 0.5) < 0.03
    assert mix.draw(3, 17) == CoinFlipMixup(prob=1.0).draw(3, 17)  # the same on every rank
    some = [CoinFlipMixup(prob=0.3).draw(3, k)[1] is not None for k in range(4000)]
    assert abs(np.mean(some) - 0.3) < 0.03
    step = next(k for k in range(100) if mix.draw(3, k)[1] == "image")
    lam_k = mix.draw(3, step)[0]
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).reshape(5, 3, 2, 2) * 4
    out = mix({"image": images.clone(), "text": list("abcde")}, (3, step, 10))
    want = (lam_k * images.double() + (1 - lam_k) * images.flip(0).double()).round().to(torch.uint8)
    assert torch.equal(out["image"], want) and torch.equal(out["image"][2], images[2])  # middle row: itself
    assert out["mix_partner"].tolist() == [14, 13, 12, 11, 10] and out["mix_text"].tolist() == [0] * 5
    text_step = next(k for k in range(100) if mix.draw(3, k)[1] == "text")
    out = mix({"image": images.clone(), "text": list("abcde")}, (3, text_step, 0))
    assert torch.equal(out["image"], images) and out["mix_text"].tolist() == [1] * 5
    assert out["mix_lambda"].tolist() == [pytest.approx(mix.draw(3, text_step)[0])] * 5


def test_single_source_loader_with_mixup_on_two_ranks():
    cfg = dataclasses.replace(
        DataConfig.tiny(),
        sources=(SourceConfig("shapes", {"n": 48}), SourceConfig("shapes", {"n": 64, "seed": 1})),
        sampler=SamplerConfig("single_source", {"mixup": 1.0}),
    )
    source = Mixture((make_shapes("train", 48), make_shapes("train", 64, seed=1)), (1.0, 1.0))
    tok = lambda texts: torch.zeros(len(texts), 3, dtype=torch.long)  # noqa: E731
    ranks = [
        list(itertools.islice(iter(train_loader(source, cfg, tok, 16, 0, shard=(r, 2))), 6)) for r in (0, 1)
    ]
    mix = CoinFlipMixup(prob=1.0)
    for k, (a, b) in enumerate(zip(*ranks)):
        assert set(a) >= {"image", "text", "source", "mix_lambda", "mix_partner", "mix_text"}
        assert a["source"].unique().tolist() == b["source"].unique().tolist()  # one source, on both ranks
        lam, what = mix.draw(0, k)
        for batch in (a, b):  # the same λ and modality on both ranks
            assert batch["mix_lambda"].tolist() == [pytest.approx(lam)] * 8
            assert batch["mix_text"].tolist() == [int(what == "text")] * 8
        assert a["mix_partner"].tolist() == list(range(7, -1, -1))  # flip inside each rank's batch,
        assert b["mix_partner"].tolist() == list(range(15, 7, -1))  # as global rows


# ------------------------------------------------------------------------------ errors


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"classes_per_batch=4 × per_class=2 = 8 rows, but the batch has 6"):
        one("class_mix", 6, per_class=2, classes_per_batch=4)
    with pytest.raises(ConfigError, match=r"class 0 \('a'\) has 6 item\(s\), fewer than per_class=7"):
        one("class_mix", 7, per_class=7, classes_per_batch=1)
    with pytest.raises(ConfigError, match=r"needs a class task: set data.label_task"):
        SAMPLERS.build("class_mix", context=SamplerContext.single(NCAPS, 6, 0))
    with pytest.raises(ConfigError, match=r"cannot be split into 2 equal process shards"):
        one("batch_binding", 8, shard=(0, 2))
    with pytest.raises(ConfigError, match=r"'single_source' draws among data.sources"):
        one("single_source")
    with pytest.raises(
        UnknownNameError, match=r"unknown sampler 'clas_mix'; available: .*batch_binding, class_mix"
    ):
        build_sampler(SamplerConfig("clas_mix"), SamplerContext.single(NCAPS, 6, 0))
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['m'\]"):
        check_data(DataConfig(sampler=SamplerConfig("class_mix", {"m": 4})), ())
    with pytest.raises(ConfigError, match=r"parameter mixup must be in \[0, 1\], got 2"):
        check_data(DataConfig(sampler=SamplerConfig("single_source", {"mixup": 2})), ())
    with pytest.raises(
        ConfigError, match=r"data.sampler 'source_mix' draws among data.sources; set data.sources"
    ):
        check_data(DataConfig(sampler=SamplerConfig("source_mix")), ())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_data(DataConfig(sampler=SamplerConfig("class_mix", {"per_class": 4})), ())


# ------------------------------------------------------------------------------ end to end


def _run(tmp_path, sub: str, data: DataConfig, loss, steps: int = 8, ckpt_every: int = 100):
    from contrastkit.train import RunConfig

    cfg = RunConfig.tiny(out_dir=str(tmp_path / sub))
    train_cfg = dataclasses.replace(cfg.train, steps=steps, log_every=1, ckpt_every=ckpt_every, batch_size=16)
    return dataclasses.replace(cfg, data=data, loss=loss, train=train_cfg)


def _resumes_exactly(tmp_path, data: DataConfig, loss) -> dict[int, float]:
    import json

    from contrastkit.train import read_metrics, resume, train

    def by_step(run_dir):
        return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}

    train(_run(tmp_path, "full", data, loss))
    train(_run(tmp_path, "cut", data, loss, ckpt_every=4))
    cut = tmp_path / "cut" / "tiny"
    (cut / "checkpoints" / "latest.json").write_text(json.dumps({"step": 4, "path": "step_00000004"}))
    assert resume(cut).step == 8
    full, resumed = by_step(tmp_path / "full" / "tiny"), by_step(cut)
    assert [resumed[k] for k in range(5, 9)] == [full[k] for k in range(5, 9)]
    return full


def test_class_mix_trains_and_resumes_exactly(tmp_path):
    from contrastkit.losses import LossConfig

    data = dataclasses.replace(
        DataConfig.tiny(), label_task="shape", sampler=SamplerConfig("class_mix", {"per_class": 2})
    )
    full = _resumes_exactly(tmp_path, data, LossConfig(name="supcon"))
    assert all(math.isfinite(v) for v in full.values()) and len(full) == 8


def test_single_source_mixup_trains_and_resumes_exactly(tmp_path):
    from contrastkit.losses import LossConfig
    from contrastkit.train.setup import check_config

    data = dataclasses.replace(
        DataConfig.tiny(),
        sources=(SourceConfig("shapes", {"n": 64}), SourceConfig("shapes", {"n": 128, "seed": 1})),
        sampler=SamplerConfig("single_source", {"mixup": 1.0}),
    )
    with pytest.raises(ConfigError, match=r"with mixup adds \['mix_lambda'.*\(mixup_nce\), not 'clip'"):
        check_config(_run(tmp_path, "bad", data, LossConfig(name="clip")))
    full = _resumes_exactly(tmp_path, data, LossConfig(name="mixup_nce"))
    assert all(math.isfinite(v) for v in full.values()) and len(full) == 8


# ------------------------------------------------------------------------------ classes without items


def test_class_mix_and_binding_leave_out_classes_without_items():
    # Shapes' shape+color names all 64 combinations, but the 8 held-out ones never occur in train:
    # those classes are absent from the data and must be skipped, not refused
    labels = np.where(LABELS == 1, -1, LABELS)  # class 1 ('b') has no items now
    task = ClassTask(tuple("abcdef"), ("{}",), labels)
    ctx = SamplerContext.single(NCAPS, 10, 3, tasks={"t": task}, label_task="t")
    batches = take(SAMPLERS.build("class_mix", context=ctx, per_class=2), 40)  # 5 classes × 2
    for b in batches:
        assert np.bincount(labels[[i for i, _ in b]], minlength=6).tolist() == [2, 0, 2, 2, 2, 2]
    assert (
        take(SAMPLERS.build("class_mix", context=dataclasses.replace(ctx, start=13), per_class=2), 5)
        == (batches[13:18])
    )
    three = dataclasses.replace(ctx, batch_size=6)  # 3 of the 5 classes a batch: 2 sit each round out
    assert (
        take(SAMPLERS.build("class_mix", context=dataclasses.replace(three, start=9), per_class=2), 5)
        == (take(SAMPLERS.build("class_mix", context=three, per_class=2), 14)[9:])
    )
    bb = SAMPLERS.build("batch_binding", context=ctx)
    assert sorted(labels[bb.bound(0)].tolist()) == [0, 2, 3, 4, 5]  # one per class that has items
    with pytest.raises(ConfigError, match=r"classes_per_batch=6 but the task has only 5 classes with items"):
        SAMPLERS.build("class_mix", context=dataclasses.replace(ctx, batch_size=6), per_class=1)


def test_class_mix_on_shapes_shape_color():
    pairs = make_shapes("train", 2000, image_size=16)
    ctx = SamplerContext.single([len(c) for c in pairs.captions], 64, 0, tasks=pairs.tasks)
    labels = pairs.tasks["shape+color"].labels
    for b in take(SAMPLERS.build("class_mix", context=ctx, task="shape+color", per_class=4), 10):
        assert sorted(np.bincount(labels[[i for i, _ in b]]).tolist())[-16:] == [4] * 16
    bb = SAMPLERS.build("batch_binding", context=ctx, task="shape+color")
    assert len(bb.bound(0)) == len(set(labels[labels >= 0].tolist())) == 56  # 64 names, 8 held out


# ------------------------------------------------------------------------------ from a YAML config (CLI)

TWO_SOURCES = [
    {
        "name": "shapes",
        "params": {"n": 96, "image_size": 32, "seed": 0, "two_object_fraction": 0.0},
        "weight": 0.7,
    },
    {
        "name": "shapes",
        "params": {"n": 64, "image_size": 32, "seed": 1, "two_object_fraction": 1.0},
        "weight": 0.3,
    },
]
YAML_CASES = {  # data block additions, loss
    "class_mix": (
        {"label_task": "shape+color", "sampler": {"name": "class_mix", "params": {"per_class": 2}}},
        "clip",
    ),
    "batch_binding": ({"label_task": "shape", "sampler": {"name": "batch_binding"}}, "supcon"),
    "single_source": ({"sources": TWO_SOURCES, "sampler": {"name": "single_source"}}, "clip"),
    "source_mix": (
        {"sources": TWO_SOURCES, "sampler": {"name": "source_mix", "params": {"proportions": [1, 3]}}},
        "clip",
    ),
}


@pytest.mark.parametrize("name", list(YAML_CASES))
def test_sampler_from_a_yaml_config_trains_and_resumes_exactly(name, tmp_path):
    # `contrastkit train --config` with data.sampler set: the sampler is used (its losses differ
    # from random's), and a run resumed from a checkpoint continues with exactly the same batches
    import json

    import yaml

    from contrastkit.cli import main
    from contrastkit.core import to_dict
    from contrastkit.train import RunConfig, read_metrics

    extra, loss = YAML_CASES[name]
    cfg = to_dict(RunConfig.tiny())
    cfg["data"].update(extra)
    cfg["loss"] = {"name": loss, "params": {}}
    cfg["train"].update(steps=6, batch_size=16, log_every=1, ckpt_every=100)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))

    def losses(sub: str, *sets: str) -> dict[int, float]:
        sets = (f"out_dir={tmp_path / sub}", *sets)
        assert main(["train", "--config", str(path), *[a for s in sets for a in ("--set", s)]]) == 0
        return {r["step"]: r["loss"] for r in read_metrics(tmp_path / sub / "tiny") if "loss" in r}

    full = losses("full")
    plain = losses("plain", "data.sampler={name: random}", "train.steps=1")
    assert full[1] != plain[1]  # the sampler's batches, not random's
    losses("cut", "train.ckpt_every=3")
    cut = tmp_path / "cut" / "tiny"
    (cut / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "path": "step_00000003"}))
    assert main(["train", "--resume", str(cut)]) == 0
    resumed = {r["step"]: r["loss"] for r in read_metrics(cut) if "loss" in r}
    assert [resumed[k] for k in (4, 5, 6)] == [full[k] for k in (4, 5, 6)]
    assert all(math.isfinite(v) for v in full.values())
