"""Token-set towers (timm_tokens, hf_text_tokens) and the Q-Former towers (qformer, qformer_text):
shapes, the zero-row padding convention, shared weights, and which parameters get gradients."""

import pytest
import torch
from safetensors.torch import save_file

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import make_shapes
from contrastkit.losses import build as build_loss
from contrastkit.losses.maxsim import token_set
from contrastkit.models import ModelConfig, TowerConfig, build_model

SMALL = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 64], "stem_width": 16, "output_stride": 8}
VISION = {"name": "timm", "params": {"arch": "resnet18", "kwargs": SMALL}}


def token_config(**model) -> ModelConfig:
    return ModelConfig(
        towers={
            "image": TowerConfig("timm_tokens", {"arch": "resnet18", "kwargs": SMALL}),
            "text": TowerConfig(
                "hf_text_tokens", {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64}
            ),
        },
        embed_dim=16,
        **model,
    )


def qformer_config(vision=VISION, **params) -> ModelConfig:
    q = {"vision": vision, "num_queries": 3, "hidden_size": 32, "layers": 2, "heads": 2}
    q |= {"intermediate_size": 64, "dropout": 0.0, **params}
    return ModelConfig(
        towers={"image": TowerConfig("qformer", q), "text": TowerConfig("qformer_text", {})}, embed_dim=16
    )


@pytest.fixture(scope="module")
def pairs():
    return make_shapes("train", 16)


def _batch(model, pairs, n=4):
    return {"image": pairs.images[:n], "text": model.tokenize([c[0] for c in pairs.captions[:n]])}


def test_token_towers_return_packed_token_sets(pairs):
    torch.manual_seed(0)
    model = build_model(token_config(), texts=pairs.flat_captions()[0]).eval()
    batch = _batch(model, pairs)
    with torch.no_grad():
        out = model(batch)
    assert out["image"].shape == (4, 16, 16)  # 4×4 cells at output stride 8, projected to 16
    ids = batch["text"]
    assert out["text"].shape == (4, ids.shape[1], 16)
    _, mask = token_set(out["text"])
    assert torch.equal(mask, ids != model.text_tower().pad_id)  # padding rows are exactly zero
    assert bool(token_set(out["image"])[1].all())
    tokens, m = model.towers["text"].tokens(ids)  # the explicit (tokens, mask) form
    assert torch.equal(m, mask) and tokens.shape[:2] == ids.shape
    # appending padding to a caption leaves its real tokens unchanged (key-masked attention)
    longer = torch.cat([ids, torch.full((4, 3), model.text_tower().pad_id)], 1)
    with torch.no_grad():
        again = model.encode("text", longer)
    torch.testing.assert_close(again[:, : ids.shape[1]], out["text"], rtol=0, atol=1e-5)
    assert not again[:, ids.shape[1] :].any()


def test_token_towers_refuse_an_mlp_projection(pairs):
    with pytest.raises(ConfigError, match="use model.projection linear"):
        build_model(token_config(projection="mlp"), texts=pairs.flat_captions()[0])


def test_qformer_shapes_sharing_and_gradient_flow(pairs):
    torch.manual_seed(0)
    model = build_model(qformer_config(), texts=pairs.flat_captions()[0])
    names = dict(model.named_parameters())
    assert sum(n.startswith("towers.image.body.") for n in names) > 0  # the Q-Former lives once
    assert {n for n in names if n.startswith("towers.text.")} == {
        "towers.text.word_embeddings.weight",
        "towers.text.position_embeddings.weight",
    }
    assert model.towers["text"].owner is model.towers["image"]
    model.train()
    assert not model.towers["image"].vision.training  # frozen: stays in eval mode
    out = model(_batch(model, pairs))
    assert out["image"].shape == (4, 3, 16) and out["text"].shape == (4, 16)  # K vectors vs one
    build_loss("qformer_itc")(out["image"], out["text"]).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    vision = [n for n in grads if n.startswith("towers.image.vision.")]
    assert vision and all(not names[n].requires_grad and grads[n] is None for n in vision)
    trained = [n for n in grads if n not in vision]
    missing = [n for n in trained if grads[n] is None or not grads[n].any()]
    # every other weight moves: queries, ln_vision, shared self-attention, cross-attention (layer 0),
    # both FFNs, embeddings, projections
    assert missing == [], missing
    assert any("cross" in n for n in trained) and not any("layers.1.cross" in n for n in trained)


def test_qformer_paths_use_only_their_own_ffn(pairs):
    torch.manual_seed(0)
    model = build_model(qformer_config(), texts=pairs.flat_captions()[0])
    batch = _batch(model, pairs)
    model.encode("text", batch["text"]).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is None for n in grads if "ffn_query" in n or "cross" in n or "query_tokens" in n)
    assert all(grads[n] is not None for n in grads if "ffn_text" in n)
    model.zero_grad(set_to_none=True)
    model.encode("image", batch["image"]).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is None for n in grads if "ffn_text" in n or n.startswith("towers.text."))


def test_qformer_loads_the_frozen_tower_from_a_checkpoint(pairs, tmp_path):
    torch.manual_seed(0)
    source = build_model(
        ModelConfig(towers={"image": TowerConfig("timm", {"arch": "resnet18", "kwargs": SMALL})})
    )
    state = {f"model.{k}": v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.manual_seed(1)
    model = build_model(
        qformer_config(weights=str(tmp_path / "model.safetensors")), texts=pairs.flat_captions()[0]
    )
    for k, v in model.towers["image"].vision.state_dict().items():
        assert torch.equal(v, state[f"model.towers.image.{k}"])
    with pytest.raises(InputError, match="no key starts with weights_prefix 'nope.'"):
        build_model(
            qformer_config(weights=str(tmp_path / "model.safetensors"), weights_prefix="nope."),
            texts=pairs.flat_captions()[0],
        )


def test_qformer_config_errors(pairs):
    texts = pairs.flat_captions()[0]
    with pytest.raises(ConfigError, match="needs params.vision"):
        build_model(qformer_config(vision=None), texts=texts)
    with pytest.raises(ConfigError, match="must be an image tower"):
        build_model(qformer_config(vision={"name": "mlp", "params": {"input_dim": 3}}), texts=texts)
    with pytest.raises(ConfigError, match="multiple of heads"):
        build_model(qformer_config(hidden_size=33), texts=texts)
    text_first = ModelConfig(
        towers={"text": TowerConfig("qformer_text", {}), "image": TowerConfig("qformer", {"vision": VISION})}
    )
    with pytest.raises(ConfigError, match="listed before it"):
        build_model(text_first, texts=texts)
