"""A local Hugging Face CLIP/SigLIP folder as contrastkit towers: embeddings equal transformers'
before training, fine-tuning trains them, and the run rebuilds from its own assets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from contrastkit.data import make_shapes
from contrastkit.models import ModelConfig, TowerConfig, build_model, hf_dual_logit_scale
from tests import hf_checkpoints

PROMPTS = ["a red circle", "a blue square", "a small green triangle", "a white star on the left"]
TEXTS = make_shapes("train", n=200).flat_captions()[0] + PROMPTS


def save_clip(folder: Path) -> Path:
    return hf_checkpoints.save_clip(folder, TEXTS)


def save_siglip(folder: Path) -> Path:
    return hf_checkpoints.save_siglip(folder, TEXTS)


def hf_model_config(folder: Path, embed_dim: int) -> ModelConfig:
    return ModelConfig(
        towers={
            "image": TowerConfig("hf_dual_image", {"path": str(folder)}),
            "text": TowerConfig("hf_dual_text", {"path": str(folder)}),
        },
        embed_dim=embed_dim,
        projection="none",
    )


def reference(folder: Path, kind: str, images: torch.Tensor, prompts: list[str], max_length: int = 16):
    """What transformers itself computes: processor → get_*_features."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

    model = (CLIPModel if kind == "clip" else SiglipModel).from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(images=list(images), return_tensors="pt")[
        "pixel_values"
    ]
    tok = AutoTokenizer.from_pretrained(folder)
    kw = {"padding": "max_length", "max_length": max_length} if kind == "siglip" else {"padding": True}
    enc = tok(prompts, return_tensors="pt", truncation=True, **kw)
    inputs = {"input_ids": enc["input_ids"]}
    if kind == "clip":
        inputs["attention_mask"] = enc["attention_mask"]

    def pooled(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        return pooled(model.get_image_features(pixel_values=pixels)), pooled(
            model.get_text_features(**inputs)
        )


@pytest.mark.parametrize("kind,dim", [("clip", 16), ("siglip", 32)])
def test_towers_equal_transformers_embeddings(tmp_path, kind, dim):
    folder = (save_clip if kind == "clip" else save_siglip)(tmp_path / kind)
    model = build_model(hf_model_config(folder, dim)).eval()
    images = make_shapes("test", n=5).images
    ref_img, ref_txt = reference(folder, kind, images, PROMPTS)
    with torch.no_grad():
        got_img = model.encode("image", images)
        got_txt = model.encode("text", model.tokenize(PROMPTS))
    assert torch.allclose(got_img, ref_img, atol=1e-5) and torch.allclose(got_txt, ref_txt, atol=1e-5)
    scale, bias = hf_dual_logit_scale(folder)
    if kind == "clip":
        assert scale == pytest.approx(20.0) and bias is None
    else:
        assert scale > 0 and isinstance(bias, float)


def test_a_run_rebuilds_from_its_assets_without_the_source_folder(tmp_path):
    from contrastkit.train import RunConfig, load_run, read_metrics, train

    folder = save_clip(tmp_path / "clip")
    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    cfg = dataclasses.replace(
        base,
        model=hf_model_config(folder, 16),
        train=dataclasses.replace(base.train, steps=4, batch_size=8, log_every=1),
    )
    result = train(cfg)
    assert len(read_metrics(result.run_dir)) == 4
    moved = tmp_path / "elsewhere"
    folder.rename(moved)  # the run keeps config, tokenizer and processor in its assets
    _, trained, _, _ = load_run(result.run_dir)
    images = make_shapes("test", n=3).images
    start = build_model(hf_model_config(moved, 16)).eval()
    with torch.no_grad():
        changed = (trained.encode("image", images) - start.encode("image", images)).abs().max()
    assert changed > 1e-4  # fine-tuning moved the pretrained weights


@pytest.mark.parametrize("kind,dim", [("clip", 16), ("siglip", 32)])
def test_fine_tune_then_export_to_transformers_gives_the_same_embeddings(tmp_path, kind, dim):
    from transformers import AutoModel

    from contrastkit.cli import main
    from contrastkit.losses import LossConfig
    from contrastkit.train import RunConfig, load_run, train

    folder = (save_clip if kind == "clip" else save_siglip)(tmp_path / kind)
    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    loss = LossConfig("clip") if kind == "clip" else LossConfig("siglip")
    cfg = dataclasses.replace(
        base,
        model=hf_model_config(folder, dim),
        loss=loss,
        train=dataclasses.replace(base.train, steps=3, batch_size=8),
    )
    run = train(cfg).run_dir
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf-out")]) == 0
    _, trained, trained_loss, _ = load_run(run)
    images = make_shapes("test", n=4).images
    ref_img, ref_txt = reference(tmp_path / "hf-out", kind, images, PROMPTS)
    with torch.no_grad():
        got_img = trained.encode("image", images)
        got_txt = trained.encode("text", trained.tokenize(PROMPTS))
    assert torch.allclose(got_img, ref_img, atol=1e-5) and torch.allclose(got_txt, ref_txt, atol=1e-5)
    exported = AutoModel.from_pretrained(tmp_path / "hf-out")
    want = trained_loss.log_scale.item()
    assert exported.logit_scale.item() == pytest.approx(want, abs=1e-6)
    pretrained = AutoModel.from_pretrained(folder)
    moved = max((a - b).abs().max() for a, b in zip(exported.parameters(), pretrained.parameters()))
    assert moved > 0  # the export carries the fine-tuned weights, not the source's


def test_safetensors_export_rebuilds_anywhere_and_hf_refuses_other_shapes(tmp_path, capsys):
    from contrastkit.cli import main
    from contrastkit.models import load
    from contrastkit.train import RunConfig, load_run, train

    run = train(RunConfig.tiny(out_dir=str(tmp_path / "runs"))).run_dir
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
    _, trained, _, _ = load_run(run)
    rebuilt = load(tmp_path / "st")
    images = make_shapes("test", n=4).images
    with torch.no_grad():
        assert torch.equal(rebuilt.encode("image", images), trained.encode("image", images))
        assert torch.equal(
            rebuilt.encode("text", rebuilt.tokenize(PROMPTS)),
            trained.encode("text", trained.tokenize(PROMPTS)),
        )
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "needs a transformers-shaped model" in err and "--format safetensors" in err


def test_lit_and_wise_ft_from_a_pretrained_clip(tmp_path):
    """LiT: the locked pretrained text tower stays bit-identical; WiSE-FT α = 0 is the pretrained
    model exactly and α = 1 the fine-tuned one."""
    from contrastkit.train import RunConfig, load_run, train
    from contrastkit.train.wise import wise_models

    folder = save_clip(tmp_path / "clip")
    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    mcfg = hf_model_config(folder, 16)
    towers = {**mcfg.towers, "text": dataclasses.replace(mcfg.towers["text"], locked=True)}
    cfg = dataclasses.replace(
        base,
        model=dataclasses.replace(mcfg, towers=towers),
        train=dataclasses.replace(base.train, steps=4, batch_size=8),
    )
    run = train(cfg).run_dir
    _, trained, _, _ = load_run(run)
    images = make_shapes("test", n=4).images
    ref_img, ref_txt = reference(folder, "clip", images, PROMPTS)
    with torch.no_grad():
        assert torch.allclose(trained.encode("text", trained.tokenize(PROMPTS)), ref_txt, atol=1e-6)  # locked
        assert not torch.allclose(trained.encode("image", images), ref_img, atol=1e-4)  # fine-tuned
        wise = {a: m.encode("image", images) for a, m in wise_models(run, [0.0, 1.0])}  # one model, reloaded
        assert torch.allclose(wise[0.0], ref_img, atol=1e-6)  # θ₀ = the pretrained model
        assert torch.equal(wise[1.0], trained.encode("image", images))


def test_model_from_hf_builds_the_pretrained_model_and_its_logit_scale(tmp_path):
    from contrastkit.cli import main
    from contrastkit.core.config import from_dict, load_yaml
    from contrastkit.core.errors import ConfigError
    from contrastkit.train import RunConfig, load_run, read_metrics

    folder = save_clip(tmp_path / "clip")
    cfg = from_dict(ModelConfig, {"from": f"hf:{folder}"})
    assert cfg.embed_dim == 16 and cfg.projection == "none" and cfg.towers["text"].name == "hf_dual_text"
    with pytest.raises(ConfigError, match="model.from must be hf:DIR"):
        from_dict(ModelConfig, {"from": str(folder)})
    with pytest.raises(FileNotFoundError, match="no Hugging Face CLIP/SigLIP folder"):
        from_dict(ModelConfig, {"from": f"hf:{tmp_path / 'nowhere'}"})
    sets = [
        f"model.from=hf:{folder}",
        "train.steps=2",
        "train.batch_size=8",
        "train.log_every=1",
        "train.threads=1",
        "train.progress=false",
        "data.splits.train.n=32",
        f"out_dir={tmp_path / 'runs'}",
    ]
    assert (
        main(["train", "--config", "configs/shapes-clip.yaml", *[a for s in sets for a in ("--set", s)]]) == 0
    )
    run = tmp_path / "runs" / "shapes-clip"
    saved = from_dict(RunConfig, load_yaml(run / "config.yaml"))
    assert saved.model.from_ == f"hf:{folder}" and saved.model.embed_dim == 16
    assert read_metrics(run)[0]["logit_scale"] == pytest.approx(20.0, rel=1e-2)  # the checkpoint's scale
    _, model, _, _ = load_run(run)
    assert model.encode("image", make_shapes("test", n=2).images).shape == (2, 16)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_shipped_hf_configs_train_from_scratch_and_export_to_transformers(tmp_path, kind):
    """configs/shapes-{clip,siglip}-hf.yaml build towers of exactly CLIPModel/SiglipModel shape:
    a run trained from scratch exports to a folder transformers loads with the same embeddings."""
    from contrastkit.cli import main
    from contrastkit.train import load_run

    sets = [
        "train.steps=3",
        "train.batch_size=8",
        "train.threads=1",
        "train.progress=false",
        "data.splits.train.n=64",
        f"out_dir={tmp_path / 'runs'}",
    ]
    args = ["train", "--config", f"configs/shapes-{kind}-hf.yaml", *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0
    run, out = tmp_path / "runs" / f"shapes-{kind}-hf", tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    _, trained, _, _ = load_run(run)
    images = make_shapes("test", n=4).images
    ref_img, ref_txt = reference(out, kind, images, PROMPTS, max_length=32)
    with torch.no_grad():
        assert torch.allclose(trained.encode("image", images), ref_img, atol=1e-5)
        assert torch.allclose(trained.encode("text", trained.tokenize(PROMPTS)), ref_txt, atol=1e-5)
    assert not (run / "assets" / "image" / "source.json").exists()  # no pretrained θ₀ to record


def test_train_only_the_pretrained_heads(tmp_path):
    """Heads on locked towers from a checkpoint: ``lock`` every tower weight but the checkpoint's own
    projections (CLIP's visual_projection / text_projection); only those learn, and the model keeps
    the shape ``--format hf`` exports."""
    from contrastkit.train import RunConfig, load_run, train

    folder = save_clip(tmp_path / "clip")
    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    lock = ("towers.image.vision.*", "towers.text.encoder.*")
    cfg = dataclasses.replace(
        base,
        model=dataclasses.replace(hf_model_config(folder, 16), lock=lock),
        train=dataclasses.replace(base.train, steps=3, batch_size=8),
    )
    start = build_model(cfg.model)
    _, trained, _, _ = load_run(train(cfg).run_dir)
    before, after = start.state_dict(), trained.state_dict()
    heads = {k for k in before if ".proj." in k}
    assert heads == {"towers.image.proj.weight", "towers.text.proj.weight"}
    assert all(torch.equal(before[k], after[k]) for k in before if k not in heads)
    assert all(not torch.equal(before[k], after[k]) for k in heads)
