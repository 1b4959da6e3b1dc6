"""Augmented views are deterministic in (seed, step, view, row), resumable, and shard-consistent;
Shapes' attribute vectors describe the scene; batches carry the configured modalities."""

import itertools

import pytest
import torch

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import DataConfig, PairBatchSampler, PairDataset, PairSet, make_loader, make_shapes
from contrastkit.data.augment import AugmentConfig, augment, make_views, sample_params
from contrastkit.data.shapes import ATTRIBUTE_DIM, ATTRIBUTE_NAMES, COLORS, SHAPES

IDENTITY = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip=0, brightness=0, contrast=0, saturation=0)


@pytest.fixture(scope="module")
def pairs():
    return make_shapes("train", 96, seed=5)


def fake_tokenize(texts):
    return torch.tensor([[len(t)] for t in texts])


def test_views_are_deterministic_and_differ_by_step_and_view(pairs):
    x = pairs.images[:16]
    cfg = AugmentConfig()
    a = make_views(x, 2, cfg, seed=3, step=7)
    b = make_views(x, 2, cfg, seed=3, step=7)
    assert set(a) == {"image@0", "image@1"}
    for k in a:
        assert a[k].dtype == torch.uint8 and a[k].shape == x.shape
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["image@0"], a["image@1"])
    assert not torch.equal(a["image@0"], make_views(x, 1, cfg, seed=3, step=8)["image@0"])
    assert not torch.equal(a["image@0"], make_views(x, 1, cfg, seed=4, step=7)["image@0"])
    state = torch.get_rng_state()
    augment(x, cfg, 0, 0, 0)
    assert torch.equal(torch.get_rng_state(), state)  # never touches the global RNG


def test_identity_flip_and_output_size(pairs):
    x = pairs.images[:8]
    assert torch.equal(augment(x, IDENTITY, 0, 0, 0), x)
    flip = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip=1, brightness=0, contrast=0, saturation=0)
    assert torch.equal(augment(x, flip, 0, 0, 0), x.flip(-1))
    small = augment(x, AugmentConfig(size=24), 0, 0, 0)
    assert small.shape == (8, 3, 24, 24) and small.dtype == torch.uint8
    p = sample_params(AugmentConfig(), 0, 0, 0, 500)
    area = p.w * p.h
    assert (p.w <= 1).all() and (p.h <= 1).all() and (area >= 0.35 - 1e-9).all()
    assert (p.cx - p.w / 2 >= -1e-12).all() and (p.cx + p.w / 2 <= 1 + 1e-12).all()  # box inside
    assert 0.35 < p.flip.double().mean() < 0.65
    assert (p.brightness >= 0.6).all() and (p.brightness <= 1.4).all()


def test_a_shard_of_a_batch_gets_its_rows_of_the_global_views(pairs):
    x = pairs.images[:12]
    full = augment(x, AugmentConfig(), 1, 4, 0)
    part = augment(x[4:8], AugmentConfig(), 1, 4, 0, offset=4, total=12)
    assert torch.equal(part, full[4:8])
    with pytest.raises(InputError, match="do not fit"):
        augment(x, AugmentConfig(), 1, 4, 0, offset=4, total=12)
    with pytest.raises(InputError, match="uint8"):
        augment(x.float(), AugmentConfig(), 1, 4, 0)


def test_loader_views_are_resumable_with_workers(pairs):
    def batches(start, n, workers=0):
        loader = make_loader(pairs, fake_tokenize, 16, seed=2, start=start, views=2, num_workers=workers)
        return list(itertools.islice(iter(loader), n))

    full = batches(0, 8)  # 6 batches per epoch: crosses an epoch
    resumed = batches(5, 3, workers=1)
    assert set(full[0]) == {"image", "text", "image@0", "image@1"}
    for a, b in zip(full[5:], resumed):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(full[0]["image@0"], full[6]["image@0"])


