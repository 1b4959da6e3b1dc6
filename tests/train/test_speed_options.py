"""Speed options (optim.impl, train.channels_last, train.compile): same numbers to float rounding,
checkpoints that load into a plain model, exact resume, clear config errors."""

import dataclasses
import json
import math
import warnings

import pytest
import torch

from contrastkit.core.config import apply_overrides, from_dict
from contrastkit.core.errors import ConfigError
from contrastkit.data import make_shapes
from contrastkit.models.dual_encoder import ModelConfig, build_model
from contrastkit.train import (
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_run,
    read_metrics,
    resume,
    speed,
    train,
)
from contrastkit.train.optim import build_optimizer


def tiny(tmp_path, optim=None, **train_changes):
    cfg = RunConfig.tiny(out_dir=str(tmp_path))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_changes))
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, **(optim or {})))


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


# --- configuration ------------------------------------------------------------------------------


def test_options_are_selectable_from_a_config_dict():
    raw = {"optim": {"impl": "foreach"}, "train": {"compile": True, "channels_last": True}}
    cfg = from_dict(RunConfig, raw)
    assert cfg.optim.impl == "foreach" and cfg.train.compile and cfg.train.channels_last
    assert RunConfig().optim.impl == "auto" and not RunConfig().train.compile
    sets = ["train.compile=true", "train.channels_last=true", "optim.impl=fused"]  # --set on the CLI
    cfg = from_dict(RunConfig, apply_overrides({}, sets))
    assert cfg.train.compile and cfg.train.channels_last and cfg.optim.impl == "fused"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OptimConfig(impl="fast"), "optim.impl must be one of"),
        (lambda: TrainConfig(compile="yes"), "train.compile must be true or false"),
        (lambda: TrainConfig(channels_last=1), "train.channels_last must be true or false"),
        (lambda: from_dict(RunConfig, {"optim": {"impl": "apex"}}), "impl"),
    ],
)
def test_bad_values_are_config_errors(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


# --- optim.impl: every implementation is AdamW, checked against a float64 form ------------------


def adamw_float64(p, grads, lr, betas, eps, wd):
    """Decoupled-weight-decay Adam (Loshchilov & Hutter) with bias correction, in float64."""
    p, m, v = (
        p.double().clone(),
        torch.zeros_like(p, dtype=torch.float64),
        torch.zeros_like(p, dtype=torch.float64),
    )
    for t, g in enumerate(grads, 1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


@pytest.mark.parametrize("impl", ["auto", "for_loop", "foreach", "fused"])
def test_each_impl_is_adamw_to_float_rounding(impl, rng):
    cfg = OptimConfig(impl=impl, lr=1e-2, weight_decay=0.1)
    w0 = [torch.randn(16, 8, generator=rng), torch.randn(8, generator=rng)]
    grads = [[torch.randn_like(w) * 10 ** (-k) for k in range(3)] for w in w0]  # three steps
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = build_optimizer(cfg, [{"params": params, "weight_decay": cfg.weight_decay}])
    for step in range(3):
        for p, g in zip(params, grads):
            p.grad = g[step].clone()
        opt.step()
    for p, w, g in zip(params, w0, grads):
        want = adamw_float64(w, g, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay)
        # 3 updates of ~lr each, in float32: a few ulps of |w| ~ 1 plus rounding of m/sqrt(v)
        assert torch.allclose(p.double(), want, rtol=0, atol=2e-6), (p.double() - want).abs().max()


def test_foreach_and_fused_flags_reach_the_optimizer():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert build_optimizer(OptimConfig(impl="foreach"), [{"params": params}]).defaults["foreach"] is True
    assert build_optimizer(OptimConfig(impl="for_loop"), [{"params": params}]).defaults["foreach"] is False
    assert build_optimizer(OptimConfig(impl="fused"), [{"params": params}]).defaults["fused"] is True


# --- whole runs: the same losses to rounding, resumable, loadable --------------------------------

# Adam's first updates are ±lr for any gradient component (m/sqrt(v) = sign(g)), so a rounding
# difference in a near-zero gradient moves that weight by 2·lr: runs that compute the same thing in
# another order agree closely at first and drift apart over steps. Step 1's loss (before any update)
# agrees to float32 rounding; step 3's to 1e-3 relative.
STEP1_RTOL, STEP3_RTOL = 1e-5, 1e-3


@pytest.mark.parametrize(
    "changes",
    [{"optim": {"impl": "foreach"}}, {"optim": {"impl": "fused"}}, {"channels_last": True}],
    ids=["foreach", "fused", "channels_last"],
)
def test_option_gives_the_default_runs_losses(tmp_path, changes):
    base = losses(train(tiny(tmp_path / "base", steps=3, log_every=1)).run_dir)
    run = losses(train(tiny(tmp_path / "opt", steps=3, log_every=1, **changes)).run_dir)
    assert math.isclose(run[1], base[1], rel_tol=STEP1_RTOL)
    assert math.isclose(run[3], base[3], rel_tol=STEP3_RTOL)


@pytest.mark.parametrize("impl", ["auto", "fused"])
def test_channels_last_run_resumes_exactly_and_loads_into_a_plain_model(tmp_path, impl):
    # fused: its kernel pairs weight and moments by memory position, so the moments (saved
    # contiguous) must get the channels-last weights' strides back on load (checkpoint.py)
    opt = {"impl": impl}
    full = train(tiny(tmp_path / "full", opt, steps=12, log_every=1, ckpt_every=100, channels_last=True))
    cut = train(tiny(tmp_path / "cut", opt, steps=12, log_every=1, ckpt_every=6, channels_last=True))
    (cut.run_dir / "checkpoints" / "latest.json").write_text(json.dumps({"step": 6, "path": "step_00000006"}))
    resume(cut.run_dir)
    a, b = losses(full.run_dir), losses(cut.run_dir)
    assert [b[k] for k in range(7, 13)] == [a[k] for k in range(7, 13)]
    _, model, _, _ = load_run(cut.run_dir)  # a plain (contiguous) model
    conv = next(p for p in model.parameters() if p.ndim == 4)
    assert conv.is_contiguous()


def test_no_compiler_warns_and_trains_uncompiled(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    model = build_model(ModelConfig.tiny(), texts=["a red circle", "a blue square"])
    with pytest.warns(UserWarning, match="needs a C\\+\\+ compiler"):
        done = speed.apply_speed_options(
            model, compile_towers=True, channels_last=False, device=torch.device("cpu")
        )
    assert done is False
    assert all(t._compiled_call_impl is None for t in model.towers.values())


@pytest.mark.slow
@pytest.mark.skipif(speed.compiler_missing(torch.device("cpu")), reason="no C++ compiler")
def test_compiled_run_matches_resumes_and_loads_uncompiled(tmp_path):
    """~2 min: torch.compile of both tiny towers, in two runs."""
    base = losses(train(tiny(tmp_path / "base", steps=6, log_every=1)).run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inductor's own notices (no CUDA runtime, …)
        run = train(tiny(tmp_path / "c", steps=6, log_every=1, ckpt_every=3, compile=True))
        (run.run_dir / "checkpoints" / "latest.json").write_text(
            json.dumps({"step": 3, "path": "step_00000003"})
        )
        first = losses(run.run_dir)
        resume(run.run_dir)
    again = losses(run.run_dir)
    assert math.isclose(first[1], base[1], rel_tol=STEP1_RTOL)
    assert math.isclose(first[3], base[3], rel_tol=STEP3_RTOL)
    assert [again[k] for k in (4, 5, 6)] == [first[k] for k in (4, 5, 6)]  # compiled resume is exact
    cfg, model, _, _ = load_run(run.run_dir)  # an uncompiled model: same state_dict keys
    assert cfg.train.compile
    plain = build_model(cfg.model, assets_dir=run.run_dir / "assets")
    assert list(model.state_dict()) == list(plain.state_dict())
    pairs = make_shapes("test", 4)
    with torch.no_grad():
        emb = model({"image": pairs.images, "text": model.tokenize([c[0] for c in pairs.captions])})
    assert all(torch.isfinite(e).all() for e in emb.values())
