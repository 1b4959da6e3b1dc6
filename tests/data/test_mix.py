"""Weighted mixtures of sources: exact quotas, source-pure batches, resumable, rank-split."""

from __future__ import annotations

import csv
import dataclasses
import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.data import DataConfig, ImageConfig, load_split, make_shapes, open_split, train_loader
from contrastkit.data.config import SourceConfig
from contrastkit.data.convert import encode_image
from contrastkit.data.mix import MixBatchSampler, quotas
from contrastkit.train import RunConfig, read_metrics, train


def test_quotas_are_largest_remainder_and_sum_to_the_batch():
    assert quotas(10, [0.7, 0.3]) == [7, 3]
    assert quotas(10, [1, 1, 1]) == [4, 3, 3]  # tie → the earlier source
    assert quotas(7, [0.5, 0.25, 0.25]) == [3, 2, 2]  # 3.5, 1.75, 1.75: the .75s win
    assert quotas(64, [3, 0, 1]) == [48, 0, 16]
    with pytest.raises(ConfigError):
        quotas(8, [0, 0])


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_rows_mode_every_batch_in_proportion_and_each_epoch_a_permutation():
    caps = [[1] * 30, [2] * 12]
    batches = _take(MixBatchSampler(caps, [0.75, 0.25], 8, seed=0), 30)
    for b in batches:
        assert Counter(k[0] for k in b) == {0: 6, 1: 2}
    src1 = [k[1] for b in batches for k in b if k[0] == 1]  # 60 rows = 5 epochs of 12
    for e in range(5):
        assert sorted(src1[12 * e : 12 * (e + 1)]) == list(range(12))
    assert all(k[2] in (0, 1) for b in batches for k in b if k[0] == 1)


def test_batch_mode_is_source_pure_with_frequencies_of_the_weights():
    caps = [[1] * 50, [1] * 50, [1] * 50]
    batches = _take(MixBatchSampler(caps, [0.5, 0.3, 0.2], 10, seed=1, mode="batch"), 5000)
    assert all(len({k[0] for k in b}) == 1 for b in batches)
    freq = np.bincount([b[0][0] for b in batches], minlength=3) / len(batches)
    assert np.abs(freq - [0.5, 0.3, 0.2]).max() < 0.02  # 3 s.e. at n = 5000 is ~0.021


@pytest.mark.parametrize("mode", ["rows", "batch"])
def test_resume_and_rank_shards_reproduce_the_global_stream(mode):
    caps = [[1] * 40, [3] * 25]
    full = _take(MixBatchSampler(caps, [0.6, 0.4], 10, seed=2, mode=mode), 40)
    for k in (1, 17, 33):
        assert _take(MixBatchSampler(caps, [0.6, 0.4], 10, seed=2, start=k, mode=mode), 40 - k) == full[k:]
    r0 = _take(MixBatchSampler(caps, [0.6, 0.4], 10, seed=2, shard=(0, 2), mode=mode), 40)
    r1 = _take(MixBatchSampler(caps, [0.6, 0.4], 10, seed=2, shard=(1, 2), mode=mode), 40)
    assert [list(a) + list(b) for a, b in zip(r0, r1)] == [list(b) for b in full]


def test_a_built_in_set_mixed_with_a_csv_trains_and_batches_carry_the_source(tmp_path):
    pairs = make_shapes("train", n=40, image_size=32, seed=4)
    with open(tmp_path / "p.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for i in range(len(pairs)):
            (tmp_path / f"{i}.png").write_bytes(encode_image(pairs.images[i]))
            w.writerow([f"{i}.png", pairs.captions[i][0]])
    sources = (
        SourceConfig("shapes", {"n": 64, "image_size": 32, "seed": 0}, 0.5),
        SourceConfig("csv", {"path": str(tmp_path / "p.csv")}, 0.5),
    )
    exact = ImageConfig(size=32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))  # identity on 32 px
    cfg = dataclasses.replace(DataConfig.tiny(), sources=sources, image=exact)
    mixture = open_split(cfg, "train")
    loader = train_loader(
        mixture, cfg, lambda t: torch.zeros(len(t), 3, dtype=torch.long), batch_size=8, seed=0
    )
    batch = next(iter(loader))
    keys = next(iter(MixBatchSampler([[2] * 64, [1] * 40], [0.5, 0.5], 8, seed=0)))
    assert batch["source"].tolist() == [k[0] for k in keys] == [0, 0, 0, 0, 1, 1, 1, 1]
    shapes = mixture.parts[0]
    for r, (src, i, _) in enumerate(keys):
        expected = shapes.images[i] if src == 0 else pairs.images[i]
        assert torch.equal(batch["image"][r], expected)
    with pytest.raises(ConfigError, match="evaluate each source"):
        load_split(cfg, "train")

    run = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    run = dataclasses.replace(
        run, data=cfg, train=dataclasses.replace(run.train, steps=3, batch_size=8, log_every=1)
    )
    rows = read_metrics(train(run).run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite([r["loss"] for r in rows]))
    assert rows[-1]["skipped_samples"] == 0