def test_sharded_loader_views_match_the_global_batch(pairs):
    whole = next(iter(make_loader(pairs, fake_tokenize, 16, seed=1, views=2)))
    shard = next(iter(make_loader(pairs, fake_tokenize, 16, seed=1, views=2, shard=(1, 2))))
    for k in ("image", "image@0", "image@1"):
        assert torch.equal(shard[k], whole[k][8:])


def test_views_need_sampled_batches(pairs):
    ds = PairDataset(pairs, views=2)
    with pytest.raises(InputError, match="need batches from PairBatchSampler"):
        ds.__getitems__([(0, 0), (1, 0)])
    sampled = next(iter(PairBatchSampler([2] * 96, 8, seed=0)))
    assert sampled == [tuple(p) for p in sampled] and sampled.step == 0
    fields = {k for k in ds.__getitems__(sampled) if not k.startswith("_")}  # _seed: text-aug seeding
    assert fields == {"image", "text", "image@0", "image@1"}


def test_shapes_attributes_describe_the_scene(pairs):
    a = pairs.attributes
    assert a.shape == (96, ATTRIBUTE_DIM) == (96, 45) and a.dtype == torch.float32
    assert len(ATTRIBUTE_NAMES) == 45 and pairs.attribute_names == ATTRIBUTE_NAMES
    ones = a.sum(1)
    single = pairs.tasks["shape"].labels >= 0
    assert (ones[torch.from_numpy(single)] == 4).all() and (ones[torch.from_numpy(~single)] == 7).all()
    assert torch.equal(a[:, :8].argmax(1)[single], torch.from_numpy(pairs.tasks["shape"].labels[single]))
    assert torch.equal(a[:, 8:16].argmax(1)[single], torch.from_numpy(pairs.tasks["color"].labels[single]))
    places = [n.split("=")[1] for n in ATTRIBUTE_NAMES[36:]]  # positions and relations
    for i in range(len(pairs)):  # the captions name the same shapes, colours, position/relation
        words = " ".join(pairs.captions[i])
        names = [ATTRIBUTE_NAMES[j] for j in a[i].nonzero().flatten()]
        for name in names:
            if "/shape=" in name or "/color=" in name:
                assert name.split("=")[1] in words, (name, pairs.captions[i])
        said = {p for p in places if p in words}
        assert said <= {n.split("=")[1] for n in names}, (names, pairs.captions[i])
    assert set(SHAPES) | set(COLORS) >= {n.split("=")[1] for n in ATTRIBUTE_NAMES[:16]}
    sub = pairs.subset([3, 1])
    assert torch.equal(sub.attributes, a[[3, 1]])


def test_attributes_as_a_batch_modality(pairs):
    batch = next(iter(make_loader(pairs, None, 8, seed=0, modalities=("image", "attributes"))))
    assert set(batch) == {"image", "attributes"} and batch["attributes"].shape == (8, 45)
    with pytest.raises(InputError, match="need a tokenize"):
        make_loader(pairs, None, 8, seed=0)
    with pytest.raises(InputError, match="has no attributes"):
        PairDataset(PairSet(pairs.images[:8], pairs.captions[:8]), None, ("attributes",))


def test_data_config_keys():
    cfg = from_dict(
        DataConfig, {"modalities": ["image", "text", "attributes"], "views": 2, "augment": {"flip": 0.0}}
    )
    assert cfg.modalities == ("image", "text", "attributes") and cfg.views == 2 and cfg.augment.flip == 0.0
    assert DataConfig(modalities=("image", "audio")).modalities == ("image", "audio")  # a signal
    for bad in (("image", "Audio"), ("image", "image"), ("image", "labels"), ("image", "a@1")):
        with pytest.raises(ConfigError, match="data.modalities"):
            DataConfig(modalities=bad)
    with pytest.raises(ConfigError, match="data.views"):
        DataConfig(views=-1)
    with pytest.raises(ConfigError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.5, 1.5))
