"""``data.text_views`` + ``supcon_text_views``: the views are exactly the rendered templates (with
seeded demonstrations), SupCon receives the class labels once per view, and a run trains."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import contrastkit.losses.prompt_views as pv
from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError
from contrastkit.data import DataConfig, open_split, train_loader
from contrastkit.data.text_views import TextViewsConfig, render_views
from contrastkit.losses import build
from contrastkit.losses.base import LossConfig
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.supcon import supcon_loss
from tests.data._write import take

CLASSES = ("red circle", "blue square", "orange star")


def test_views_are_exactly_the_rendered_templates() -> None:
    cfg = TextViewsConfig(templates=("a photo of a {}.", "{} shape"))
    views = render_views(cfg, CLASSES, [0, 2, 5], ["c0", "c1", "a two-object caption"], (0, 1, 0))
    assert views == [
        ["a photo of a red circle.", "a photo of an orange star.", "a two-object caption"],
        ["red circle shape", "orange star shape", "a two-object caption"],
    ]


def test_demonstrations_are_other_classes_drawn_from_the_batch_seed() -> None:
    cfg = TextViewsConfig(templates=("a {}", "the {}"), demonstrations=2, separator=" | ", fix_articles=False)
    labels, seed = [1, 1, 0], (3, 7, 0)
    views = render_views(cfg, CLASSES, labels, ["x", "y", "z"], seed)
    for k, template in enumerate(cfg.templates):
        for i, c in enumerate(labels):
            draws = np.random.default_rng([*seed, k, i, 7]).integers(2, size=2)
            others = [n for j, n in enumerate(CLASSES) if j != c]
            want = " | ".join([*(template.format(others[d]) for d in draws), template.format(CLASSES[c])])
            assert views[k][i] == want
    assert views == render_views(cfg, CLASSES, labels, ["x", "y", "z"], seed)  # same seed, same views
    assert views != render_views(cfg, CLASSES, labels, ["x", "y", "z"], (3, 8, 0))


def _data(**views) -> DataConfig:
    tiny = DataConfig.tiny()
    return dataclasses.replace(tiny, label_task="shape+color", text_views=TextViewsConfig(**views))


def test_training_batches_carry_the_views_of_their_labels() -> None:
    cfg = _data(templates=("a photo of a {}.", "a {} shape"))
    src = open_split(cfg, "train")
    batch = take(train_loader(src, cfg, list, 16, seed=0), 1)[0]  # tokenize = list: keeps the strings
    names = src.tasks["shape+color"].classnames
    for i, c in enumerate(batch["labels"].tolist()):
        if c < len(names):
            assert batch["text@0"][i].lower() == f"a photo of a {names[c]}.".replace("a orange", "an orange")
            assert batch["text@1"][i] == f"a {names[c]} shape".replace("a orange", "an orange")
        else:  # a two-object image: its own caption in every view
            assert batch["text@0"][i] == batch["text@1"][i] == batch["text"][i]
    assert (batch["labels"] < len(names)).any() and (batch["labels"] >= len(names)).any()


def test_supcon_receives_the_class_labels_once_per_view(monkeypatch) -> None:
    seen = {}

    def spy(z, y, temperature, **kw):
        seen.update(z=z, y=y, temperature=temperature, **kw)
        return supcon_loss(z, y, temperature, **kw)

    monkeypatch.setattr(pv, "supcon_loss", spy)
    g = torch.Generator().manual_seed(0)
    emb = {k: torch.randn(5, 8, generator=g) for k in ("image", "text", "text@0", "text@1", "text@2")}
    labels = torch.tensor([0, 1, 0, 7, 2])
    loss = build("supcon_text_views", temperature=0.2, clip_weight=0.5)
    value = loss(emb, labels=labels)
    assert seen["labels"].tolist() == labels.tolist() * 3 and seen["y"] is None
    assert torch.equal(seen["z"], torch.cat([emb["text@0"], emb["text@1"], emb["text@2"]]))
    direct = supcon_loss(seen["z"], None, 0.2, labels=labels.repeat(3)) + 0.5 * clip_loss(
        emb["image"], emb["text"], 1 / 0.07
    )
    assert float(value.detach()) == pytest.approx(float(direct), rel=1e-6)
    with_image = build("supcon_text_views", include_image=True, clip_weight=0.0)
    with_image(emb, labels=labels)
    assert seen["labels"].tolist() == labels.tolist() * 4
    assert set(loss.log_values()) == {"loss/supcon", "loss/clip", "logit_scale"}


def test_a_run_trains_and_config_mismatches_are_refused(tmp_path) -> None:
    from contrastkit.train import RunConfig, train

    cfg = RunConfig.tiny("views", out_dir=str(tmp_path))
    data = _data(templates=("a photo of a {}.", "a {} shape"), demonstrations=1)
    run = dataclasses.replace(
        cfg,
        data=data,
        loss=LossConfig(name="supcon_text_views"),
        train=dataclasses.replace(cfg.train, steps=3),
    )
    assert train(run).skipped == 0
    with pytest.raises(ConfigError, match="does not read text views"):
        train(dataclasses.replace(run, name="b", loss=LossConfig(name="clip")))
    with pytest.raises(ConfigError, match="needs text views"):
        train(dataclasses.replace(run, name="c", data=DataConfig.tiny()))
    with pytest.raises(ConfigError, match="label_task"):
        dataclasses.replace(DataConfig.tiny(), text_views=TextViewsConfig())
    with pytest.raises(ConfigError, match="templates"):
        from_dict(DataConfig, {"label_task": "shape", "text_views": {"templates": ["no placeholder", "{}"]}})
    with pytest.raises(ConfigError, match="at least 2 templates"):
        TextViewsConfig(templates=("a {}",))
