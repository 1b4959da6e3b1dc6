"""Partial concept labels (``data.concepts_unknown``): a fixed, seeded share of each image's concept
labels is −1 = unknown, the same entries of an image in every batch; ``multi_focal`` trains on them."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from contrastkit.core.concepts import unknown_entries
from contrastkit.core.errors import ConfigError
from contrastkit.data import DataConfig
from contrastkit.losses import LossConfig
from contrastkit.losses.base import PairLoss
from contrastkit.losses.clip import clip_loss
from contrastkit.train import RunConfig, read_metrics, train
from contrastkit.train import session as session_mod


def test_unknown_entries_are_a_function_of_seed_image_and_concept():
    rows = np.arange(2000)
    a = unknown_entries(rows, 50, 0.3, seed=7)
    assert a.shape == (2000, 50) and a.dtype == torch.bool
    # binomial(100000, 0.3): sd = 145; 5 sd = 0.00725 of the share
    assert abs(a.float().mean().item() - 0.3) < 0.0073
    # the same image gets the same entries whatever batch it is in
    assert torch.equal(unknown_entries([1999, 5, 42], 50, 0.3, seed=7), a[[1999, 5, 42]])
    assert not torch.equal(unknown_entries(rows, 50, 0.3, seed=8), a)  # another seed, another draw
    assert not unknown_entries(rows, 50, 0.0, seed=7).any()
    # columns are not copies of each other (the key mixes row and concept)
    assert (a[:, 0] != a[:, 1]).float().mean().item() > 0.3
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        unknown_entries(rows, 50, 1.0, seed=7)


def test_config_checks_the_share_and_that_concepts_are_on():
    with pytest.raises(ConfigError, match="data.concepts_unknown must be in"):
        DataConfig(concepts=True, concepts_unknown=-0.1)
    with pytest.raises(ConfigError, match="needs data.concepts: true"):
        DataConfig(concepts_unknown=0.2)


class Spy(PairLoss):
    accepts = frozenset({"targets"})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x, y, **aux):
        self.seen.append(aux["targets"])
        return clip_loss(x, y, 10.0)


def tiny(tmp_path, name, share, loss=None):
    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, concepts=True, concepts_unknown=share),
        loss=loss or base.loss,
        train=dataclasses.replace(base.train, steps=3, log_every=1, ckpt_every=3),
    )


def test_batches_carry_the_images_unknown_entries(tmp_path, monkeypatch):
    spy = Spy()
    monkeypatch.setattr(session_mod, "build_loss", lambda cfg: spy)
    full = Spy()
    cfg = tiny(tmp_path, "spy", 0.4)
    train(cfg)
    monkeypatch.setattr(session_mod, "build_loss", lambda cfg: full)
    train(tiny(tmp_path, "full", 0.0))
    assert len(spy.seen) == len(full.seen) == 3
    for part, whole in zip(spy.seen, full.seen, strict=True):
        known = part != -1
        # known entries are the full labels; unknown ones are exactly -1, about 40% of them
        assert torch.equal(part[known], whole[known]) and set(part.unique().tolist()) <= {-1.0, 0.0, 1.0}
        assert 0.25 < (~known).float().mean().item() < 0.55


def test_multi_focal_trains_on_partial_labels(tmp_path):
    cfg = tiny(tmp_path, "focal", 0.3, LossConfig(name="multi_focal", params={}))
    result = train(cfg)
    losses = [r["loss"] for r in read_metrics(result.run_dir) if "loss" in r]
    assert result.skipped == 0 and len(losses) == 3 and all(math.isfinite(v) for v in losses)
