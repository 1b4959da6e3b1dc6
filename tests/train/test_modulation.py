"""R-OGM-GE: coefficients against the spec's formulas, class-mean scores against a naive loop, and
the modulator applied by hand to a tiny DualEncoder after a CLIP backward pass."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.config import from_dict, to_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import make_shapes
from contrastkit.losses import CLIPLoss
from contrastkit.models import ModelConfig, build_model
from contrastkit.train import RunConfig, train
from contrastkit.train import trainer as trainer_module
from contrastkit.train.modulation import (
    GradientModulator,
    ModulationConfig,
    class_mean_scores,
    decay_factor,
    modality_parameters,
    modulate,
    multi_loss_coefficients,
    ogm_ge_coefficients,
)

# ---- coefficients ----------------------------------------------------------------------------------


def test_ogm_ge_hand_values():
    k_a, k_v = ogm_ge_coefficients(1.0, 2.0, 0.5)  # ρ_v = 2
    assert k_a == 1.0 and k_v == pytest.approx(1 - math.tanh(1.0), abs=1e-7)
    assert k_v == pytest.approx(0.238406, abs=1e-6)
    k_a, k_v = ogm_ge_coefficients(4.0, 1.0, 0.25)  # ρ_a = 4: the audio side is slowed
    assert k_v == 1.0 and k_a == pytest.approx(1 - math.tanh(1.0), abs=1e-7)
    k_a, k_v = ogm_ge_coefficients(3.0, 3.0, 0.7)  # ρ_v = 1 is not > 1: the reference slows a
    assert k_v == 1.0 and k_a == pytest.approx(1 - math.tanh(0.7))
    k_a, k_v = ogm_ge_coefficients(0.0, 1.0, 0.5)  # score_a = 0: ε keeps ρ finite
    assert k_a == 1.0 and k_v == pytest.approx(1 - math.tanh(0.5 * (1 + 1e-8) / 1e-8))
    with pytest.raises(InputError, match="finite and >= 0"):
        ogm_ge_coefficients(-1.0, 1.0, 0.5)


def test_multi_loss_coefficients_formula_clip_and_decay():
    scores = {"a": 6.0, "b": 2.0, "c": 4.0}
    k = multi_loss_coefficients(scores, alpha=0.8)
    for u, s in scores.items():
        others = [v for w, v in scores.items() if w != u]
        rho = (s + 1e-8) / (sum(others) / 2 + 1e-8)
        assert k[u] == pytest.approx(1 - math.tanh(0.8 * (rho - 1)), abs=1e-12)
    assert k["a"] < 1 < k["b"]  # the leader slowed, the laggard accelerated
    clipped = multi_loss_coefficients(scores, alpha=0.8, k_min=0.9, k_max=1.05)
    assert clipped["a"] == 0.9 and clipped["b"] == 1.05
    faded = multi_loss_coefficients(scores, alpha=0.8, gamma=0.25)
    assert all(faded[u] == pytest.approx(1 + (k[u] - 1) * 0.25) for u in scores)
    assert multi_loss_coefficients({"a": 1.0, "b": 1.0}, alpha=3.0) == {"a": 1.0, "b": 1.0}
    assert decay_factor("constant", 5, 10) == 1.0 and decay_factor("linear", 5, 10) == 0.5
    assert decay_factor("cosine", 10, 10) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError, match="at least 2"):
        multi_loss_coefficients({"a": 1.0}, alpha=1.0)


# ---- scores ----------------------------------------------------------------------------------------


def naive_scores(x, labels, tau):
    z = F.normalize(x.double(), dim=-1)
    total, n = 0.0, 0
    classes = sorted({int(c) for c in labels if c >= 0})
    for i in range(len(z)):
        yi = int(labels[i])
        if yi < 0 or sum(1 for j in range(len(z)) if j != i and int(labels[j]) == yi) == 0:
            continue
        logits = []
        for c in classes:
            members = [z[j] for j in range(len(z)) if j != i and int(labels[j]) == c]
            logits.append(float(z[i] @ F.normalize(sum(members), dim=0)) / tau if members else -math.inf)
        p = torch.tensor(logits, dtype=torch.float64).softmax(0)
        total += float(p[classes.index(yi)])
        n += 1
    return total, n


def test_class_mean_scores_equal_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    emb = {"image": torch.randn(13, 5, generator=g), "text": torch.randn(13, 5, generator=g)}
    labels = torch.tensor([0, 1, 1, 2, 0, 3, 1, -1, 2, 2, 4, 0, 1])  # classes 3 and 4 alone; one -1
    scores, n = class_mean_scores(emb, labels, temperature=0.2)
    for u, x in emb.items():
        want, n_want = naive_scores(x, labels, 0.2)
        assert scores[u] == pytest.approx(want, rel=1e-10) and n == n_want == 10
    perfect = F.one_hot(torch.tensor([0, 0, 1, 1, 2, 2]), 8).float()  # each class a point
    s, n = class_mean_scores({"a": perfect}, torch.tensor([0, 0, 1, 1, 2, 2]), temperature=0.01)
    assert n == 6 and s["a"] == pytest.approx(6.0, abs=1e-12)
    assert class_mean_scores({"a": perfect}, torch.arange(6), 0.1) == ({"a": 0.0}, 0)


# ---- the modulator on a tiny DualEncoder -----------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    pairs = make_shapes("train", 24, seed=3)
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny(), texts=[c[0] for c in pairs.captions])
    batch = {"image": pairs.images, "text": model.tokenize([c[0] for c in pairs.captions])}
    labels = torch.tensor([i % 4 for i in range(24)])
    return model, batch, labels


def backward(model, batch):
    model.zero_grad(set_to_none=True)
    emb = model(batch)
    CLIPLoss()(emb["image"], emb["text"]).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return emb, grads


def test_ogm_scales_each_tower_by_its_coefficient(setup):
    model, batch, labels = setup
    emb, before = backward(model, batch)
    cfg = ModulationConfig(alpha=0.5, noise=False)
    mod = GradientModulator(cfg, model.modalities, seed=0)
    log = mod(model, emb, labels, step=0, total_steps=10)
    scores, n = class_mean_scores({m: emb[m] for m in ("image", "text")}, labels, 0.1)
    k_a, k_v = ogm_ge_coefficients(scores["image"], scores["text"], 0.5)
    assert log["modulation/image"] == k_a and log["modulation/text"] == k_v
    assert log["modulation/score/text"] == pytest.approx(scores["text"] / n)
    assert min(k_a, k_v) < 1 == max(k_a, k_v)
    names = {m: {id(p) for p in modality_parameters(model, m)} for m in ("image", "text")}
    for name, p in model.named_parameters():
        if name not in before:
            continue
        k = k_a if id(p) in names["image"] else k_v if id(p) in names["text"] else 1.0
        assert torch.equal(p.grad, before[name] * k), name


def test_ge_noise_mean_zero_std_of_the_gradient_and_seeded(setup):
    model, batch, labels = setup
    emb, before = backward(model, batch)
    cfg = ModulationConfig(alpha=0.5, noise=True)
    k = GradientModulator(cfg, model.modalities, seed=7)(model, emb, labels, step=3, total_steps=10)
    after = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    p = model.towers["image"].backbone.layer4[0].conv1.weight  # a big tensor: 64·64·9 entries
    name = next(n for n, q in model.named_parameters() if q is p)
    noise = after[name] - k["modulation/image"] * before[name]
    std = float(before[name].std()) + 1e-8
    assert abs(float(noise.mean())) < 4 * std / math.sqrt(noise.numel())
    assert float(noise.std()) == pytest.approx(std, rel=0.05)
    emb, _ = backward(model, batch)  # same (seed, step): the same noise, bit for bit
    GradientModulator(cfg, model.modalities, seed=7)(model, emb, labels, step=3, total_steps=10)
    assert all(torch.equal(q.grad, after[n]) for n, q in model.named_parameters() if q.grad is not None)


def test_outside_the_window_gradients_are_untouched(setup):
    model, batch, labels = setup
    emb, before = backward(model, batch)
    cfg = ModulationConfig(alpha=0.5, start=2, end=4)
    log = modulate(cfg, model, emb, {"labels": labels}, step=5, total_steps=10)
    assert log == {"modulation/image": 1.0, "modulation/text": 1.0}
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters() if n in before)
    assert [cfg.active(s) for s in range(6)] == [False, False, True, True, True, False]
    with pytest.raises(InputError, match="needs batch labels"):
        modulate(cfg, model, emb, {}, step=3, total_steps=10)


def test_only_conv_kernels_and_multi_loss(setup):
    model, batch, labels = setup
    emb, before = backward(model, batch)
    cfg = ModulationConfig(
        alpha=1.0, method="multi_loss", noise=False, only_conv_kernels=True, decay="linear"
    )
    log = GradientModulator(cfg, model.modalities)(model, emb, labels, step=2, total_steps=4)
    scores, _ = class_mean_scores({m: emb[m] for m in ("image", "text")}, labels, 0.1)
    want = multi_loss_coefficients(scores, 1.0, gamma=0.5)
    assert log["modulation/image"] == want["image"] and log["modulation/text"] == want["text"]
    conv = {id(p) for p in modality_parameters(model, "image", only_conv_kernels=True)}
    assert conv and all(p.ndim == 4 for p in modality_parameters(model, "image", True))
    for name, p in model.named_parameters():
        if name in before:
            scale = want["image"] if id(p) in conv else 1.0  # the text tower has no 4-d weights
            assert torch.equal(p.grad, before[name] * scale), name


# ---- configuration ---------------------------------------------------------------------------------


def test_config_validation_and_run_checks():
    for bad, match in [
        ({}, "alpha is required"),
        ({"alpha": 0.0}, "alpha must be finite and > 0"),
        ({"alpha": 1.0, "start": 5, "end": 2}, "0 <= start <= end"),
        ({"alpha": 1.0, "modalities": ("image", "text", "attributes")}, "exactly 2 modalities"),
        ({"alpha": 1.0, "k_min": 1.5}, "k_min <= 1 <= k_max"),
        ({"alpha": 1.0, "method": "gradnorm"}, "method must be one of"),
    ]:
        with pytest.raises(ConfigError, match=match):
            ModulationConfig(**bad)
    cfg = RunConfig.tiny()
    data = to_dict(cfg)
    data["train"]["modulation"] = {"alpha": 0.5}
    with pytest.raises(ConfigError, match="set data.label_task"):
        from_dict(RunConfig, data)
    data["data"]["label_task"] = "shape+color"
    run = from_dict(RunConfig, data)
    assert run.train.modulation == ModulationConfig(alpha=0.5)
    data["train"]["modulation"] = {"alpha": 0.5, "modalities": ["image", "audio"]}
    with pytest.raises(ConfigError, match=r"\['audio'\] are not model towers"):
        from_dict(RunConfig, data)
    data["train"]["modulation"] = {"alpha": 0.5}
    data["train"]["dist_wrapper"] = "fsdp"
    with pytest.raises(ConfigError, match="needs whole gradients"):
        from_dict(RunConfig, data)


@pytest.mark.skipif(
    not hasattr(trainer_module, "modulate"), reason="the trainer does not call train.modulation yet"
)
def test_training_logs_the_coefficients_the_modulator_applies(tmp_path):
    data = to_dict(RunConfig.tiny(out_dir=str(tmp_path)))
    data["data"]["label_task"] = "shape+color"
    data["train"].update(steps=3, log_every=1, ckpt_every=3)
    data["train"]["modulation"] = {"alpha": 0.5, "start": 1}
    result = train(from_dict(RunConfig, data))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "loss" in r}
    assert logged[1]["modulation/image"] == logged[1]["modulation/text"] == 1.0  # step 0: outside
    for step in (2, 3):
        k = (logged[step]["modulation/image"], logged[step]["modulation/text"])
        assert min(k) < 1.0 == max(k) and "modulation/score/text" in logged[step]
