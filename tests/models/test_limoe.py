"""LIMoE (M-LIMOE): one shared sparse-MoE transformer for images and text, trained through the
trainer with its routing-entropy terms in the objective; refusals; export; expert usage."""

import dataclasses

import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.data.shapes import make_shapes
from contrastkit.models import ModelConfig, TowerConfig, build_model
from contrastkit.models.aux import pop_aux_losses
from contrastkit.models.moe import SparseMoE, entropy
from contrastkit.train import RunConfig, read_metrics, train

PARAMS = {"width": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0, "patch_size": 8, "experts": 4}


def _model_config(**params) -> ModelConfig:
    towers = {"image": TowerConfig("limoe", {**PARAMS, **params}), "text": TowerConfig("limoe_text", {})}
    return ModelConfig(towers=towers, embed_dim=16)


def _model(**params):
    pairs = make_shapes("train", n=48)
    texts = [c for caps in pairs.captions for c in caps]
    return build_model(_model_config(**params), texts=texts), pairs


def _run_config(tmp_path, name="limoe", steps=3, **params) -> RunConfig:
    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    train_cfg = dataclasses.replace(base.train, steps=steps, batch_size=16, log_every=1, ckpt_every=steps)
    return dataclasses.replace(base, model=_model_config(**params), train=train_cfg)


def test_one_transformer_serves_both_modalities():
    model, _ = _model()
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if n.startswith("towers.text.body")]  # registered once, under image
    assert {n.split(".")[2] for n in names if n.startswith("towers.text.")} == {"pos", "embed"}
    model.eval()
    ids = model.tokenize(["a red circle", "a blue square"])
    before = model.encode("text", ids)
    with torch.no_grad():
        w = model.towers["image"].body.blocks[0].attn.qkv.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    assert not torch.allclose(before, model.encode("text", ids))  # text runs the image tower's body


def test_regularisers_are_recorded_per_modality_in_training_only():
    model, pairs = _model(local_weight=0.5, global_weight=0.25)
    model.train()
    batch = {"image": pairs.images[:8], "text": model.tokenize([c[0] for c in pairs.captions[:8]])}
    probs = {}
    moe = [m for m in model.modules() if isinstance(m, SparseMoE)]
    hooks = [
        layer.register_forward_hook(
            lambda mod, args, kw, out: probs.setdefault(kw["modality"], []).append(out[1].detach()),
            with_kwargs=True,
        )
        for layer in moe
    ]
    model(batch)
    for h in hooks:
        h.remove()
    aux = {k: v.detach() for k, v in pop_aux_losses(model).items()}
    assert sorted(aux) == [f"limoe/{m}/{k}" for m in ("image", "text") for k in ("global", "local")]
    for m in ("image", "text"):  # Σ_layers λ·Ω against the direct formulas on the same probabilities
        local = sum(float(entropy(p).mean()) for p in probs[m])
        glob = sum(-float(entropy(p.mean(0))) for p in probs[m])
        assert float(aux[f"limoe/{m}/local"]) == pytest.approx(0.5 * local, rel=1e-6)
        assert float(aux[f"limoe/{m}/global"]) == pytest.approx(0.25 * glob, rel=1e-6)
    assert pop_aux_losses(model) == {}  # popped: cleared
    model.eval()
    model(batch)
    assert pop_aux_losses(model) == {}  # evaluation records nothing


def test_thresholded_form_per_modality():
    model, pairs = _model(tau_text=100.0, tau_image=0.0)
    model.train()
    model({"image": pairs.images[:8], "text": model.tokenize([c[0] for c in pairs.captions[:8]])})
    aux = {k: v.detach() for k, v in pop_aux_losses(model).items()}
    assert float(aux["limoe/image/global"]) == 0.0  # τ = 0 ≤ H(p̄): no penalty
    assert float(aux["limoe/text/global"]) > 0.0  # τ = 100 > log E: max(0, τ − H) = τ − H


def test_trains_from_config_and_the_aux_terms_reach_the_optimiser(tmp_path):
    plain = read_metrics(
        train(_run_config(tmp_path, "a", steps=1, local_weight=0.0, global_weight=0.0)).run_dir
    )
    heavy = read_metrics(
        train(_run_config(tmp_path, "b", steps=1, local_weight=5.0, global_weight=5.0)).run_dir
    )
    a, b = plain[-1], heavy[-1]
    keys = [f"aux/limoe/{m}/{k}" for m in ("image", "text") for k in ("local", "global")]
    assert all(k in b for k in keys) and all(a[k] == 0.0 for k in keys)
    # same initial weights and batch: the logged loss is the CLIP loss + the recorded terms
    assert b["loss"] - sum(b[k] for k in keys) == pytest.approx(a["loss"], abs=1e-5)
    assert b["grad_norm"] != pytest.approx(a["grad_norm"], rel=1e-3)  # the terms change the gradient


