"""An open_clip model as contrastkit towers: embeddings equal open_clip's before training, a
fine-tune exports back to a folder open_clip loads with the same embeddings, LiT and WiSE-FT work."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch

from contrastkit.core.config import from_dict
from contrastkit.data import make_shapes
from contrastkit.models import ModelConfig, build_model, pretrained_logit_scale
from tests.hf_checkpoints import save_open_clip

PROMPTS = ["a red circle", "a blue square", "a small green triangle", "a white star on the left"]


def reference(name: str, images: torch.Tensor, prompts: list[str], pretrained: str | None = None):
    """What open_clip itself computes: its eval transform on PIL images → encode_image/encode_text."""
    import open_clip
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    model.eval()
    pixels = torch.stack([preprocess(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images])
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(open_clip.get_tokenizer(name)(prompts)), model


def tiny_run(tmp_path: Path, source: str, loss: str = "clip", csv: bool = False, **model_changes):
    """A 4-step fine-tune from ``source`` on Shapes, or (``csv``) on the user's-pairs path: 64 PNG
    files and a CSV of their captions."""
    from contrastkit.losses import LossConfig
    from contrastkit.train import RunConfig, train
    from tests.data._write import exact, source_config, write_pngs, write_table

    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    model = dataclasses.replace(from_dict(ModelConfig, {"from": source}), **model_changes)
    train_cfg = dataclasses.replace(base.train, steps=4, batch_size=8)
    cfg = dataclasses.replace(base, model=model, loss=LossConfig(loss), train=train_cfg)
    if csv:
        pairs = make_shapes("train", n=64)
        names = write_pngs(pairs, tmp_path / "pairs")
        rows = [[n, c[0]] for n, c in zip(names, pairs.captions)]
        table = write_table(tmp_path / "pairs" / "pairs.csv", ["image", "caption"], rows)
        data = source_config("csv", {"path": str(table), "caption_columns": ["caption"]}, exact(32))
        cfg = dataclasses.replace(cfg, data=data)
    return train(cfg).run_dir


@pytest.mark.parametrize("bias", [None, -2.5])
def test_folder_towers_equal_open_clip_embeddings(tmp_path, bias):
    folder = save_open_clip(tmp_path / "oc", bias=bias)
    cfg = from_dict(ModelConfig, {"from": f"open_clip:{folder}"})
    assert cfg.embed_dim == 16 and cfg.projection == "none" and cfg.towers["image"].name == "open_clip_image"
    model = build_model(cfg).eval()
    images = make_shapes("test", n=5).images
    ref_img, ref_txt, _ = reference(f"local-dir:{folder}", images, PROMPTS)
    with torch.no_grad():
        assert torch.allclose(model.encode("image", images), ref_img, atol=1e-5)
        assert torch.allclose(model.encode("text", model.tokenize(PROMPTS)), ref_txt, atol=1e-5)
    scale, got_bias = pretrained_logit_scale(f"open_clip:{folder}")
    assert scale == pytest.approx(20.0, rel=1e-6) and got_bias == (
        None if bias is None else pytest.approx(bias)
    )


def test_builtin_architecture_with_a_checkpoint_file(tmp_path):
    """``open_clip:NAME:CHECKPOINT``: a built-in architecture (ViT-S-32, random init) and a
    ``torch.save`` file, read with weights_only=True; images at the model's 224 pixels."""
    import open_clip

    torch.manual_seed(0)
    source = open_clip.create_model("ViT-S-32")
    ckpt = tmp_path / "vit-s-32.pt"
    torch.save({"state_dict": source.state_dict()}, ckpt)
    model = build_model(from_dict(ModelConfig, {"from": f"open_clip:ViT-S-32:{ckpt}"})).eval()
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    ref_img, ref_txt, _ = reference("ViT-S-32", images, PROMPTS[:2], pretrained=str(ckpt))
    with torch.no_grad():
        assert torch.allclose(model.encode("image", images), ref_img, atol=1e-5)
        assert torch.allclose(model.encode("text", model.tokenize(PROMPTS[:2])), ref_txt, atol=1e-5)


class _Payload:  # anything but tensors: weights_only=True refuses it
    pass


def test_bad_sources_fail_in_one_line_before_any_work(tmp_path):
    from contrastkit.core.errors import ConfigError, InputError, MissingFileError

    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        from_dict(ModelConfig, {"from": f"open_clip:ViT-Nope:{tmp_path / 'x.pt'}"})
    with pytest.raises(MissingFileError, match="no checkpoint file"):
        from_dict(ModelConfig, {"from": f"open_clip:ViT-S-32:{tmp_path / 'missing.pt'}"})
    with pytest.raises(MissingFileError, match="no open_clip folder"):
        from_dict(ModelConfig, {"from": f"open_clip:{tmp_path}"})
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weights": _Payload()}))
    with pytest.raises(InputError, match="pickle that cannot be loaded safely"):  # before any data
        from_dict(ModelConfig, {"from": f"open_clip:ViT-S-32:{evil}"})


