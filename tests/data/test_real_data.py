"""Real-data sources: Fashion-MNIST (Debian package) and emoji pairs (npm package).

Skipped with a reason when the data is not installed (``make setup`` installs both)."""

import numpy as np
import pytest
import torch

from contrastkit.core.errors import InputError, MissingFileError
from contrastkit.data import build
from contrastkit.data.emoji import base_name, emoji_records, split_groups
from contrastkit.data.fashion import CLASSES, EVAL_TEMPLATES, TRAIN_TEMPLATES
from tests.data._write import needs_emoji, needs_fashion


@needs_fashion
def test_fashion_mnist_splits_sizes_labels_and_templates():
    test = build("fashion_mnist", "test")
    assert test.images.shape == (10_000, 3, 28, 28) and test.images.dtype == torch.uint8
    labels = test.tasks["class"].labels
    assert np.bincount(labels).tolist() == [1000] * 10  # the official test set is balanced
    assert torch.equal(test.images[:, 0], test.images[:, 2])  # grey → RGB
    val = build("fashion_mnist", "val", n=100, image_size=32)
    assert len(val) == 100 and val.images.shape[-1] == 32
    assert set(TRAIN_TEMPLATES).isdisjoint(EVAL_TEMPLATES)  # zero-shot prompts never trained
    assert test.tasks["class"].prompts()[9][0] == "an image of an ankle boot"
    assert test.captions[0][1] in {f"a {c}" for c in CLASSES} | {"an ankle boot"}


@needs_fashion
def test_fashion_mnist_exclude_drops_held_out_classes():
    train = build("fashion_mnist", "train", n=2000, exclude=["sneaker", "trouser"])
    labels = train.tasks["class"].labels
    assert len(train) == 2000
    assert not np.isin(labels, [CLASSES.index("sneaker"), CLASSES.index("trouser")]).any()
    with pytest.raises(InputError, match="unknown Fashion-MNIST class"):
        build("fashion_mnist", "train", exclude=["hat"])


def test_missing_data_folders_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("CONTRASTKIT_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(MissingFileError, match="apt-get install -y dataset-fashion-mnist"):
        build("fashion_mnist", "test")
    monkeypatch.setenv("CONTRASTKIT_EMOJI", str(tmp_path))
    with pytest.raises(MissingFileError, match="npm install --prefix .cache/npm emoji-datasource-google"):
        build("emoji", "test")


def test_base_name_groups_gender_variants():
    assert base_name("man detective") == base_name("woman detective") == base_name("detective")
    assert base_name("woman raising hand") == "raising hand"
    assert base_name("man") == "man"  # nothing left: keep the words


def test_group_split_is_deterministic_and_never_straddles():
    caps = ["man cook", "woman cook", "cook", "red apple", "green apple", "dog", "cat", "woman cat"]
    a = split_groups(caps, seed=0, test_fraction=0.4, val_fraction=0.0)
    b = split_groups(caps, seed=0, test_fraction=0.4, val_fraction=0.0)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(len(caps)))
    train = {base_name(caps[i]) for i in a["train"]}
    test = {base_name(caps[i]) for i in a["test"]}
    assert not train & test and len(a["test"]) >= 1


@needs_emoji
def test_emoji_pairs_split_by_base_name():
    records = emoji_records()
    assert len(records) == 1911
    train, test = build("emoji", "train"), build("emoji", "test")
    assert len(train) + len(test) == 1911 and test.images.shape[1:] == (3, 64, 64)
    train_groups = {base_name(c[0]) for c in train.captions}
    test_groups = {base_name(c[0]) for c in test.captions}
    assert not train_groups & test_groups
    # gender variants of one emoji stay together
    names = {c[0] for c in test.captions} | {c[0] for c in train.captions}
    assert {"man detective", "woman detective", "detective"} <= names
    side = {c[0]: s for s, p in (("train", train), ("test", test)) for c in p.captions}
    assert side["man detective"] == side["woman detective"] == side["detective"]
    # transparent pixels composited on white
    assert int(test.images[:, :, 0, 0].min()) == 255
