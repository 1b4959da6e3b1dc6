"""CoOp prompt context: equal to the plain tower on "a photo of a <caption>" when set to those words'
embeddings (BERT, HF CLIP, HF SigLIP), trains alone in a locked tower, survives init_from, evaluates."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.dual_encoder import ModelConfig, TowerConfig, build_model
from contrastkit.models.momentum import MomentumConfig
from contrastkit.models.prompts import PromptConfig, input_embedding
from tests.hf_checkpoints import save_clip, save_siglip

CAPTIONS = ["a red circle on the left", "a small blue square", "a photo of a green star", "a cross"]


def _with_prompt(cfg: ModelConfig, prompt: PromptConfig | None) -> ModelConfig:
    text = dataclasses.replace(cfg.towers["text"], prompt=prompt)
    return dataclasses.replace(cfg, towers={**cfg.towers, "text": text})


def _check_equal_to_plain_tower(cfg: ModelConfig, texts: list[str], assets=None) -> None:
    torch.manual_seed(0)
    prompted = build_model(
        _with_prompt(cfg, PromptConfig(init="a photo of a")), texts=texts, assets_dir=assets
    )
    plain = build_model(cfg, texts=texts, assets_dir=assets)
    state = {k: v for k, v in prompted.state_dict().items() if not k.startswith("prompts.")}
    plain.load_state_dict(state)
    prompted.eval(), plain.eval()
    tower = prompted.towers["text"]
    ids = tower.tokenizer("a photo of a", add_special_tokens=False)["input_ids"]
    assert torch.equal(prompted.prompts["text"].context, input_embedding(tower).weight[ids])
    with torch.no_grad():
        got = prompted.encode("text", prompted.tokenize(CAPTIONS))
        want = plain.encode("text", plain.tokenize([f"a photo of a {c}" for c in CAPTIONS]))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the ids really carry placeholders, and the prompted length is the plain one
    assert prompted.tokenize(CAPTIONS).shape == plain.tokenize([f"a photo of a {c}" for c in CAPTIONS]).shape


def test_bert_text_tower_with_init_words_equals_the_plain_prompt() -> None:
    _check_equal_to_plain_tower(ModelConfig.tiny(), CAPTIONS * 3)


def test_hf_clip_text_tower_with_init_words_equals_the_plain_prompt(tmp_path) -> None:
    folder = save_clip(tmp_path / "clip", CAPTIONS * 3)
    cfg = ModelConfig(
        towers={
            "image": TowerConfig("hf_dual_image", {"path": str(folder)}),
            "text": TowerConfig("hf_dual_text", {"path": str(folder)}),
        },
        embed_dim=16,
        projection="none",
    )
    _check_equal_to_plain_tower(cfg, CAPTIONS)


def test_hf_siglip_text_tower_with_init_words_equals_the_plain_prompt(tmp_path) -> None:
    folder = save_siglip(tmp_path / "siglip", CAPTIONS * 3)
    cfg = ModelConfig(
        towers={
            "image": TowerConfig("hf_dual_image", {"path": str(folder)}),
            "text": TowerConfig("hf_dual_text", {"path": str(folder)}),
        },
        embed_dim=32,
        projection="none",
    )
    _check_equal_to_plain_tower(cfg, CAPTIONS)


def test_random_init_and_config_errors() -> None:
    torch.manual_seed(0)
    model = build_model(_with_prompt(ModelConfig.tiny(), PromptConfig(init=None)), texts=CAPTIONS)
    ctx = model.prompts["text"].context
    assert ctx.shape == (16, 64) and 0.01 < float(ctx.detach().std()) < 0.03
    with pytest.raises(ConfigError, match="n_ctx=3 but init"):
        build_model(_with_prompt(ModelConfig.tiny(), PromptConfig(n_ctx=3)), texts=CAPTIONS)
    with pytest.raises(ConfigError, match="n_ctx"):
        PromptConfig(n_ctx=0)
    cfg = ModelConfig.tiny()
    image = dataclasses.replace(cfg.towers["image"], prompt=PromptConfig())
    with pytest.raises(ConfigError, match="token embeddings"):
        build_model(dataclasses.replace(cfg, towers={**cfg.towers, "image": image}), texts=CAPTIONS)
    with_ema = dataclasses.replace(
        _with_prompt(cfg, PromptConfig()), momentum=MomentumConfig(modalities=("text",))
    )
    with pytest.raises(ConfigError, match="momentum"):
        build_model(with_ema, texts=CAPTIONS)
    with pytest.raises(InputError, match="prompt slots"):  # ids not tokenized with the prompt
        model.encode("text", model.towers["text"].tokenize(CAPTIONS))
    parsed = from_dict(
        ModelConfig, {"towers": {"text": {"name": "hf_text", "prompt": {"n_ctx": 4, "init": None}}}}
    )
    assert parsed.towers["text"].prompt == PromptConfig(n_ctx=4, init=None)
    with pytest.raises(ConfigError, match="nctx"):
        from_dict(ModelConfig, {"towers": {"text": {"name": "hf_text", "prompt": {"nctx": 4}}}})


def _coop_config(tmp_path, init_from: str | None = None):
    from contrastkit.train import RunConfig

    cfg = RunConfig.tiny("coop", out_dir=str(tmp_path))
    towers = {
        "image": dataclasses.replace(cfg.model.towers["image"], locked=True),
        "text": dataclasses.replace(cfg.model.towers["text"], locked=True, prompt=PromptConfig()),
    }
    model = dataclasses.replace(cfg.model, towers=towers, lock=("projections.*",))
    train = dataclasses.replace(cfg.train, steps=2, ckpt_every=1, keep_checkpoints=2, init_from=init_from)
    loss = dataclasses.replace(cfg.loss, params={"learnable": False})
    return dataclasses.replace(cfg, model=model, train=train, loss=loss)


def test_locked_tower_only_the_context_trains_and_zero_shot_runs(tmp_path) -> None:
    from contrastkit.evaluation.encoders import model_encoders
    from contrastkit.evaluation.report import evaluate_run
    from contrastkit.train import load_run, train

    run = train(_coop_config(tmp_path)).run_dir
    one = load_file(str(run / "checkpoints" / "step_00000001" / "model.safetensors"))
    two = load_file(str(run / "checkpoints" / "step_00000002" / "model.safetensors"))
    changed = sorted(k for k in one if not torch.equal(one[k], two[k]))
    assert changed == ["model.prompts.text.context"]
    metrics = evaluate_run(run, tasks=["zeroshot"], splits=["test"])["metrics"]["test"]
    assert 0.0 <= metrics["zeroshot/shape/top1"] <= 1.0
    _, model, _, _ = load_run(run)
    enc = model_encoders(model)
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode("text", model.tokenize(CAPTIONS)), dim=-1)
    torch.testing.assert_close(enc.texts(CAPTIONS), want)
    from contrastkit.models import saved
    from contrastkit.train.export import export_run

    with pytest.raises(ConfigError, match="prompt context"):
        export_run(run, "hf", tmp_path / "hf")
    again = saved.load(export_run(run, "safetensors", tmp_path / "st"))
    with torch.no_grad():
        torch.testing.assert_close(
            again.encode("text", again.tokenize(CAPTIONS)), model.encode("text", model.tokenize(CAPTIONS))
        )


def test_coop_on_a_trained_run_starts_from_its_word_embeddings(tmp_path) -> None:
    from contrastkit.train import RunConfig, load_run, train

    source = train(RunConfig.tiny("plain", out_dir=str(tmp_path))).run_dir
    run = train(_coop_config(tmp_path, init_from=str(source))).run_dir
    _, base, _, _ = load_run(source)
    _, coop, _, _ = load_run(run)
    tower = base.towers["text"]
    ids = tower.tokenizer("a photo of a", add_special_tokens=False)["input_ids"]
    emb = input_embedding(tower).weight[ids]
    start = load_file(str(run / "checkpoints" / "step_00000001" / "model.safetensors"))
    assert not torch.equal(start["model.prompts.text.context"], emb)  # one step taken …
    assert torch.allclose(start["model.prompts.text.context"], emb, atol=0.02)  # … from these words
    assert torch.equal(
        coop.towers["text"].encoder.embeddings.word_embeddings.weight, input_embedding(tower).weight
    )
    assert json.loads((run / "init_from.json").read_text())["run"] == str(source.resolve())
