"""COSMO split text tower: the contrastive text path never sees the image (values and autograd), the
caption loss equals a naive per-token loop over single-sample prefixes, the joint forward equals
the per-modality encoders, and it trains through the trainer and exports to safetensors."""

import dataclasses

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.shapes import make_shapes
from contrastkit.losses import LossConfig, build
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.generative import caption_loss
from contrastkit.losses.split_caption import LOGITS_KEY
from contrastkit.models import ModelConfig, TowerConfig, build_model
from contrastkit.models.split_text import CAPTION_KEY, SplitTextEncoder

DATA = make_shapes("train", n=8, seed=3)
TEXTS = [c for cs in DATA.captions for c in cs]


def split_model_config(**params) -> ModelConfig:
    base = ModelConfig.tiny()
    sizes = {"hidden_size": 32, "lower_layers": 1, "upper_layers": 1, "heads": 2, "intermediate_size": 64}
    text = TowerConfig("split_text", {**sizes, **params})
    return dataclasses.replace(base, towers={"image": base.towers["image"], "text": text})


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return build_model(split_model_config(), texts=TEXTS).to(dtype)


def _batch(model, n=4, offset=0):
    return {
        "image": DATA.images[offset : offset + n],
        "text": model.tokenize([c[0] for c in DATA.captions[:n]]),
    }


def test_keys_agree_and_the_model_class_is_chosen_by_the_tower():
    assert CAPTION_KEY == LOGITS_KEY
    model = _model()
    assert isinstance(model, SplitTextEncoder)
    out = model(_batch(model))
    ids = _batch(model)["text"]
    assert set(out) == {"image", "text", CAPTION_KEY}
    assert out[CAPTION_KEY].shape == (4, ids.shape[1] - 1, len(model.text_tower().tokenizer))


def test_contrastive_text_path_never_sees_the_image():
    model = _model().train()
    img_params = [p for p in model.towers["image"].parameters()]
    batch = _batch(model)
    out = model(batch)
    other = model({**batch, "image": DATA.images[4:8]})  # different images, same captions
    assert torch.equal(out["text"], other["text"])
    assert not torch.equal(out["image"], other["image"])
    assert not torch.equal(out[CAPTION_KEY], other[CAPTION_KEY])  # the upper half does see them
    # autograd: the text embedding does not depend on any image-tower parameter
    grads = torch.autograd.grad(out["text"].sum(), img_params, allow_unused=True)
    assert all(g is None for g in grads)
    # so the contrastive loss reaches the image tower only through the image embedding
    x, y = out["image"], out["text"]
    full = torch.autograd.grad(clip_loss(x, y, 10.0), img_params, retain_graph=True)
    via_image = torch.autograd.grad(clip_loss(x, y.detach(), 10.0), img_params, retain_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(full, via_image))
    # the caption loss reaches it (cross-attention); the contrastive loss never reaches the upper half
    cap = caption_loss(out[CAPTION_KEY], batch["text"], 0)
    cap_grads = torch.autograd.grad(cap, img_params, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in cap_grads)
    upper = [p for n, p in model.named_parameters() if ".upper." in n or ".head." in n or "image_memory" in n]
    assert upper and all(
        g is None for g in torch.autograd.grad(clip_loss(x, y, 10.0), upper, allow_unused=True)
    )


def test_caption_loss_equals_a_naive_loop_over_single_sample_prefixes():
    model = _model().eval()  # eval: batch-norm statistics do not depend on the batch
    batch = _batch(model)
    ids = batch["text"]
    pad = model.text_tower().pad_id
    assert bool((ids == pad).any())  # the batch has right padding
    with torch.no_grad():
        got = caption_loss(model(batch)[CAPTION_KEY], ids, pad)
        terms = []
        for i in range(len(ids)):
            for k in range(ids.shape[1] - 1):
                target = int(ids[i, k + 1])
                if target == pad:
                    continue
                # sample i alone, its caption up to position k+1: the last logit row predicts t[k+1]
                one = model({"image": batch["image"][i : i + 1], "text": ids[i : i + 1, : k + 2]})
                logits = one[CAPTION_KEY][0, k]
                terms.append(-torch.log_softmax(logits, -1)[target])
    naive = torch.stack(terms).mean()
    assert torch.allclose(got, naive, rtol=0, atol=1e-12)


