"""MLCD prototypes fitted from a trained run's image embeddings."""

import dataclasses

import pytest
import torch

from contrastkit.core.errors import InputError
from contrastkit.data import load_split
from contrastkit.evaluation.multistage import run_encoders
from contrastkit.evaluation.prototypes import fit_run_prototypes
from contrastkit.losses.mlcd import fit_prototypes, load_prototypes
from contrastkit.train import RunConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = RunConfig.tiny(out_dir=str(tmp_path_factory.mktemp("runs")))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, ckpt_every=2))
    return train(cfg).run_dir


def test_centres_of_the_runs_training_images(run, tmp_path):
    centres = fit_run_prototypes(run, tmp_path / "p.pt", k=4, max_images=64, seed=1)
    cfg, _, _, enc, _ = run_encoders(run)
    emb = enc.images(load_split(cfg.data, "train").images[:64])
    torch.testing.assert_close(centres, fit_prototypes(emb, 4, 20, 1).float())
    torch.testing.assert_close(load_prototypes(tmp_path / "p.pt"), centres)
    assert centres.shape == (4, emb.shape[1])
    with pytest.raises(InputError, match="fewer than k=100"):
        fit_run_prototypes(run, tmp_path / "q.pt", k=100, max_images=10)
