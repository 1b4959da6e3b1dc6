"""Batch fields beyond the embeddings reach the losses that declare them: caption-concept
``targets`` (CatLIP, TagAlign) and ``text_ids`` = the caption token ids (captioning, CoCa)."""

import dataclasses
import math

import torch

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
