"""sklearn's bundled digits as a built-in real pair set; a tiny CLIP learns it zero-shot."""

import dataclasses

import numpy as np
import pytest

from contrastkit.core.errors import InputError
from contrastkit.data import DataConfig, make_digits
from contrastkit.data.digits import DIGIT_WORDS
from contrastkit.evaluation import evaluate_run
from contrastkit.train import RunConfig, train


def test_splits_are_disjoint_and_captions_match_labels():
    parts = {s: make_digits(s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 1797
    assert len(parts["test"]) == 360
    for p in parts.values():
        labels = p.tasks["digit"].labels
        for caps, y in zip(p.captions, labels):
            assert DIGIT_WORDS[y] in caps[0] and str(y) in caps[1]
    # 8×8 pixels upscaled ×4: each 4×4 block is constant
    img = parts["train"].images[0, 0].numpy()
    assert (img.reshape(8, 4, 8, 4) == img[::4, ::4][:, None, :, None]).all()
    with pytest.raises(InputError, match="unknown digits split"):
        make_digits("dev")


def test_tiny_clip_on_digits_beats_chance_by_far(tmp_path):
    base = RunConfig.tiny(out_dir=str(tmp_path))
    cfg = dataclasses.replace(
        base,
        name="digits",
        data=DataConfig(name="digits", params={}, splits={"train": {}, "test": {}}, eval_splits=("test",)),
        train=dataclasses.replace(base.train, steps=150, batch_size=64, ckpt_every=150),
    )
    train(cfg)
    acc = evaluate_run(tmp_path / "digits", tasks=["zeroshot"])["metrics"]["test"]["zeroshot/digit/top1"]
    assert acc > 0.7, acc  # chance is 0.1; measured 0.84
    assert np.isfinite(acc)
