"""Bad data never stops a run silently and never changes its batches' size or its resumability.

An 80-row CSV of 32-px Shapes images with one missing file, one truncated PNG (its first 100
bytes), one file of random bytes, one empty caption and one 500-word caption (beyond the text
tower's context: truncated and counted, not skipped). With batches of 16 the sampler visits
every row once per epoch, so the expected counts follow from its index stream; substitutes
for skipped rows are recorded as they are tried. Also: config and empty-file errors, broken
and incomplete WebDataset shards, and exact resume with two loader workers.
"""

from __future__ import annotations

import dataclasses
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.data import (
    PairBatchSampler,
    load_split,
    make_shapes,
    open_split,
    source_captions,
    train_loader,
)
from contrastkit.data.convert import write_shards
from contrastkit.data.shards import ShardStream
from contrastkit.data.skips import NOT_SKIPS
from contrastkit.data.table import TableDataset
from contrastkit.models.dual_encoder import ModelConfig, build_model
from contrastkit.train import read_metrics, resume, train
from tests.data._write import (
    all_finite,
    exact,
    logged_losses,
    run_config,
    skip_totals,
    source_config,
    take,
    write_pngs,
    write_table,
)

N, BATCH = 80, 16  # 5 batches per epoch, every row once
EPOCH = N // BATCH
MISSING, TRUNCATED, RANDOM, EMPTY, LONG = 3, 17, 29, 41, 55
REASON = {
    MISSING: "missing file",
    TRUNCATED: "bad image",
    RANDOM: "bad image",
    EMPTY: "empty caption",
    LONG: "truncated caption",  # used, not skipped
}
UNUSABLE = (MISSING, TRUNCATED, RANDOM, EMPTY)


@dataclasses.dataclass
class Bad:
    folder: Path
    pairs: object  # the Shapes PairSet the files were written from
    captions: list[str]  # the CSV's caption per row
    cfg: object  # DataConfig of the CSV
    table: object  # its PairTable
    model: object  # the tiny model train() builds (tokenizer, context)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Bad:
    folder = tmp_path_factory.mktemp("bad")
    pairs = make_shapes("train", n=N, image_size=32)
    names = write_pngs(pairs, folder)
    captions = [c[0] for c in pairs.captions]
    (folder / names[MISSING]).unlink()
    png = folder / names[TRUNCATED]
    png.write_bytes(png.read_bytes()[:100])
    (folder / names[RANDOM]).write_bytes(np.random.default_rng(0).bytes(2000))
    captions[EMPTY] = ""
    captions[LONG] = " ".join((captions[LONG].split() * 500)[:500])
    path = write_table(folder / "pairs.csv", ["image", "caption"], zip(names, captions))
    cfg = source_config("csv", {"path": str(path)}, exact(32))
    table = open_split(cfg, "train")
    model = build_model(ModelConfig.tiny(), texts=source_captions(table))
    assert model.count_truncated(captions) == 1  # only the 500-word caption exceeds the context
    return Bad(folder, pairs, captions, cfg, table, model)


def _loader(bad: Bad, cfg=None, start: int = 0):
    """Batches with captions kept as strings (tokenize = list) and truncation counted as in training."""
    return train_loader(
        bad.table, cfg or bad.cfg, list, BATCH, 0, start=start, truncated=bad.model.count_truncated
    )


def _sum_skips(batches) -> Counter:
    total: Counter = Counter()
    for b in batches:
        total.update(b["_skips"])
    return total


