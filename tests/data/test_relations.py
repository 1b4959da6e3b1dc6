"""``data.relations``: each training row draws a relation (a class task) from a counter hash of
(seed, step, global row); the batch carries the relation's text and labels that are equal exactly
for rows sharing the relation and the class — what ``rcml`` trains on."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import DataConfig
from contrastkit.data.relations import Relations
from contrastkit.losses import LossConfig, conditioned
from contrastkit.train import RunConfig, read_metrics, train


class Task:
    def __init__(self, labels):
        self.labels = np.asarray(labels)


TASKS = {"color": Task([0, 1, 2, 0, 1, -1, 2, 0]), "shape": Task([1, 1, 0, 0, 3, 3, -1, 2])}
REL = {"color": "the same colour", "shape": "the same shape"}


def test_relation_labels_group_rows_by_relation_and_class():
    rel = Relations.of(TASKS, REL, "toy")
    images = torch.tensor([0, 3, 7, 1, 4, 5, 6, 2, 0, 3])
    texts, labels = rel.batch(images, seed=5, step=11, offset=0)
    assert len(texts) == 10 and set(texts) == set(REL.values())  # both drawn in 10 rows (this seed)
    which = [list(REL.values()).index(t) for t in texts]
    names = list(REL)
    for i in range(10):
        ci = TASKS[names[which[i]]].labels[images[i]]
        for j in range(10):
            cj = TASKS[names[which[j]]].labels[images[j]]
            related = which[i] == which[j] and ci == cj and ci >= 0
            assert bool(labels[i] == labels[j]) == (related or i == j), (i, j)
    # a row whose class is unknown in its drawn relation relates to nothing else
    for i in range(10):
        if TASKS[names[which[i]]].labels[images[i]] < 0:
            assert int(labels[i]) == -1 - i


def test_draws_depend_only_on_seed_step_and_global_row():
    rel = Relations.of(TASKS, REL)
    images = torch.arange(8)
    full = rel.batch(images, seed=1, step=3, offset=0)
    shard = rel.batch(images[4:], seed=1, step=3, offset=4)  # rank 1 of 2: global rows 4..7
    assert full[0][4:] == shard[0] and torch.equal(full[1][4:], shard[1])
    assert rel.batch(images, seed=1, step=3, offset=0)[0] == full[0]  # repeatable
    draws = [rel.batch(torch.zeros(64, dtype=torch.long), seed=1, step=t, offset=0)[0] for t in range(50)]
    share = np.mean([t == REL["color"] for d in draws for t in d])
    assert abs(share - 0.5) < 5 * math.sqrt(0.25 / 3200)  # uniform over the relations


def test_bad_relations_are_named():
    with pytest.raises(InputError, match=r"does not have; it has \['color', 'shape'\]"):
        Relations.of(TASKS, {"size": "the same size"}, "toy")
    with pytest.raises(ConfigError, match="non-empty text"):
        DataConfig(relations={"color": " "})
    with pytest.raises(ConfigError, match="label_task"):
        DataConfig(relations=REL, label_task="shape")


def test_rcml_trains_on_shapes_relations(tmp_path, monkeypatch):
    seen = []
    real = conditioned.RCMLLoss.forward

    def spy(self, emb, **aux):
        seen.append((emb["relation"].shape, aux["labels"].clone()))
        return real(self, emb, **aux)

    monkeypatch.setattr(conditioned.RCMLLoss, "forward", spy)
    base = RunConfig.tiny(name="rcml", out_dir=str(tmp_path))
    cfg = dataclasses.replace(
        base,
        data=dataclasses.replace(
            base.data, relations={"color": "the same colour", "shape": "the same shape"}
        ),
        loss=LossConfig(name="rcml", params={"dim": base.model.embed_dim}),
        train=dataclasses.replace(base.train, steps=3, log_every=1, ckpt_every=3),
    )
    result = train(cfg)
    losses = [r["loss"] for r in read_metrics(result.run_dir) if "loss" in r]
    assert result.skipped == 0 and len(losses) == 3 and all(math.isfinite(v) for v in losses)
    b, d = cfg.train.batch_size, base.model.embed_dim
    assert [s for s, _ in seen] == [torch.Size([b, d])] * 3  # one embedded relation per pair
    # some rows share a relation and a class (positives beyond the own pair)
    assert all(len(lab.unique()) < b for _, lab in seen)
