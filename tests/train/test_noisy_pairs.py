"""Noisy pairs: injected caption noise, pair indices in batches, the scoring pass, weights and
drops in batches, config checks, and exact resume with the noisy-pair state."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.data import make_shapes
from contrastkit.data.config import SourceConfig
from contrastkit.data.noise import caption_swaps
from contrastkit.data.pairs import INDEX_KEY, PairDataset
from contrastkit.data.shapes import swapped_images
from contrastkit.losses import LossConfig
from contrastkit.models.dual_encoder import ModelConfig, build_model
from contrastkit.train import RunConfig, load_run, read_metrics, resume, train
from contrastkit.train.config import CurationConfig
from contrastkit.train.noisy import (
    NoisyPairs,
    NoisyPairsConfig,
    check_noisy_pairs,
    clean_probabilities,
    pair_losses,
)


def test_caption_swaps_is_a_seeded_cycle_without_fixed_points():
    swapped, donor = caption_swaps(50, 0.2, [7, 1])
    assert len(swapped) == 10 and (np.diff(swapped) > 0).all()
    assert (donor != swapped).all() and sorted(donor.tolist()) == swapped.tolist()
    again = caption_swaps(50, 0.2, [7, 1])
    assert np.array_equal(again[0], swapped) and np.array_equal(again[1], donor)
    assert len(caption_swaps(50, 0.01, 0)[0]) == 0  # round(0.5) = 0 images: nothing to swap
    assert len(caption_swaps(50, 1.0, 0)[0]) == 50


def test_shapes_noise_swaps_captions_only_and_records_which():
    clean, noisy = make_shapes("train", 40), make_shapes("train", 40, noise=0.25)
    assert torch.equal(clean.images, noisy.images) and torch.equal(clean.attributes, noisy.attributes)
    swapped = swapped_images("train", 40, seed=0, noise=0.25)
    assert len(swapped) == 10
    changed = [i for i in range(40) if noisy.captions[i] != clean.captions[i]]
    assert changed == swapped.tolist()
    assert all(noisy.captions[i] in clean.captions for i in changed)
    assert np.array_equal(noisy.tasks["shape"].labels, clean.tasks["shape"].labels)


def test_batches_carry_flat_pair_indices_when_asked():
    pairs = make_shapes("train", 8)  # two captions per image
    ds = PairDataset(pairs)
    assert INDEX_KEY not in ds.__getitems__([(3, 1), (0, 0)])
    ds.pair_index = True
    item = ds.__getitems__([(3, 1), (0, 0), (5, 1)])
    assert item[INDEX_KEY].tolist() == [7, 0, 11]
    flat, _ = pairs.flat_captions()
    assert [flat[k] for k in item[INDEX_KEY].tolist()] == item["text"]


def naive_pair_loss(x, y, scale, i):
    x, y = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    logits = scale * x @ y.T
    row = -(logits[i, i] - torch.logsumexp(logits[i], 0))
    col = -(logits[i, i] - torch.logsumexp(logits[:, i], 0))
    return float(0.5 * (row + col))


def test_scoring_pass_matches_a_direct_computation():
    torch.manual_seed(0)
    pairs = make_shapes("train", 10)
    model = build_model(ModelConfig.tiny(), texts=[c for caps in pairs.captions for c in caps]).eval()
    got = pair_losses(model, pairs, scale=10.0, batch_size=4, seed=3)
    assert got.shape == (20,) and np.isfinite(got).all()
    order = np.random.default_rng([3, 0x9A12]).permutation(10)
    filled = np.concatenate([order[8:10], order[0:2]])  # the last batch is filled up to 4 pairs
    batches = [(order[0:4], 4), (order[4:8], 4), (filled, 2)]  # (rows, how many are scored)
    with torch.no_grad():
        for j in (0, 1):
            for rows, scored in batches:
                texts = model.tokenize([pairs.captions[i][j] for i in rows])
                emb = model({"image": pairs.images[rows], "text": texts})
                for r, i in enumerate(rows[:scored].tolist()):
                    want = naive_pair_loss(emb["image"].double(), emb["text"].double(), 10.0, r)
                    assert got[2 * i + j] == pytest.approx(want, rel=1e-5)


def noisy_state(mode="weight", normalize=False, clean=None):
    pairs = make_shapes("train", 4)  # 8 pairs
    state = NoisyPairs(NoisyPairsConfig(mode=mode, normalize=normalize), pairs, train_batch_size=4, seed=0)
    state.clean = np.array(clean if clean is not None else [0.9, 0.2, 0.6, 1.0, 0.1, 0.8, 0.4, 0.7])
    state.fitted_at = 10
    return state


def batch(idx):
    n = len(idx)
    return {
        "image": torch.arange(n * 3.0).reshape(n, 3),
        "labels": torch.arange(n),
        "weights": torch.arange(n * n * 1.0).reshape(n, n),
        INDEX_KEY: torch.tensor(idx),
    }


def test_weights_and_drops_reach_the_batch():
    state = noisy_state()
    out = state.apply(batch([1, 3, 6, 7]))
    assert INDEX_KEY not in out and out["pair_weights"].dtype == torch.float32
    assert out["pair_weights"].tolist() == pytest.approx([0.2, 1.0, 0.4, 0.7])
    norm = noisy_state(normalize=True).apply(batch([1, 3, 6, 7]))["pair_weights"]
    assert norm.tolist() == pytest.approx([0.2 * 4 / 2.3, 4 / 2.3, 0.4 * 4 / 2.3, 0.7 * 4 / 2.3])
    dropped = noisy_state("drop").apply(batch([1, 3, 6, 7]))  # clean 0.2 and 0.4 leave
    assert dropped["labels"].tolist() == [1, 3]
    assert dropped["weights"].tolist() == [[5.0, 7.0], [13.0, 15.0]]  # rows and columns 1, 3
    assert dropped["image"].tolist() == [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]
    kept = noisy_state("drop").apply(batch([0, 2, 3]))  # all B ≤ 0.5: the batch is unchanged
    assert kept["labels"].tolist() == [0, 1, 2] and kept["weights"].shape == (3, 3)
    two = noisy_state("drop").apply(batch([1, 4, 6, 3]))  # one clean pair: the two cleanest stay
    assert two["labels"].tolist() == [2, 3]
    fresh = noisy_state()
    fresh.fitted_at = None  # before the first fit: plain batches
    assert set(fresh.apply(batch([1, 3]))) == {"image", "labels", "weights"}


def test_state_round_trips_exactly_and_checks_the_data():
    state = noisy_state()
    state.clean = np.random.default_rng(0).random(8)
    again = noisy_state(clean=np.ones(8))
    again.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert again.clean.tobytes() == state.clean.tobytes() and again.fitted_at == 10
    other = NoisyPairs(NoisyPairsConfig(), make_shapes("train", 5), 4, 0)
    with pytest.raises(ConfigError, match="covers 8 pairs"):
        other.load_state_dict(state.state_dict())


def noisy_run(tmp_path, name, mode="weight", **train_changes):
    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    splits = {**base.data.splits, "train": {"n": 512, "noise": 0.3}}
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, splits=splits),
        train=dataclasses.replace(base.train, **train_changes),
        curation=CurationConfig(NoisyPairsConfig(every=4, start=4, mode=mode)),
    )


@pytest.mark.parametrize("mode", ["weight", "drop"])
def test_resume_with_noisy_pair_state_matches_the_uninterrupted_run(tmp_path, mode):
    full = train(noisy_run(tmp_path / "full", "r", mode, steps=14, log_every=1, ckpt_every=100))
    cut = train(noisy_run(tmp_path / "cut", "r", mode, steps=14, log_every=1, ckpt_every=8))
    (cut.run_dir / "checkpoints" / "latest.json").write_text(json.dumps({"step": 8, "path": "step_00000008"}))
    resumed = resume(cut.run_dir)
    assert resumed.step == 14

    def rows(run_dir, key):
        return {r["step"]: r[key] for r in read_metrics(run_dir) if key in r}

    a, b = rows(full.run_dir, "loss"), rows(cut.run_dir, "loss")
    assert [b[k] for k in range(9, 15)] == [a[k] for k in range(9, 15)]
    assert sorted(rows(full.run_dir, "noisy_flagged")) == [4, 8, 12]
    assert rows(cut.run_dir, "noisy_flagged")[12] == rows(full.run_dir, "noisy_flagged")[12]
    assert clean_probabilities(cut.run_dir).tobytes() == clean_probabilities(full.run_dir).tobytes()
    assert clean_probabilities(full.run_dir).shape == (1024,)
    a_model, b_model = load_run(full.run_dir)[1], load_run(cut.run_dir)[1]
    a_sd, b_sd = a_model.state_dict(), b_model.state_dict()
    assert a_sd.keys() == b_sd.keys() and all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)  # to the bit


def test_configs_noisy_pairs_cannot_serve_are_refused_before_any_data(tmp_path):
    cfg = noisy_run(tmp_path, "bad")
    with pytest.raises(ConfigError, match="loss 'siglip' does not"):
        train(dataclasses.replace(cfg, loss=LossConfig(name="siglip")))
    assert not (tmp_path / "bad").exists()
    check_noisy_pairs(
        dataclasses.replace(
            cfg, loss=LossConfig(name="siglip"), curation=CurationConfig(NoisyPairsConfig(mode="drop"))
        )
    )  # any loss can drop pairs
    mixed = dataclasses.replace(cfg.data, sources=(SourceConfig("shapes", {"n": 64}),))
    with pytest.raises(ConfigError, match="not data.sources"):
        check_noisy_pairs(dataclasses.replace(cfg, data=mixed))
    for bad in ({"every": 0}, {"start": 0}, {"eps_var": 0.3}, {"scale": -1.0}):
        with pytest.raises(ConfigError, match="curation.noisy_pairs"):
            NoisyPairsConfig(**bad)


def test_pair_weights_with_gradient_caching_follow_the_dense_run_and_tiles_are_refused(tmp_path):
    from contrastkit.scale import ScaleConfig

    from .test_guard_and_training import _vit_config

    def run(name, **scale):
        cfg = _vit_config(tmp_path, name, **scale)
        splits = {**cfg.data.splits, "train": {"n": 64, "noise": 0.3}}
        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, splits=splits),
            train=dataclasses.replace(cfg.train, steps=5),
            curation=CurationConfig(NoisyPairsConfig(every=2, start=2)),
        )
        return [r for r in read_metrics(train(cfg).run_dir) if "loss" in r or "noisy_pi" in r]

    dense, chunked = run("dense"), run("chunked", chunk_size=8)  # 32 pairs in chunks of 8
    assert [r["step"] for r in dense if "noisy_pi" in r] == [2, 4]
    assert [r.get("loss", r.get("noisy_pi")) for r in chunked] == pytest.approx(
        [r.get("loss", r.get("noisy_pi")) for r in dense], rel=1e-4
    )  # the weighted loss after each fit too: the chunked path passes pair_weights to the loss
    cfg = dataclasses.replace(noisy_run(tmp_path, "tiled"), scale=ScaleConfig(tile_size=8))
    with pytest.raises(ConfigError, match="mode=weight conflicts with scale.tile_size=8"):
        train(cfg)


def test_noisy_pairs_on_a_csv_source(tmp_path):
    """The user's pairs (a csv of PNG files, one caption each, 12 of 48 captions rotated to other
    rows): the scoring pass reads the files and equals the in-memory pairs' losses; a run trains
    with refits, and the noisy-pair state covers every row."""
    from contrastkit.data import open_split
    from contrastkit.data.pairs import PairSet
    from tests.data._write import exact, source_config, write_pngs, write_table

    pairs = make_shapes("train", 48)
    swapped, donor = caption_swaps(48, 0.25, 5)
    captions = [c[0] for c in pairs.captions]
    for i, d in zip(swapped.tolist(), donor.tolist()):
        captions[i] = pairs.captions[d][0]
    names = write_pngs(pairs, tmp_path / "pairs")
    table = write_table(tmp_path / "pairs" / "pairs.csv", ["image", "caption"], zip(names, captions))
    data = source_config("csv", {"path": str(table)}, exact(32))
    source = open_split(data, "train")
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny(), texts=captions).eval()
    from_files = pair_losses(model, source, 10.0, 16, seed=2, image=data.image)
    in_memory = PairSet(pairs.images, tuple((c,) for c in captions), {}, "mem")
    np.testing.assert_allclose(from_files, pair_losses(model, in_memory, 10.0, 16, seed=2), rtol=1e-6)

    cfg = RunConfig.tiny(name="csv", out_dir=str(tmp_path / "runs"))
    cfg = dataclasses.replace(
        cfg,
        data=data,
        train=dataclasses.replace(cfg.train, steps=6, batch_size=16, log_every=1, ckpt_every=6),
        curation=CurationConfig(NoisyPairsConfig(every=3, start=3)),
    )
    rows = read_metrics(train(cfg).run_dir)
    assert [r["step"] for r in rows if "noisy_pi" in r] == [3, 6]
    assert np.isfinite([r["loss"] for r in rows if "loss" in r]).all()
    clean = clean_probabilities(tmp_path / "runs" / "csv")
    assert clean.shape == (48,) and ((clean > 0) & (clean < 1)).all()
