"""Batch fields beyond the embeddings reach the losses that declare them: caption-concept
``targets`` (CatLIP, TagAlign) and ``text_ids`` = the caption token ids (captioning, CoCa)."""

import dataclasses
import math

import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.losses import LossConfig
from contrastkit.losses.base import PairLoss
from contrastkit.losses.clip import clip_loss
from contrastkit.train import RunConfig, read_metrics, train
from contrastkit.train import session as session_mod


class Spy(PairLoss):
    accepts = frozenset({"text_ids", "targets"})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def forward(self, x, y, **aux):
        self.seen.append(aux)
        return clip_loss(x, y, 10.0)


def tiny(tmp_path, name, steps=3, **data):
    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, **data),
        train=dataclasses.replace(base.train, steps=steps, log_every=1, ckpt_every=steps),
    )


def test_text_ids_are_the_token_ids_and_targets_the_caption_concepts(tmp_path, monkeypatch):
    spy = Spy()
    monkeypatch.setattr(session_mod, "build_loss", lambda cfg: spy)
    train(tiny(tmp_path, "spy", steps=2, concepts=True))
    aux = spy.seen[0]
    ids, targets = aux["text_ids"], aux["targets"]
    assert ids.dtype == torch.long and ids.ndim == 2 and int(ids[:, 0].min()) == 2  # [CLS] first
    assert targets.shape[0] == ids.shape[0] and set(targets.unique().tolist()) <= {0.0, 1.0}
    assert (targets.sum(1) >= 2).all()  # every Shapes caption names at least a colour and a shape


def test_catlip_and_coca_train_from_shapes_batches(tmp_path):
    for name, params, data in (
        ("catlip", {}, {"concepts": True}),
        ("coca", {"width": 32, "heads": 2, "layers": 1}, {}),
    ):
        cfg = dataclasses.replace(tiny(tmp_path, name, **data), loss=LossConfig(name=name, params=params))
        result = train(cfg)
        losses = [r["loss"] for r in read_metrics(result.run_dir) if "loss" in r]
        assert result.skipped == 0 and len(losses) == 3 and all(math.isfinite(v) for v in losses), name


def test_text_negatives_reach_the_terms_of_a_composite_that_take_them(tmp_path, monkeypatch):
    from contrastkit.losses import extra_negatives

    seen: list[tuple[int, ...]] = []
    real = extra_negatives.energy_hinge_loss

    def spy(x, y, negatives=None, **kw):
        seen.append(tuple(negatives.shape))
        return real(x, y, negatives=negatives, **kw)

    monkeypatch.setattr(extra_negatives, "energy_hinge_loss", spy)
    cfg = dataclasses.replace(
        tiny(tmp_path, "eh", text_negatives="swap"),
        loss=LossConfig(terms={"clip": 1.0, "energy_hinge": 10.0}),
    )
    result = train(cfg)
    rows = [r for r in read_metrics(result.run_dir) if "loss" in r]
    batch, dim = cfg.train.batch_size, cfg.model.embed_dim
    assert seen == [(batch, 1, dim)] * 3  # one swapped caption per pair, embedded by the text tower
    for r in rows:  # the logged total is exactly the weighted sum of the logged terms
        assert r["loss"] == pytest.approx(r["loss/clip"] + 10.0 * r["loss/energy_hinge"], rel=1e-6)
        assert r["loss/energy_hinge"] > 0
    with pytest.raises(ConfigError, match=r"loss terms \['clip', 'uniformity'\] does not use negative"):
        train(dataclasses.replace(cfg, name="none", loss=LossConfig(terms={"clip": 1.0, "uniformity": 0.1})))
