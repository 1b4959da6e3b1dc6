"""Locking (LiT), adapters on frozen features (FuseMix) and WiSE-FT."""

import dataclasses

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models import ModelConfig, build_model
from contrastkit.train import (
    AdapterConfig,
    RunConfig,
    initial_model,
    interpolate_weights,
    load_run,
    train,
    train_heads,
)
from contrastkit.train.wise import wise_models


def _locked_cfg(tmp_path, name="lit", lr=2e-3):
    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    towers = dict(base.model.towers)
    towers["text"] = dataclasses.replace(towers["text"], locked=True)
    model = dataclasses.replace(base.model, towers=towers, lock=("projections.image.*",))
    return dataclasses.replace(base, model=model, optim=dataclasses.replace(base.optim, lr=lr))


def test_locked_tower_and_locked_group_are_bit_identical_after_training(tmp_path):
    cfg = _locked_cfg(tmp_path)
    train(cfg)
    before = initial_model(tmp_path / "lit").state_dict()
    _, after, _, _ = load_run(tmp_path / "lit")
    after = after.state_dict()
    locked = [k for k in before if k.startswith(("towers.text.", "projections.image."))]
    assert locked and all(torch.equal(before[k], after[k]) for k in locked)
    trained = [k for k in before if k.startswith("towers.image.") and before[k].is_floating_point()]
    assert any(not torch.equal(before[k], after[k]) for k in trained)  # the unlocked tower moved


def test_lock_pattern_that_matches_nothing_is_an_error():
    cfg = dataclasses.replace(ModelConfig.tiny(), lock=("towers.audio.*",))
    with pytest.raises(ConfigError, match="matches no parameter"):
        build_model(cfg, texts=["a red circle"])


def test_initial_model_is_the_exact_training_start(tmp_path):
    cfg = RunConfig.tiny(name="still", out_dir=str(tmp_path))
    towers = {m: dataclasses.replace(t, locked=True) for m, t in cfg.model.towers.items()}
    model = dataclasses.replace(cfg.model, towers=towers, lock=("projections.*",))
    cfg = dataclasses.replace(cfg, model=model, train=dataclasses.replace(cfg.train, steps=3))
    train(cfg)  # everything locked (towers in eval mode): the weights never move
    start = initial_model(tmp_path / "still").state_dict()
    _, end, _, _ = load_run(tmp_path / "still")
    assert all(torch.equal(start[k], v) for k, v in end.state_dict().items())


def test_wise_endpoints_are_exact_and_midpoint_is_the_average(tmp_path):
    train(RunConfig.tiny(name="ft", out_dir=str(tmp_path)))
    theta0 = initial_model(tmp_path / "ft").state_dict()
    _, model, _, _ = load_run(tmp_path / "ft")
    theta1 = {k: v.clone() for k, v in model.state_dict().items()}
    got = {
        a: {k: v.clone() for k, v in m.state_dict().items()}
        for a, m in wise_models(tmp_path / "ft", [0, 0.5, 1])
    }
    assert all(torch.equal(got[0][k], theta0[k]) for k in theta0)
    assert all(torch.equal(got[1][k], theta1[k]) for k in theta1)
    k = "projections.image.weight"
    torch.testing.assert_close(got[0.5][k], (theta0[k] + theta1[k]) / 2)
    with pytest.raises(InputError, match="alpha must be in"):
        interpolate_weights(theta0, theta1, 1.5)


def test_wise_cli_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    from contrastkit.cli import main

    train(RunConfig.tiny(name="w", out_dir=str(tmp_path)))
    assert main(["wise", str(tmp_path / "w"), "--alphas", "0,0.5,1", "--n", "64"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "test/shape+color" in out
    assert (tmp_path / "w" / "wise.png").stat().st_size > 0 and (tmp_path / "w" / "wise.json").is_file()


def _toy_features(n=256, seed=0):
    g = np.random.default_rng(seed)
    z = g.normal(size=(n, 8)).astype(np.float32)
    return z @ g.normal(size=(8, 24)).astype(np.float32), z @ g.normal(size=(8, 16)).astype(np.float32)


@pytest.mark.parametrize(
    "cfg", [AdapterConfig(steps=60), AdapterConfig(heads="mlp", mixup="fusemix", steps=60)]
)
def test_heads_on_frozen_features_learn_the_pairing(cfg, tmp_path):
    img, txt = _toy_features()
    path = tmp_path / "img.npy"
    np.save(path, img)
    heads, losses = train_heads(np.load(path, mmap_mode="r"), txt, cfg)  # memory-mapped input works
    assert losses[-1] < 0.5 * losses[0]
    x, t = heads.embed(img, txt)
    assert float(((t @ x.T).argmax(1) == torch.arange(len(img))).float().mean()) > 0.5
    again, _ = train_heads(img, txt, cfg)  # seeded: deterministic
    assert all(torch.equal(a, b) for a, b in zip(heads.state_dict().values(), again.state_dict().values()))


def test_adapter_config_is_validated():
    with pytest.raises(ConfigError):
        AdapterConfig(mixup="cutmix")
    with pytest.raises(InputError):
        train_heads(np.zeros((3, 4), np.float32), np.zeros((2, 4), np.float32), AdapterConfig())