def test_joint_forward_equals_the_per_modality_encoders():
    model = _model().eval()
    batch = _batch(model)
    with torch.no_grad():
        out = model(batch)
        assert torch.allclose(out["image"], model.encode("image", batch["image"]), rtol=0, atol=1e-12)
        assert torch.allclose(out["text"], model.encode("text", batch["text"]), rtol=0, atol=1e-12)
        only_text = model({"text": batch["text"]})  # one modality: the plain dual-encoder forward
    assert set(only_text) == {"text"}


def test_split_caption_loss_on_the_model_output():
    model = _model()
    batch = _batch(model)
    out = model(batch)
    loss = build("split_caption", lambda_cap=0.5).double()
    got = loss(out, text_ids=batch["text"])
    want = clip_loss(out["image"], out["text"], loss.log_scale.exp()) + 0.5 * caption_loss(
        out[CAPTION_KEY], batch["text"], 0
    )
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    assert set(loss.log_values()) == {"logit_scale", "loss/contrastive", "loss/caption"}
    with pytest.raises(InputError, match="caption logits"):
        loss({"image": out["image"], "text": out["text"]}, text_ids=batch["text"])


def test_errors():
    base = ModelConfig.tiny()
    with pytest.raises(ConfigError, match="timm image tower"):
        build_model(ModelConfig(towers={"text": TowerConfig("split_text")}), texts=TEXTS)
    with pytest.raises(ConfigError, match="timm image tower"):
        cfg = split_model_config(image_modality="photo")
        build_model(
            dataclasses.replace(cfg, towers={**cfg.towers, "image": base.towers["image"]}), texts=TEXTS
        )
    with pytest.raises(ConfigError, match="multiple of heads"):
        build_model(split_model_config(hidden_size=30, heads=4), texts=TEXTS)
    model = _model()
    with pytest.raises(InputError, match="longer than max_length"):
        model.encode("text", torch.ones(1, 40, dtype=torch.long))


def test_trains_through_the_trainer_with_both_losses_and_exports(tmp_path):
    from contrastkit.cli import main
    from contrastkit.models import load
    from contrastkit.train import RunConfig, load_run, read_metrics, train

    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    cfg = dataclasses.replace(
        base,
        model=split_model_config(),
        loss=LossConfig("split_caption"),
        train=dataclasses.replace(base.train, steps=4, batch_size=8, log_every=1),
    )
    result = train(cfg)
    assert result.step == 4 and result.skipped == 0
    rows = [r for r in read_metrics(result.run_dir) if "loss" in r]
    r = rows[-1]  # both terms trained and logged; weights 1 + 1
    assert r["loss"] == pytest.approx(r["loss/contrastive"] + r["loss/caption"], rel=1e-5)
    out = str(tmp_path / "st")
    assert main(["export", str(result.run_dir), "--format", "safetensors", "--out", out]) == 0
    _, trained, _, _ = load_run(result.run_dir)
    rebuilt = load(tmp_path / "st")
    assert isinstance(rebuilt, SplitTextEncoder)
    batch = _batch(trained)
    with torch.no_grad():
        a, b = rebuilt(batch), trained(batch)
    assert all(torch.equal(a[k], b[k]) for k in ("image", "text", CAPTION_KEY))


def test_listed_and_explained(capsys):
    from contrastkit.cli import main

    assert main(["explain", "split_text"]) == 0
    out = capsys.readouterr().out
    assert "lower_layers" in out and "upper_layers" in out and "image_modality" in out
    assert main(["explain", "split_caption"]) == 0
    assert "lambda_cap" in capsys.readouterr().out