@pytest.mark.parametrize("epochs", [1, 3])
def test_batches_stay_full_and_skips_count_every_hit(bad, monkeypatch, epochs):
    tried: list[tuple[tuple, int]] = []  # (seed, step, row in batch) → image rows tried, in order
    sample = TableDataset._sample

    def recording(self, i, j, key):
        tried.append((tuple(key), i))
        return sample(self, i, j, key)

    monkeypatch.setattr(TableDataset, "_sample", recording)
    n = epochs * EPOCH
    batches = take(_loader(bad), n)

    sampled = [i for b in take(PairBatchSampler([1] * N, BATCH, 0), n) for i, _ in b]
    assert Counter(i for i in sampled if i in REASON) == {r: epochs for r in REASON}  # once per epoch
    first, extra, last = {}, [], {}
    for key, i in tried:
        if key in first:
            extra.append(i)  # a substitute, tried after the row at this place was unusable
        first.setdefault(key, i)
        last[key] = i
    assert list(first.values()) == sampled  # rows are tried in the sampler's order …
    expected = Counter(REASON[i] for i in sampled + extra if i in REASON)  # … and every hit counts
    counts = _sum_skips(batches)
    assert counts == expected
    assert counts["missing file"] >= epochs and counts["bad image"] >= 2 * epochs
    assert counts["empty caption"] >= epochs and counts["truncated caption"] >= epochs
    skipped = sum(v for k, v in counts.items() if k not in NOT_SKIPS)
    assert len(extra) == skipped  # each skip draws exactly one substitute

    used = list(last.values())  # the row finally used at each place
    assert not set(used) & set(UNUSABLE)
    for k, b in enumerate(batches):
        rows = used[k * BATCH : (k + 1) * BATCH]
        assert b["image"].shape == (BATCH, 3, 32, 32) and len(b["text"]) == BATCH
        assert torch.equal(b["image"], bad.pairs.images[rows])
        assert b["text"] == [bad.captions[i] for i in rows]


def test_substitutes_are_deterministic_across_loaders_workers_and_restarts(bad):
    first = take(_loader(bad), 3 * EPOCH)
    again = take(_loader(bad), 3 * EPOCH)
    workers = take(_loader(bad, dataclasses.replace(bad.cfg, num_workers=2)), 3 * EPOCH)
    restarted = take(_loader(bad, start=7), 3 * EPOCH - 7)
    assert sum(_sum_skips(first).values()) > 0
    for other, offset in ((again, 0), (workers, 0), (restarted, 7)):
        for a, b in zip(first[offset:], other, strict=True):
            assert torch.equal(a["image"], b["image"])
            assert a["text"] == b["text"] and a["_skips"] == b["_skips"]


def test_training_logs_the_skip_counts(bad, tmp_path):
    result = train(run_config(tmp_path, "skips", bad.cfg, steps=EPOCH, batch_size=BATCH))
    rows = [r for r in read_metrics(result.run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, EPOCH + 1)) and all_finite(r["loss"] for r in rows)
    total: Counter = Counter()
    for row, batch in zip(rows, take(_loader(bad), EPOCH), strict=True):
        total.update(batch["_skips"])  # the logged values are running totals
        assert skip_totals(row) == {k: float(v) for k, v in total.items() if v}
        assert row["skipped_samples"] == sum(v for k, v in total.items() if k not in NOT_SKIPS)
    assert set(total) == {"missing file", "bad image", "empty caption", "truncated caption"}
    assert total["bad image"] >= 2 and min(total.values()) >= 1


def test_skip_limit_stops_training_naming_the_reasons(bad, tmp_path):
    strict = dataclasses.replace(bad.cfg, max_skip_fraction=0.0, skip_grace=0)
    batches = take(_loader(bad, strict), EPOCH)
    k = next(k for k, b in enumerate(batches) if set(b["_skips"]) - NOT_SKIPS)  # first with a skip
    total = _sum_skips(batches[: k + 1])
    skipped = sum(v for r, v in total.items() if r not in NOT_SKIPS)
    with pytest.raises(DataError) as err:
        train(run_config(tmp_path, "strict", strict, steps=EPOCH, batch_size=BATCH))
    msg = str(err.value)
    read = (k + 1) * BATCH + skipped
    assert f"{skipped} of {read} samples read were unusable" in msg and "data.max_skip_fraction" in msg
    for reason, v in total.items():
        assert f"{reason}: {v}" in msg
    assert sorted(logged_losses(tmp_path / "strict")) == list(range(1, k + 1))  # steps before it ran


