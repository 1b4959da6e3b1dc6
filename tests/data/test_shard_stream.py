"""WebDataset streams: split by rank and worker, exact position, resumable."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from contrastkit.core.errors import ConfigError
from contrastkit.data import ImageConfig, make_shapes
from contrastkit.data.convert import write_shards
from contrastkit.data.shards import POS_KEY, ShardStream, make_webdataset
from contrastkit.scale.launch import spawn_gloo

N, SHARD = 90, 10  # 9 shards of uneven use: 4 streams get 2 or 3 shards each


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(make_shapes("train", n=N, image_size=16, seed=3), out, shard_size=SHARD)
    return out


def _source(shard_dir: Path, buffer: int = 7):
    return make_webdataset("train", str(shard_dir / "shard-{000000..000008}.tar"), shuffle_buffer=buffer)


def _epoch_keys(shard_dir: str, rank: int, world: int, workers: int) -> list[str]:
    stream = ShardStream(
        _source(Path(shard_dir)),
        ImageConfig(size=16),
        4 * world,
        seed=1,
        shard=(rank, world),
        num_workers=workers,
        keys=True,
        epochs=1,
    )
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return [k for batch in loader for k in batch["__key__"]]


def _rank_keys(shard_dir: str, workers: int) -> list[str]:
    import torch.distributed as dist

    return _epoch_keys(shard_dir, dist.get_rank(), dist.get_world_size(), workers)


def test_two_ranks_two_workers_see_every_key_exactly_once(shard_dir):
    per_rank = spawn_gloo(_rank_keys, 2, str(shard_dir), 2, timeout_s=120)
    seen = Counter(k for keys in per_rank for k in keys)
    assert sorted(seen) == [f"{i:09d}" for i in range(N)]
    assert set(seen.values()) == {1}
    assert all(len(keys) > 0 for keys in per_rank)
    assert not set(per_rank[0]) & set(per_rank[1])  # ranks read disjoint shards


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores, on purpose
def test_one_process_sees_every_key_once_with_any_worker_count(shard_dir):
    for workers in (0, 1, 3):
        keys = _epoch_keys(str(shard_dir), 0, 1, workers)
        assert sorted(keys) == [f"{i:09d}" for i in range(N)], workers


def test_fewer_shards_than_streams_is_a_clear_error(shard_dir):
    with pytest.raises(ConfigError, match="9 shards for 2 rank"):
        ShardStream(_source(shard_dir), ImageConfig(size=16), 8, 0, shard=(0, 2), num_workers=5)


def _batches(stream: ShardStream, workers: int, n: int) -> list[dict]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_saved_places_continues_the_exact_stream(shard_dir, workers):
    """Batches k.. of a stream restarted from the places recorded after k batches equal the
    uninterrupted stream's, across epoch boundaries (a stream of 9 shards, 4 rows a batch)."""
    src, img = _source(shard_dir), ImageConfig(size=16, crop_scale=(0.5, 1.0), flip=0.5)
    full = _batches(ShardStream(src, img, 4, seed=5, num_workers=workers, keys=True), workers, 70)
    for k in (3, 25, 48):
        places: dict[int, list[int]] = {}
        for b in full[:k]:
            places.update(b[POS_KEY])
        resumed = ShardStream(src, img, 4, seed=5, num_workers=workers, start=places, rotate=k, keys=True)
        for a, b in zip(full[k:], _batches(resumed, workers, 70 - k), strict=True):
            assert a["__key__"] == b["__key__"]
            assert torch.equal(a["image"], b["image"])  # same augmentation draws
            assert a[POS_KEY] == b[POS_KEY]
    epochs = {p[0] for b in full for p in b[POS_KEY].values()}
    assert epochs >= {0, 1, 2}  # the comparison crossed epoch boundaries


def test_evaluation_from_shards_keeps_every_caption_and_exact_images(tmp_path):
    pairs = make_shapes("test", n=30, image_size=16, seed=5)
    write_shards(pairs, tmp_path, shard_size=8)
    decoded, skips = make_webdataset("test", str(tmp_path / "shard-{000000..000003}.tar")).pairset(
        ImageConfig(size=16)
    )
    assert not skips and torch.equal(decoded.images, pairs.images)  # PNG round trip, identity resize
    assert decoded.captions == pairs.captions and max(len(c) for c in pairs.captions) >= 2
