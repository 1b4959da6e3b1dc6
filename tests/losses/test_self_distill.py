"""R-SIGLIP2-SD: the self-distillation term against its formula (float64), no gradient into the
teacher, nothing before the start step, centring, the teacher head's EMA, and the model's
momentum ``start`` (frozen, then a copy of the student)."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit import losses
from contrastkit.core.config import from_dict, to_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.self_distill import self_distillation_loss
from contrastkit.losses.siglip import siglip_loss
from contrastkit.models import ModelConfig, build_model
from contrastkit.models.momentum import MomentumConfig, momentum_at
from contrastkit.train import RunConfig, train

KEYS = ("image", "text", "image@0", "image@1", "image:ema")


def embeddings(n=5, d=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True) for k in KEYS}


def naive_sd(student, teacher, center, ts, tt):
    total, pairs = 0.0, 0
    for s in student:
        for t in teacher:
            for i in range(s.shape[0]):
                q = torch.softmax((t[i].detach() - center) / tt, 0)
                logp = torch.log_softmax(s[i] / ts, 0)
                total = total - sum(q[k] * logp[k] for k in range(s.shape[1])) / s.shape[0]
            pairs += 1
    return total / pairs


def test_term_equals_the_naive_formula_and_the_teacher_gets_no_gradient():
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    center = torch.randn(6, generator=g, dtype=torch.float64)
    got = self_distillation_loss(student, teacher, center, student_temperature=0.2, teacher_temperature=0.05)
    want = naive_sd(student, teacher, center, 0.2, 0.05)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    got.backward()
    want_grads = torch.autograd.grad(naive_sd(student, teacher, center, 0.2, 0.05), student)
    for s, w in zip(student, want_grads):
        torch.testing.assert_close(s.grad, w, rtol=1e-10, atol=1e-12)
    assert all(t.grad is None for t in teacher)
    with pytest.raises(InputError, match="must all be"):
        self_distillation_loss([student[0]], [teacher[0][:, :3]])


def heads_scores(loss, emb, key, teacher):
    w = (loss.teacher_head if teacher else loss.student_head).weight
    return F.normalize(emb[key], dim=-1) @ F.normalize(w, dim=-1).T


def test_module_is_siglip_plus_the_term_with_centring():
    torch.manual_seed(0)
    loss = losses.build("siglip2_sd", prototypes=7, dim=4, center_momentum=0.0, sd_weight=0.5).double()
    emb = embeddings()
    value = loss(emb)
    teacher = heads_scores(loss, emb, "image:ema", True).detach()
    center = teacher.mean(0)  # m_c = 0: the centre is this batch's mean
    torch.testing.assert_close(loss.center, center)
    assert float((teacher - loss.center).mean(0).abs().max()) < 1e-15  # centred batch mean = 0
    student = [heads_scores(loss, emb, k, False) for k in ("image@0", "image@1")]
    sd = naive_sd(student, [teacher], center, 0.1, 0.04)
    it = siglip_loss(emb["image"], emb["text"], loss.contrastive.log_scale.exp(), loss.contrastive.bias)
    assert float(value.detach()) == pytest.approx(float((it + 0.5 * sd).detach()), rel=1e-12)
    assert loss.log_values()["loss/self_distillation"] == pytest.approx(float(sd.detach()))
    value.backward()
    assert emb["image:ema"].grad is None and loss.teacher_head.weight.grad is None
    assert loss.student_head.weight.grad is not None and emb["image@0"].grad.abs().sum() > 0


def test_nothing_before_the_start_then_the_teacher_head_is_a_copy_and_follows_the_ema():
    loss = losses.build("siglip2_sd", prototypes=5, start_step=2, head_momentum=0.5).double()
    emb = embeddings(seed=2)
    it = siglip_loss(emb["image"], emb["text"], loss.contrastive.log_scale.exp(), loss.contrastive.bias)
    assert float(loss(emb).detach()) == float(it.detach())  # exactly the contrastive loss
    assert not loss.center.any() and torch.equal(loss.student_head.weight, loss.teacher_head.weight)
    loss.after_optimizer_step()  # step 0
    loss.after_optimizer_step()  # step 1 = start − 1: the teacher head becomes the student's
    assert loss.active() and float(loss(emb).detach()) != float(it.detach())
    with torch.no_grad():
        loss.student_head.weight.add_(1.0)
    before = loss.teacher_head.weight.clone()
    loss.after_optimizer_step()  # step 2: EMA with m = 0.5
    torch.testing.assert_close(loss.teacher_head.weight, 0.5 * before + 0.5 * loss.student_head.weight)
    fresh = losses.build("siglip2_sd", prototypes=5, start_step=2, head_momentum=0.5).double()
    fresh.load_state_dict(loss.state_dict())  # lazy heads, centre and step round-trip
    assert int(fresh.step) == 3 and torch.equal(fresh.teacher_head.weight, loss.teacher_head.weight)
    with pytest.raises(ConfigError, match="exactly 2"):
        losses.build("siglip2_sd", image_text=("image",))
    with pytest.raises(InputError, match=r"needs embeddings \['image@1'\]"):
        loss({k: v for k, v in emb.items() if k != "image@1"})


def test_model_momentum_start_freezes_then_copies():
    assert [momentum_at(0.9, "constant", t, 10, start=3) for t in range(5)] == [1.0, 1.0, 0.0, 0.9, 0.9]
    assert momentum_at(0.9, "constant", 0, 10, start=0) == 0.9
    torch.manual_seed(0)
    cfg = dataclasses.replace(ModelConfig.tiny(), momentum=MomentumConfig(m=0.5, start=2))
    model = build_model(cfg, texts=["a red circle"])
    ema = model.momentum.encoders["image"]
    frozen = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.towers["image"].parameters():
            p.add_(0.1)
        model.towers["image"].backbone.bn1.running_mean.add_(1.0)  # buffers stay frozen too
    model.after_optimizer_step(0, 10)
    assert all(torch.equal(v, frozen[k]) for k, v in ema.state_dict().items())
    model.after_optimizer_step(1, 10)  # start − 1: the copy
    online = torch.nn.Sequential(model.towers["image"], model.projections["image"]).state_dict()
    assert all(torch.equal(v, online[k]) for k, v in ema.state_dict().items())
    with pytest.raises(ConfigError, match="start must be >= 0"):
        MomentumConfig(start=-1)
    data = to_dict(RunConfig.tiny())
    data["model"]["momentum"] = {"modalities": ["image"], "m": 0.996, "start": 40}
    assert from_dict(RunConfig, data).model.momentum.start == 40


def test_trains_on_shapes_with_views_and_a_late_teacher(tmp_path):
    cfg = RunConfig.tiny(out_dir=str(tmp_path))
    data = to_dict(cfg)
    data["train"].update(steps=4, ckpt_every=4, batch_size=16, log_every=1)
    data["data"]["views"] = 2
    data["data"]["augment"] = {"crop_scale": [0.05, 0.4]}
    data["model"]["momentum"] = {"modalities": ["image"], "m": 0.996, "start": 2}
    data["loss"] = {"name": "siglip2_sd", "params": {"start_step": 2, "prototypes": 16}}
    result = train(from_dict(RunConfig, data))
    assert result.step == 4 and result.skipped == 0 and math.isfinite(result.last_loss)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    sd = {r["step"]: r["loss/self_distillation"] for r in rows if "loss/self_distillation" in r}
    assert sorted(sd) == [1, 2, 3, 4] and sd[1] == sd[2] == 0.0 and sd[3] > 0 and sd[4] > 0
