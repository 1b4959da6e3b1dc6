"""unpaired_labels from two separate tables (``data.sources``): an image-only labelled csv and a
text-only labelled csv (no image column), labels matched by task and class name, through the
loader and a short training run; the config checks."""

import csv
import dataclasses

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.data import DataConfig, ImageConfig, make_shapes, open_split, train_loader
from contrastkit.data.config import SamplerConfig, SourceConfig
from contrastkit.data.convert import encode_image
from contrastkit.data.loading import check_data
from contrastkit.data.unpaired import UnpairedSampler
from contrastkit.losses import LossConfig
from contrastkit.train import read_metrics, train
from contrastkit.train.config import RunConfig

N_IMG, N_TXT, B = 24, 30, 8
SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")


def _tables(tmp_path):
    """images.csv: image, shape, colour (no caption); texts.csv: caption, shape, colour (no image),
    its rows in another order so its class names first appear in another order."""
    pairs = make_shapes("train", n=N_IMG, image_size=32, seed=4)
    img_labels = [(SHAPES[i % 3], COLORS[i % 4] if i % 5 else "") for i in range(N_IMG)]  # some unknown
    with open(tmp_path / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "shape", "color"])
        for i, (s, c) in enumerate(img_labels):
            (tmp_path / f"{i}.png").write_bytes(encode_image(pairs.images[i]))
            w.writerow([f"{i}.png", s, c])
    txt_labels = [(SHAPES[(N_TXT - i) % 3], COLORS[(i * 7) % 4]) for i in range(N_TXT)]
    with open(tmp_path / "texts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["caption", "shape", "color"])
        for i, (s, c) in enumerate(txt_labels):
            w.writerow([f"a {c} {s} number {i}", s, c])
    return pairs, img_labels, txt_labels


def _data(tmp_path, image_source=None):
    labels = ["shape", "color"]
    sources = (
        # a table needs a caption column that is never empty; the image column serves (never read)
        SourceConfig(
            "csv",
            {"path": str(tmp_path / "images.csv"), "caption_columns": ["image"], "label_columns": labels},
        ),
        SourceConfig(
            "csv", {"path": str(tmp_path / "texts.csv"), "image_column": None, "label_columns": labels}
        ),
    )
    params = {"tasks": labels, **({} if image_source is None else {"image_source": image_source})}
    exact = ImageConfig(size=32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))  # identity on 32 px
    if image_source == 1:
        sources = sources[::-1]
    return dataclasses.replace(
        DataConfig.tiny(), sources=sources, image=exact, sampler=SamplerConfig("unpaired_labels", params)
    )


@pytest.mark.parametrize("image_source", [None, 1])
def test_batches_take_images_of_one_table_and_captions_of_the_other(tmp_path, image_source):
    pairs, img_labels, txt_labels = _tables(tmp_path)
    cfg = _data(tmp_path, image_source)
    mixture = open_split(cfg, "train")
    texts = [f"a {c} {s} number {i}" for i, (s, c) in enumerate(txt_labels)]
    tokenize = lambda t: torch.tensor([[texts.index(x)] for x in t])  # noqa: E731 — caption → its row
    loader = train_loader(mixture, cfg, tokenize, batch_size=B, seed=3)
    sampler = loader.batch_sampler
    assert isinstance(sampler, UnpairedSampler)
    src = 0 if image_source is None else 1
    for k, batch in zip(range(4), loader):  # N_IMG / B = 3 batches an epoch: one epoch and a bit
        img, txt, _ = sampler.transform.rows(k, 0, B)
        assert batch["source"].tolist() == [src] * B
        for r, i in enumerate(img.tolist()):
            assert torch.equal(batch["image"][r], pairs.images[i])
        assert batch["text"][:, 0].tolist() == txt.tolist()
        for r, (i, t) in enumerate(zip(img.tolist(), txt.tolist())):  # overlap by class *name*
            (si, ci), (st, ct) = img_labels[i], txt_labels[t]
            want = float(si == st) + float(ci == ct and ci != "")
            assert float(batch["image_labels"][r] @ batch["text_labels"][r]) == want
        assert batch["image_labels"].shape == batch["text_labels"].shape == (B, 3 + 4)


def test_a_short_training_run_on_the_two_tables(tmp_path):
    _tables(tmp_path)
    run = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    data = dataclasses.replace(_data(tmp_path), eval_splits=())
    run = dataclasses.replace(
        run,
        data=data,
        loss=LossConfig("medclip"),
        train=dataclasses.replace(run.train, steps=3, batch_size=B, log_every=1),
    )
    rows = [r for r in read_metrics(train(run).run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and np.isfinite([r["loss"] for r in rows]).all()


def test_config_checks(tmp_path):
    _tables(tmp_path)
    cfg = _data(tmp_path)
    check_data(cfg, ("train",))  # two sources: accepted
    three = dataclasses.replace(cfg, sources=(*cfg.sources, cfg.sources[0]))
    with pytest.raises(ConfigError, match="exactly two data.sources"):
        check_data(three, ("train",))
    bad = dataclasses.replace(
        cfg, sampler=SamplerConfig("unpaired_labels", {"tasks": ["shape"], "image_source": 2})
    )
    with pytest.raises(ConfigError, match="image_source"):
        check_data(bad, ("train",))
