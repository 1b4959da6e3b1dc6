"""Fine-tuning from a run (``train.init_from``): the new run starts from the source's newest
weights and assets, WiSE-FT's θ₀ is exactly that checkpoint, and bad sources are clear errors."""

import dataclasses
import json

import pytest
import torch

from contrastkit.core.errors import InputError, MissingFileError
from contrastkit.train import RunConfig, load_run, train
from contrastkit.train.wise import initial_model, wise_models


def tiny(tmp_path, name, steps, **train_changes):
    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    changes = {"steps": steps, "ckpt_every": steps, **train_changes}
    return dataclasses.replace(base, train=dataclasses.replace(base.train, **changes))


def test_fine_tuning_starts_from_the_source_and_wise_theta0_is_its_checkpoint(tmp_path):
    source = train(tiny(tmp_path, "source", 4))
    _, src_model, src_loss, _ = load_run(source.run_dir)
    ft = train(tiny(tmp_path, "ft", 3, init_from=str(source.run_dir), seed=7))
    record = json.loads((ft.run_dir / "init_from.json").read_text())
    assert record["loss_state"] is True and record["checkpoint"].endswith("step_00000004")
    theta0 = initial_model(ft.run_dir).state_dict()
    for k, v in src_model.state_dict().items():
        assert torch.equal(theta0[k], v), k
    _, ft_model, _, _ = load_run(ft.run_dir)
    assert any(not torch.equal(ft_model.state_dict()[k], v) for k, v in src_model.state_dict().items())
    # the same loss config: the loss state (learnable logit scale) starts from the source's too
    from contrastkit.losses import from_config
    from contrastkit.train import setup

    cfg = tiny(tmp_path, "probe", 1, init_from=str(source.run_dir))
    fresh = from_config(cfg.loss)
    assert not torch.equal(fresh.log_scale, src_loss.log_scale)  # training moved it
    setup.init_from(cfg, source.run_dir, fresh, None)
    assert torch.equal(fresh.log_scale, src_loss.log_scale)
    tok = sorted(p.name for p in (ft.run_dir / "assets").rglob("*") if p.is_file())
    assert tok == sorted(p.name for p in (source.run_dir / "assets").rglob("*") if p.is_file())
    (_, m0), *_ = list(wise_models(ft.run_dir, [0.0]))
    for k, v in src_model.state_dict().items():
        assert torch.equal(m0.state_dict()[k], v), k


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(MissingFileError, match="no contrastkit run folder"):
        train(tiny(tmp_path, "ft", 2, init_from=str(tmp_path / "nowhere")))
    source = train(tiny(tmp_path, "source", 2))
    cfg = tiny(tmp_path, "wide", 2, init_from=str(source.run_dir))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=16))
    with pytest.raises(InputError, match="does not match the model"):
        train(cfg, overwrite=True)


def test_batchnorm_recalibration_estimates_the_exact_statistics_and_keeps_endpoints(tmp_path):
    from contrastkit.train.wise import calibration_images, recalibrate_batchnorm

    source = train(tiny(tmp_path, "source", 2))
    ft = train(tiny(tmp_path, "ft", 2, init_from=str(source.run_dir)))
    images = calibration_images(ft.run_dir, 32)
    assert images.shape[0] == 64 and images.dtype == torch.uint8  # 32 from each endpoint's data
    _, model, _, _ = load_run(ft.run_dir)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = bn.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach()))
    assert recalibrate_batchnorm(model, images, batch_size=32) > 0
    hook.remove()
    assert len(seen) == 2 and not model.training and bn.momentum == 0.1
    want = torch.cat(seen).mean(dim=(0, 2, 3))  # two equal batches: the plain mean over all images
    torch.testing.assert_close(bn.running_mean, want, rtol=1e-5, atol=1e-6)
    _, model1, _, _ = load_run(ft.run_dir)
    ends = dict(wise_models(ft.run_dir, [1.0], calibration=images))
    for k, v in model1.state_dict().items():
        assert torch.equal(ends[1.0].state_dict()[k], v), k  # α = 1 is not recalibrated: exact
