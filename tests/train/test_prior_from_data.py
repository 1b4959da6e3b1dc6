"""Decoupled uniformity's kernel prior selected from a config end to end (issue 21 item 9): a numeric
column of the user's table, listed in ``data.extras``, reaches the loss as the field ``prior_field``
names, row for row with the batch's embeddings, and the logged loss is the direct formula on them."""

import dataclasses

import datasets
import pytest
import torch

from contrastkit.data import DataConfig, make_shapes
from contrastkit.losses.base import LossConfig
from contrastkit.losses.kernel import DecoupledUniformityLoss, decoupled_uniformity_loss
from contrastkit.models.dual_encoder import ModelConfig
from contrastkit.train import RunConfig, train


def _table(tmp_path) -> str:
    pairs = make_shapes("train", n=200, image_size=16, seed=0)
    rows = [c for c in pairs.captions if len(c) >= 2]
    # the prior of row i is i: distinct per row, so the test can tell the rows apart
    data = {
        "anchor": [c[0] for c in rows],
        "positive": [c[1] for c in rows],
        "age": [float(i) for i in range(len(rows))],
    }
    path = tmp_path / "pairs"
    datasets.Dataset.from_dict(data).save_to_disk(str(path))
    return str(path)


def test_a_table_column_is_the_kernel_prior_of_every_step(tmp_path, monkeypatch):
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]] = []
    forward = DecoupledUniformityLoss.forward

    def spy(self, x, y, **aux):
        out = forward(self, x, y, **aux)
        seen.append((x.detach().clone(), y.detach().clone(), aux["age"].detach().clone(), out.item()))
        return out

    monkeypatch.setattr(DecoupledUniformityLoss, "forward", spy)
    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    data = DataConfig(
        name="hf",
        params={
            "path": _table(tmp_path),
            "image_column": None,
            "caption_columns": ["anchor"],
            "pair_column": "positive",
            "extra_columns": ["age"],
        },
        splits={"train": {}},
        eval_splits=(),
        modalities=("text",),
        extras=("age",),
    )
    params = {"prior_field": "age", "sigma": 5.0, "kernel": "rbf"}
    cfg = dataclasses.replace(
        base,
        data=data,
        model=ModelConfig(towers={"text": ModelConfig.tiny().towers["text"]}, embed_dim=16),
        loss=LossConfig(name="decoupled_uniformity", params=params),
        train=dataclasses.replace(base.train, steps=3, batch_size=16, ckpt_every=3),
    )
    train(cfg)
    assert len(seen) == 3
    for x, y, age, value in seen:
        assert age.shape == (16,) and age.dtype == torch.float32
        assert len(set(age.tolist())) == 16 and all(a == int(a) for a in age.tolist())  # 16 table rows
        want = decoupled_uniformity_loss(x.double(), y.double(), prior=age.double(), sigma=5.0)
        assert value == pytest.approx(float(want), rel=1e-5, abs=1e-6)
        without = decoupled_uniformity_loss(x.double(), y.double())
        assert abs(float(want) - float(without)) > 1e-4  # the prior changes the loss: it was used
