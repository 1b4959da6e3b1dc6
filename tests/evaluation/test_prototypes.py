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


def test_cli_writes_the_same_centres_and_an_mlcd_run_trains_from_them(run, tmp_path, capsys):
    from contrastkit.cli import main
    from contrastkit.core.config import from_dict
    from contrastkit.losses.base import LossConfig

    out = tmp_path / "cli.pt"
    assert (
        main(["prototypes", str(run), "--k", "4", "--out", str(out), "--max-images", "64", "--seed", "1"])
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    expected = fit_run_prototypes(run, tmp_path / "p.pt", k=4, max_images=64, seed=1)
    torch.testing.assert_close(load_prototypes(out), expected)
    # a later run selects them by name from its config; its loss holds exactly these centres
    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    loss = from_dict(
        LossConfig, {"name": "mlcd", "params": {"prototypes_file": str(out), "num_positives": 2}}
    )
    cfg = dataclasses.replace(base, loss=loss, train=dataclasses.replace(base.train, steps=2, ckpt_every=2))
    result = train(cfg)
    assert result.step == 2 and result.skipped == 0 and result.last_loss == result.last_loss  # not NaN
    from safetensors.torch import load_file

    from contrastkit.train.checkpoint import latest_checkpoint

    state = load_file(str(latest_checkpoint(result.run_dir) / "model.safetensors"))
    torch.testing.assert_close(state["loss.prototypes"], expected)  # a buffer: not trained, kept exactly
    assert main(["prototypes", str(run), "--k", "0", "--out", str(out)]) != 0