def test_truncated_captions_alone_never_stop_training(bad, tmp_path):
    rows = [(f"{i:03d}.png", c) for i, c in enumerate(bad.captions) if i not in UNUSABLE]
    path = write_table(bad.folder / "long.csv", ["image", "caption"], rows)
    strict = source_config("csv", {"path": str(path)}, exact(32), max_skip_fraction=0.0, skip_grace=0)
    steps = 2 * EPOCH
    sampled = [i for b in take(PairBatchSampler([1] * len(rows), BATCH, 0), steps) for i, _ in b]
    drawn = sum(rows[i][1] == bad.captions[LONG] for i in sampled)
    assert drawn >= 1
    result = train(run_config(tmp_path, "long", strict, steps=steps, batch_size=BATCH))
    last = read_metrics(result.run_dir)[-1]
    assert result.step == steps and last["skipped_samples"] == 0.0
    assert skip_totals(last) == {"truncated caption": float(drawn)}


def test_load_split_drops_unusable_rows_and_counts_them(bad):
    with pytest.warns(UserWarning, match="skipped") as caught:
        pairs = load_split(bad.cfg, "train")
    msg = str(caught[0].message)
    for part in ("'missing file': 1", "'bad image': 2", "'empty caption': 1"):
        assert part in msg
    keep = [i for i in range(N) if i not in UNUSABLE]
    assert len(pairs) == N - 4 and torch.equal(pairs.images, bad.pairs.images[keep])
    assert pairs.captions == tuple((bad.captions[i],) for i in keep)  # the long caption is kept


def test_config_naming_a_missing_column_lists_the_columns(bad):
    for params, what in (
        ({"caption_columns": ["text"]}, r"no caption column\(s\) \['text'\]"),
        ({"label_columns": ["label"]}, r"no label/extra column\(s\) \['label'\]"),
        ({"image_column": "path"}, r"no image column\(s\) \['path'\]"),
    ):
        cfg = source_config("csv", {"path": str(bad.folder / "pairs.csv"), **params}, exact(32))
        with pytest.raises(ConfigError, match=what + r"; columns are \['image', 'caption'\]"):
            open_split(cfg, "train")


def test_empty_tables_are_data_errors(tmp_path):
    header_only = write_table(tmp_path / "empty.csv", ["image", "caption"], [])
    with pytest.raises(DataError, match="has no rows"):
        open_split(source_config("csv", {"path": str(header_only)}, exact(32)), "train")
    with pytest.raises(DataError, match=r"split.csv: no rows with split = 'test'; values: "):
        open_split(_split_csv(tmp_path), "test")


def _split_csv(folder: Path):
    rows = [["a.png", "x", "train"], ["b.png", "y", "val"]]
    path = write_table(folder / "split.csv", ["image", "caption", "split"], rows)
    params = {"path": str(path), "split_column": "split"}
    return source_config("csv", params, exact(32), splits={"train": {}, "test": {}})


def test_missing_split_error_lists_the_values_plainly(tmp_path):
    with pytest.raises(DataError, match=r"values: \['train', 'val'\]$"):
        open_split(_split_csv(tmp_path), "test")


def test_zero_byte_csv_is_a_data_error(tmp_path):
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(DataError):
        open_split(source_config("csv", {"path": str(tmp_path / "zero.csv")}, exact(32)), "train")


# --- WebDataset shards ------------------------------------------------------------------------


def _shards(folder: Path):
    """80 Shapes samples in 4 shards of 20 (keys 000000000 … 000000079); returns (pairs, config)."""
    pairs = make_shapes("train", n=N, image_size=32)
    manifest = write_shards(pairs, folder, shard_size=20)
    params = {"urls": str(folder / manifest["urls"]), "shuffle_buffer": 8}
    return pairs, source_config("webdataset", params, exact(32))


def _one_epoch(cfg) -> dict:
    """Every sample of epoch 0 in one (partial) batch, with keys."""
    (batch,) = ShardStream(open_split(cfg, "train"), cfg.image, 4 * N, 0, keys=True, epochs=1)
    return batch