@pytest.mark.parametrize("bias", [None, -2.5])
def test_fine_tune_then_export_to_open_clip_gives_the_same_embeddings(tmp_path, bias):
    """open_clip folder → fine-tune on pairs from a CSV → export → open_clip loads the same model."""
    import open_clip

    from contrastkit.cli import main
    from contrastkit.train import load_run

    folder = save_open_clip(tmp_path / "oc", bias=bias)
    run = tiny_run(tmp_path, f"open_clip:{folder}", loss="clip" if bias is None else "siglip", csv=True)
    out = tmp_path / "oc-out"
    assert main(["export", str(run), "--format", "open_clip", "--out", str(out)]) == 0
    _, trained, loss, _ = load_run(run)
    images = make_shapes("test", n=4).images
    ref_img, ref_txt, exported = reference(f"local-dir:{out}", images, PROMPTS)
    with torch.no_grad():
        assert torch.allclose(trained.encode("image", images), ref_img, atol=1e-5)
        assert torch.allclose(trained.encode("text", trained.tokenize(PROMPTS)), ref_txt, atol=1e-5)
    assert exported.logit_scale.item() == pytest.approx(loss.log_scale.item(), abs=1e-6)
    if bias is not None:  # the loss started at the checkpoint's bias and learned it
        assert loss.bias.item() != bias
        assert exported.logit_bias.item() == pytest.approx(loss.bias.item(), abs=1e-6)
    pretrained = open_clip.create_model(f"local-dir:{folder}")
    moved = max((a - b).abs().max() for a, b in zip(exported.parameters(), pretrained.parameters()))
    assert moved > 0  # the export carries the fine-tuned weights
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "no")]) == 2


def test_lit_and_wise_ft_from_an_open_clip_model(tmp_path):
    """The locked text tower stays equal to open_clip's; WiSE-FT α = 0 is the pretrained model
    exactly, α = 1 the fine-tuned one."""
    from contrastkit.train import load_run
    from contrastkit.train.wise import wise_models

    folder = save_open_clip(tmp_path / "oc")
    cfg = from_dict(ModelConfig, {"from": f"open_clip:{folder}"})
    towers = {**cfg.towers, "text": dataclasses.replace(cfg.towers["text"], locked=True)}
    run = tiny_run(tmp_path, f"open_clip:{folder}", towers=towers)
    _, trained, _, _ = load_run(run)
    images = make_shapes("test", n=4).images
    ref_img, ref_txt, _ = reference(f"local-dir:{folder}", images, PROMPTS)
    with torch.no_grad():
        assert torch.allclose(trained.encode("text", trained.tokenize(PROMPTS)), ref_txt, atol=1e-5)
        assert not torch.allclose(trained.encode("image", images), ref_img, atol=1e-4)
        wise = {a: m.encode("image", images) for a, m in wise_models(run, [0.0, 1.0])}
        assert torch.allclose(wise[0.0], ref_img, atol=1e-5)
        assert torch.equal(wise[1.0], trained.encode("image", images))


def test_eval_an_exported_open_clip_folder_gives_the_runs_numbers(tmp_path):
    """``contrastkit eval DIR`` on an open_clip folder: the same zero-shot and retrieval numbers as
    the run it was exported from."""
    from contrastkit.cli import main
    from contrastkit.core.io import read_json

    folder = save_open_clip(tmp_path / "oc")
    run = tiny_run(tmp_path, f"open_clip:{folder}")
    out = tmp_path / "oc-out"
    assert main(["export", str(run), "--format", "open_clip", "--out", str(out)]) == 0
    common = ["--tasks", "zeroshot,retrieval", "--data", "shapes", "--data-param", "n=64", "--no-progress"]
    assert main(["eval", str(run), "--out", str(tmp_path / "e-run"), *common]) == 0
    assert main(["eval", str(out), "--out", str(tmp_path / "e-oc"), *common]) == 0
    got = read_json(tmp_path / "e-oc" / "eval.json")
    want = read_json(tmp_path / "e-run" / "eval.json")
    assert got["model"]["kind"] == "open_clip"
    for key, value in want["metrics"]["test"].items():
        assert got["metrics"]["test"][key] == pytest.approx(value, abs=1e-9), key
