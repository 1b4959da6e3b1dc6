"""Modalities beyond image and text through the trainer: spoken captions, sensor series, vectors,
and samples that lack a modality — each trains from a config, resumes exactly, and fails clearly."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.data import DataConfig
from contrastkit.data.speech import SpeechConfig
from contrastkit.losses import LossConfig
from contrastkit.models import ModelConfig, TowerConfig
from contrastkit.scale import ScaleConfig
from contrastkit.train import RunConfig, load_run, read_metrics, resume, train

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (make speech)"
)


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def _three(out_dir, name, loss: LossConfig, data_changes: dict, towers: dict, **train_changes) -> RunConfig:
    base = RunConfig.tiny(name=name, out_dir=str(out_dir))
    data = dataclasses.replace(base.data, **data_changes)
    model = dataclasses.replace(base.model, towers={**base.model.towers, **towers})
    changes = {"steps": 6, "log_every": 1, "ckpt_every": 6, **train_changes}
    return dataclasses.replace(
        base, data=data, model=model, loss=loss, train=dataclasses.replace(base.train, **changes)
    )


def _cut_and_resume(make, tmp_path, name):
    full = train(make(tmp_path / "full", 6))
    train(make(tmp_path / "cut", 3))
    ckpts = tmp_path / "cut" / name / "checkpoints"
    (ckpts / "latest.json").write_text(json.dumps({"step": 3, "path": "step_00000003"}))
    assert resume(tmp_path / "cut" / name).step == 6
    a, b = _losses(full.run_dir), _losses(tmp_path / "cut" / name)
    assert [b[k] for k in range(1, 7)] == [a[k] for k in range(1, 7)]  # bit for bit
    return full


@needs_espeak
def test_spoken_captions_train_three_towers_and_resume_exactly(tmp_path):
    speech = SpeechConfig(voices=("en-us", "en-gb"), speeds=(220,), pitches=(50,), max_seconds=3.0)
    audio = TowerConfig("audio_transformer", {"n_mels": 40, "max_frames": 301, "width": 32, "layers": 1})
    splits = {"train": {"n": 96}, "test": {"n": 32}, "unseen": {"n": 16}}

    def make(out, ckpt_every):
        return _three(
            out,
            "speech",
            LossConfig(name="pairwise_clip", params={"anchor": "text"}),
            {"modalities": ("image", "text", "audio"), "speech": speech, "splits": splits},
            {"audio": audio},
            batch_size=16,
            ckpt_every=ckpt_every,
        )

    full = _cut_and_resume(make, tmp_path, "speech")
    assert full.skipped == 0 and all(math.isfinite(v) for v in _losses(full.run_dir).values())
    _, model, _, _ = load_run(full.run_dir)
    assert set(model.towers) == {"image", "text", "audio"}


def test_missing_modalities_train_with_pairwise_clip_mmp_and_a_pair_loss(tmp_path):
    towers = {"attributes": TowerConfig("mlp", {"input_dim": 45, "hidden_dim": 32, "output_dim": 32})}
    data = {"modalities": ("image", "text", "attributes"), "missing": {"attributes": 0.4, "image": 0.2}}
    for loss in (
        LossConfig(name="pairwise_clip", params={"anchor": "text"}),
        LossConfig(name="mmp", params={"modalities": ["attributes", "image", "text"], "dim": 32}),
    ):

        def make(out, ckpt_every, loss=loss):
            return _three(out, loss.name, loss, data, towers, ckpt_every=ckpt_every)

        full = _cut_and_resume(make, tmp_path / loss.name, loss.name)
        assert all(math.isfinite(v) for v in _losses(full.run_dir).values())
    # a pair loss (clip over image, text) trains on the rows that have both
    pair = _three(tmp_path, "pair", LossConfig(name="clip"), {"missing": {"text": 0.3}}, {})
    assert math.isfinite(train(pair).last_loss)
    with pytest.raises(ConfigError, match="dense loss on one process, not with scale.tile_size"):
        train(dataclasses.replace(pair, name="tiled", scale=ScaleConfig(tile_size=8)))
    gram_like = _three(tmp_path, "nomask", LossConfig(name="moco2", params={"dim": 32}), data, towers)
    with pytest.raises(ConfigError, match="no presence masks"):
        train(gram_like)


def test_series_and_vectors_data_sets_train_without_images(tmp_path):
    pytest.importorskip("pyarrow")
    from contrastkit.data.series import series_names

    if "BasicMotions" not in series_names():
        pytest.skip("sktime's BasicMotions files are not installed (make setup)")
    text = RunConfig.tiny().model.towers["text"]
    series = RunConfig.tiny(name="series", out_dir=str(tmp_path))
    series = dataclasses.replace(
        series,
        data=DataConfig(
            name="series",
            params={"set_name": "BasicMotions"},
            modalities=("series", "text"),
            splits={"train": {}, "test": {}},
            eval_splits=("test",),
        ),
        model=ModelConfig(
            towers={"series": TowerConfig("series_cnn", {"in_channels": 6}), "text": text}, embed_dim=32
        ),
        train=dataclasses.replace(series.train, steps=4, batch_size=8, log_every=1, ckpt_every=4),
    )
    assert math.isfinite(train(series).last_loss)
    # vectors with holes: a vector per sample from a .npy, captions from a text file
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((40, 5)).astype(np.float32)
    vec[3] = np.nan  # sample 3 lacks its vector
    np.save(tmp_path / "v.npy", vec)
    (tmp_path / "c.txt").write_text("\n".join(f"item {i % 4}" for i in range(40)) + "\n")
    params = {"path": str(tmp_path / "v.npy"), "captions": str(tmp_path / "c.txt")}
    vectors = dataclasses.replace(
        series,
        name="vectors",
        data=DataConfig(
            name="vectors",
            params=params,
            modalities=("vectors", "text"),
            splits={"train": {}, "test": {}},
            eval_splits=("test",),
        ),
        model=ModelConfig(
            towers={
                "vectors": TowerConfig("mlp", {"input_dim": 5, "hidden_dim": 16, "output_dim": 16}),
                "text": text,
            },
            embed_dim=16,
        ),
    )
    assert math.isfinite(train(vectors).last_loss)
    _, model, _, _ = load_run(tmp_path / "vectors")
    assert model.encode("vectors", torch.zeros(2, 5)).shape == (2, 16)
