"""Towers from timm / transformers, the dual encoder, locking, tokenizers saved with the run."""

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError, MissingFileError, UnknownNameError
from contrastkit.data import make_shapes
from contrastkit.models import ModelConfig, TowerConfig, build_model


@pytest.fixture(scope="module")
def pairs():
    return make_shapes("train", 16)


@pytest.fixture(scope="module")
def model(pairs):
    torch.manual_seed(0)
    return build_model(ModelConfig.tiny(), texts=pairs.flat_captions()[0])


def test_forward_returns_embeddings_per_modality(model, pairs):
    out = model({"image": pairs.images[:4], "text": model.tokenize([c[0] for c in pairs.captions[:4]])})
    assert set(out) == {"image", "text"}
    assert out["image"].shape == (4, 32) and out["text"].shape == (4, 32)
    assert model.modalities == ("image", "text")


def test_tokenizer_is_trained_on_captions_and_pads(model, pairs):
    longest = max(pairs.flat_captions()[0], key=len)
    ids = model.tokenize(["a", longest])
    tok = model.text_tower().tokenizer
    assert ids.shape[0] == 2 and (ids[0] == tok.pad_token_id).any()
    assert tok.unk_token_id not in ids[1].tolist()  # every word of the captions is in the vocabulary


def test_saved_assets_rebuild_the_same_model(model, pairs, tmp_path):
    model.save_assets(tmp_path)
    again = build_model(ModelConfig.tiny(), assets_dir=tmp_path)
    again.load_state_dict(model.state_dict())
    model.eval()
    again.eval()
    texts = [c[0] for c in pairs.captions[:5]]
    torch.testing.assert_close(again.tokenize(texts), model.tokenize(texts))
    with torch.no_grad():
        torch.testing.assert_close(
            again.encode("text", again.tokenize(texts)), model.encode("text", model.tokenize(texts))
        )


def test_vit_tower_from_timm(pairs):
    cfg = ModelConfig(
        towers={
            "image": TowerConfig(
                "timm",
                {
                    "arch": "vit_tiny_patch16_224",
                    "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
                },
            ),
            "text": TowerConfig("hf_text", {"hidden_size": 32, "layers": 1}),
        },
        embed_dim=16,
    )
    m = build_model(cfg, texts=["a red circle"])
    assert m.encode("image", pairs.images[:3]).shape == (3, 16)


def test_locked_tower_gets_no_gradient_and_stays_in_eval(pairs):
    cfg = ModelConfig.tiny()
    towers = dict(cfg.towers)
    towers["image"] = TowerConfig(towers["image"].name, towers["image"].params, locked=True)
    m = build_model(ModelConfig(towers=towers, embed_dim=32), texts=pairs.flat_captions()[0])
    m.train()
    assert not m.towers["image"].training and m.towers["text"].training
    out = m({"image": pairs.images[:4], "text": m.tokenize(["a red circle"] * 4)})
    (out["image"].sum() + out["text"].sum()).backward()
    assert all(p.grad is None for p in m.towers["image"].parameters())
    assert m.projections["image"].weight.grad is not None


def test_errors():
    with pytest.raises(UnknownNameError, match="unknown tower 'clip_vit'"):
        build_model(
            ModelConfig(towers={"image": TowerConfig("clip_vit"), "text": TowerConfig("hf_text")}),
            texts=["a"],
        )
    with pytest.raises(InputError, match="unknown timm architecture"):
        build_model(
            ModelConfig(
                towers={"image": TowerConfig("timm", {"arch": "resnet_9000"}), "text": TowerConfig("hf_text")}
            ),
            texts=["a"],
        )
    with pytest.raises(ConfigError, match="model.towers is empty"):
        ModelConfig(towers={})
    assert list(ModelConfig(towers={"text": TowerConfig("hf_text")}).towers) == ["text"]  # text pairs
    with pytest.raises(MissingFileError, match="no Hugging Face model"):
        build_model(
            ModelConfig(
                towers={
                    "image": TowerConfig("timm"),
                    "text": TowerConfig("hf_pretrained", {"path": "/nonexistent"}),
                }
            )
        )


def test_bad_batches(model):
    with pytest.raises(InputError, match="images must be uint8"):
        model.encode("image", torch.rand(2, 3, 32, 32))
    with pytest.raises(InputError, match="empty image batch"):
        model.encode("image", torch.zeros(0, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(InputError, match="no 'audio' tower"):
        model.encode("audio", torch.zeros(1, 3))
    with pytest.raises(InputError, match="empty list of texts"):
        model.tokenize([])


def test_pretrained_text_tower_from_a_local_folder_offline(tmp_path):
    """A HF model saved locally (here a tiny BERT from a config) loads with its tokenizer, offline."""
    from transformers import BertConfig, BertModel

    from contrastkit.models import train_word_tokenizer

    tok = train_word_tokenizer(["a red circle", "a blue square"], vocab_size=50)
    tok.save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    bert.save_pretrained(str(tmp_path))  # safetensors
    assert (tmp_path / "model.safetensors").is_file()
    cfg = ModelConfig(
        towers={
            "image": ModelConfig.tiny().towers["image"],
            "text": TowerConfig("hf_pretrained", {"path": str(tmp_path)}, locked=True),
        },
        embed_dim=16,
    )
    m = build_model(cfg)
    ids = m.tokenize(["a red circle"])
    with torch.no_grad():
        want = bert.eval()(input_ids=ids).last_hidden_state.mean(1)
        got = m.towers["text"](ids)
    torch.testing.assert_close(got, want)
    assert not any(p.requires_grad for p in m.towers["text"].parameters())
