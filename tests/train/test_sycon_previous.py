"""``model.previous`` + ``loss: sycon``: the earlier run, frozen in eval mode, embeds every batch
(``past_x``, ``past_y``); it gets no gradient, is not optimised or checkpointed; with the previous
run = this run's initial weights, step 0's loss is Sy-CON with past = current; config checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import contrastkit.train.trainer as trainer_module
from contrastkit.core.config import from_dict, to_dict
from contrastkit.core.errors import ConfigError, MissingFileError
from contrastkit.losses.auc import SyCONLoss
from contrastkit.losses.base import LossConfig
from contrastkit.models.dual_encoder import TowerConfig
from contrastkit.train import RunConfig, load_run, read_metrics, train
from contrastkit.train.checkpoint import latest_checkpoint
from contrastkit.train.previous import frozen_previous, past_fields
from contrastkit.train.teacher import load_teacher


def _later(tmp_path, previous, name: str = "later", base: RunConfig | None = None, **loss) -> RunConfig:
    """A 3-step sycon run continuing from ``previous`` (train.init_from) with it as the past model,
    written the way a YAML config is (a dict through ``from_dict``)."""
    raw = to_dict(base or RunConfig.tiny(out_dir=str(tmp_path)))
    raw["name"], raw["out_dir"] = name, str(tmp_path)
    raw["model"]["previous"] = None if previous is None else str(previous)
    raw["loss"] = {"name": "sycon", "params": loss, "terms": {}}
    raw["train"].update({"steps": 3, "ckpt_every": 3, "log_every": 1, "init_from": str(previous or "")})
    raw["train"]["init_from"] = raw["train"]["init_from"] or None
    return from_dict(RunConfig, raw)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    cfg = RunConfig.tiny("earlier", out_dir=str(tmp_path_factory.mktemp("e")))
    return train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=4))).run_dir


def test_the_previous_run_is_frozen_unsaved_and_feeds_past_x(tmp_path, earlier, monkeypatch) -> None:
    seen, sessions = [], []
    build = trainer_module.build_session

    def spy_fields(previous, batch, pair):
        fields = past_fields(previous, batch, pair)
        seen.append((previous, pair, {m: batch[m] for m in pair}, {k: v.clone() for k, v in fields.items()}))
        return fields

    def spy_session(*args, **kwargs):
        sessions.append(build(*args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(trainer_module, "past_fields", spy_fields)
    monkeypatch.setattr(trainer_module, "build_session", spy_session)
    result = train(_later(tmp_path, earlier))
    losses = [r["loss"] for r in read_metrics(result.run_dir) if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and result.skipped == 0
    previous = seen[0][0]
    assert all(p is previous for p, *_ in seen) and sessions[0].previous is previous
    assert not previous.training and all(
        not p.requires_grad and p.grad is None for p in previous.parameters()
    )
    optimised = {id(p) for g in sessions[0].optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in previous.parameters()}
    reference = load_teacher(str(earlier))  # unchanged: still the earlier run's newest checkpoint
    assert all(
        torch.equal(a, b) for a, b in zip(previous.state_dict().values(), reference.state_dict().values())
    )
    # past_x / past_y: the earlier run's eval-mode encoder output on the step's own inputs
    for _, pair, inputs, fields in seen:
        assert pair == ("image", "text")
        with torch.no_grad():
            assert torch.equal(fields["past_x"], reference.encode("image", inputs["image"]).float())
            assert torch.equal(fields["past_y"], reference.encode("text", inputs["text"]).float())

    # checkpoints hold this run's weights only; the config records where the previous run is
    def model_keys(run):
        return {
            k for k in load_file(str(latest_checkpoint(run) / "model.safetensors")) if k.startswith("model.")
        }

    assert model_keys(result.run_dir) == model_keys(earlier)  # the same architecture, no second copy
    saved = load_file(str(latest_checkpoint(result.run_dir) / "model.safetensors"))
    assert all(k.startswith(("model.", "loss.")) for k in saved)
    assert load_run(result.run_dir)[0].model.previous == str(earlier)


def _naive_sycon(x, y, px, py, tau: float = 0.2) -> float:
    """Sy-CON in float64 loops (pred = identity), straight from the paper's two terms."""
    x, y, px, py = (F.normalize(t.double(), dim=-1) for t in (x, y, px, py))
    n = len(x)

    def direction(a, o, pa, po) -> float:
        total = 0.0
        for i in range(n):
            neg = [o[j] for j in range(n) if j != i] + [po[j] for j in range(n) if j != i]
            for q, pos in ((a[i], o[i]), (a[i], pa[i])):  # plasticity, then stability (g_i = a_i)
                den = math.exp(float(q @ pos) / tau) + sum(math.exp(float(q @ v) / tau) for v in neg)
                total -= float(q @ pos) / tau - math.log(den)
        return total / n

    return 0.5 * (direction(x, y, px, py) + direction(y, x, py, px))


def test_previous_equal_to_the_initial_weights_gives_past_equal_current(tmp_path, monkeypatch) -> None:
    """Towers without batch norm or dropout (attributes MLP, text BERT with dropout 0): eval and train
    mode agree, so at step 0 the past embeddings are the current ones exactly."""
    base = RunConfig.tiny(out_dir=str(tmp_path))
    towers = {
        "attributes": TowerConfig("mlp", {"input_dim": 45, "hidden_dim": 32, "output_dim": 32}),
        "text": base.model.towers["text"],
    }
    base = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, modalities=("attributes", "text")),
        model=dataclasses.replace(base.model, towers=towers),
        train=dataclasses.replace(base.train, steps=2),
    )
    first = train(dataclasses.replace(base, name="first")).run_dir
    seen = []
    forward = SyCONLoss.forward

    def spy(self, x, y, **aux):
        seen.append((x.detach().clone(), y.detach().clone(), {k: v.clone() for k, v in aux.items()}))
        return forward(self, x, y, **aux)

    monkeypatch.setattr(SyCONLoss, "forward", spy)
    run = train(_later(tmp_path, first, base=base)).run_dir
    x, y, aux = seen[0]
    assert set(aux) == {"past_x", "past_y"}  # pred_x / pred_y: the loss's identity predictor
    assert torch.equal(aux["past_x"], x) and torch.equal(aux["past_y"], y)
    step1 = next(r["loss"] for r in read_metrics(run) if r.get("step") == 1)
    assert step1 == pytest.approx(_naive_sycon(x, y, x, y), rel=1e-5)
    assert len(seen) == 3 and not torch.equal(seen[2][0], seen[2][2]["past_x"])  # later steps move away


def test_config_checks(tmp_path, earlier) -> None:
    with pytest.raises(ConfigError, match="set model.previous"):
        train(_later(tmp_path, None))
    cfg = _later(tmp_path, earlier)
    with pytest.raises(ConfigError, match="does not use the past model"):
        train(dataclasses.replace(cfg, loss=LossConfig("clip")))
    with pytest.raises(MissingFileError, match="not a contrastkit run folder"):
        train(
            dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, previous=str(tmp_path / "nowhere")))
        )
    with pytest.raises(ConfigError, match="dense loss"):
        train(dataclasses.replace(cfg, scale=dataclasses.replace(cfg.scale, chunk_size=8)))
    assert not (tmp_path / "later").exists()  # refused before a run folder was made
    with pytest.raises(ConfigError, match="one process"):
        frozen_previous(cfg, load_teacher(str(earlier)), None, 2, torch.device("cpu"))