def test_truncated_shard_counts_bad_shard_and_training_continues(tmp_path):
    pairs, cfg = _shards(tmp_path / "wds")
    shard = tmp_path / "wds" / "shard-000001.tar"  # keys 20 … 39
    with tarfile.open(shard) as tar:
        member = tar.getmember("000000030.png")
        cut = member.offset_data + member.size // 2  # mid-image of sample 30
    shard.write_bytes(shard.read_bytes()[:cut])

    epoch = _one_epoch(cfg)
    assert epoch["_skips"] == {"bad shard": 1}
    rows = sorted(int(k) for k in epoch["__key__"])
    assert rows == [i for i in range(N) if not 30 <= i < 40]  # samples 20 … 29 before the cut survive
    order = [int(k) for k in epoch["__key__"]]
    assert torch.equal(epoch["image"], pairs.images[order])

    steps = 8  # 128 samples: all of epoch 0 (70) and most of epoch 1
    result = train(run_config(tmp_path, "wds", cfg, steps=steps, batch_size=BATCH))
    losses = logged_losses(result.run_dir)
    assert sorted(losses) == list(range(1, steps + 1)) and all_finite(losses.values())
    counts = _sum_skips(take(train_loader(open_split(cfg, "train"), cfg, list, BATCH, 0), steps))
    assert counts["bad shard"] >= 1 and set(counts) == {"bad shard"}
    assert skip_totals(read_metrics(result.run_dir)[-1]) == {"bad shard": float(counts["bad shard"])}

    with pytest.warns(UserWarning, match=r"skipped \{'bad shard': 1\}"):
        decoded = load_split(cfg, "train")
    assert len(decoded) == 70


def test_shard_sample_without_caption_is_a_missing_key(tmp_path):
    pairs, cfg = _shards(tmp_path / "wds")
    shard = tmp_path / "wds" / "shard-000002.tar"  # keys 40 … 59
    copy = tmp_path / "copy.tar"
    with tarfile.open(shard) as src, tarfile.open(copy, "w") as dst:
        for m in src:
            if m.name != "000000045.txt":
                dst.addfile(m, src.extractfile(m))
    copy.replace(shard)

    epoch = _one_epoch(cfg)
    assert epoch["_skips"] == {"missing key": 1}
    order = [int(k) for k in epoch["__key__"]]
    assert sorted(order) == [i for i in range(N) if i != 45]
    assert torch.equal(epoch["image"], pairs.images[order])
    assert epoch["text"] == [pairs.captions[i][0] for i in order]


# --- resume -----------------------------------------------------------------------------------


class _Interrupted(Exception):
    pass


def test_resume_with_two_workers_equals_the_uninterrupted_run(bad, tmp_path):
    data = dataclasses.replace(bad.cfg, num_workers=2)
    full = train(run_config(tmp_path / "full", "csv", data, steps=12, ckpt_every=4, batch_size=BATCH))

    def stop_after_step_9(step, model):  # after the checkpoint at step 8, before the one at 12
        if step == 9:
            raise _Interrupted
        return {}

    cut_cfg = run_config(tmp_path / "cut", "csv", data, steps=12, ckpt_every=4, batch_size=BATCH)
    with pytest.raises(_Interrupted):
        train(cut_cfg, callbacks=[(1, stop_after_step_9)])
    assert sorted(p.name for p in (tmp_path / "cut" / "csv" / "checkpoints").glob("step_*")) == [
        "step_00000004",
        "step_00000008",
    ]
    resumed = resume(tmp_path / "cut" / "csv")
    assert resumed.step == full.step == 12

    def by_step(run_dir):
        rows = [r for r in read_metrics(run_dir) if "loss" in r]
        return {r["step"]: (r["loss"], r["grad_norm"], r["skipped_samples"], skip_totals(r)) for r in rows}

    a, b = by_step(full.run_dir), by_step(resumed.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert a == b  # every step's loss, gradient norm and running skip totals, bit for bit
    totals = a[12][3]
    assert totals["missing file"] >= 2 and totals["bad image"] >= 4 and totals["empty caption"] >= 2
    assert a[12][2] == sum(v for k, v in totals.items() if k not in NOT_SKIPS)
    assert resumed.last_loss == full.last_loss