def test_gradient_caching_is_refused_in_the_config_and_in_grad_cache(tmp_path):
    from contrastkit.scale import ScaleConfig, embed_in_chunks

    cfg = dataclasses.replace(_run_config(tmp_path), scale=ScaleConfig(chunk_size=4))
    with pytest.raises(
        ConfigError, match="scale.chunk_size .gradient caching. cannot be exact with tower 'limoe'"
    ):
        train(cfg)
    assert not (tmp_path / "limoe").exists()  # refused before any folder or data
    model, pairs = _model()
    with pytest.raises(ConfigError, match="gradient caching cannot be exact.*capacity"):
        embed_in_chunks(model, {"image": pairs.images[:8]}, 4)


def test_fsdp_momentum_and_tower_order_are_refused(tmp_path):
    from contrastkit.models.momentum import MomentumConfig

    cfg = _run_config(tmp_path)
    if "dist_wrapper" in {f.name for f in dataclasses.fields(cfg.train)}:
        fsdp = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, dist_wrapper="fsdp"))
        with pytest.raises(ConfigError, match="FSDP shards"):
            train(fsdp)
    with pytest.raises(ConfigError, match="momentum cannot follow"):
        build_model(
            dataclasses.replace(_model_config(), momentum=MomentumConfig(modalities=("text",))), texts=["a"]
        )
    backwards = ModelConfig(
        towers={"text": TowerConfig("limoe_text", {}), "image": TowerConfig("limoe", PARAMS)}, embed_dim=8
    )
    with pytest.raises(ConfigError, match="listed before it"):
        build_model(backwards, texts=["a red circle"])


def test_export_rebuilds_equal_and_experts_task_plots_usage(tmp_path):
    from contrastkit.cli import main
    from contrastkit.evaluation import evaluate_model
    from contrastkit.models import load
    from contrastkit.train import load_run

    run = train(_run_config(tmp_path, steps=2)).run_dir
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
    _, trained, _, _ = load_run(run)
    rebuilt = load(tmp_path / "st")
    images, texts = make_shapes("test", n=6).images, ["a red circle", "a large blue star on the left"]
    with torch.no_grad():
        assert torch.equal(rebuilt.encode("image", images), trained.encode("image", images))
        assert torch.equal(
            rebuilt.encode("text", rebuilt.tokenize(texts)), trained.encode("text", trained.tokenize(texts))
        )
    report = evaluate_model(run, out_dir=tmp_path / "ev", splits=["test"], tasks=["experts"])
    m = report["metrics"]["test"]
    assert 0 <= m["experts/layer0/overlap"] <= 1 and m["experts/image/layer0/used"] >= 1
    assert (tmp_path / "ev" / "plots" / "test" / "experts.png").stat().st_size > 1000
    counts = __import__("json").loads((tmp_path / "ev" / "plots" / "test" / "experts.json").read_text())
    assert counts["image"]["tokens"] == [128 * 16]  # one MoE layer: 128 test images × 16 patches


def _dist_worker(out_dir: str, wrapper: str) -> dict:
    cfg = _run_config(out_dir, f"limoe-{wrapper}", steps=3)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, dist_wrapper=wrapper))
    rows = read_metrics(train(cfg).run_dir)
    return {"loss": [r["loss"] for r in rows], "aux": [r["aux/limoe/text/global"] for r in rows]}


@pytest.mark.slow
def test_two_ranks_train_the_shared_weights_alike_under_ddp_and_allreduce(tmp_path):
    """The text tower runs weights registered under the image tower (outside its own DDP wrapper):
    DDP must average their gradient exactly as the plain all-reduce does (2 ranks: bit-identical)."""
    from contrastkit.scale.launch import spawn_gloo

    if "dist_wrapper" not in {f.name for f in dataclasses.fields(RunConfig.tiny().train)}:
        pytest.skip("train.dist_wrapper not available")
    ddp = spawn_gloo(_dist_worker, 2, str(tmp_path / "ddp"), "ddp", timeout_s=600)
    plain = spawn_gloo(_dist_worker, 2, str(tmp_path / "ar"), "allreduce", timeout_s=600)
    assert len(ddp[0]["loss"]) == 3
    for key in ("loss", "aux"):
        assert ddp[0][key] == pytest.approx(plain[0][key], rel=1e-6), key
