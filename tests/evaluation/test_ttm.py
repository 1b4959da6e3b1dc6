"""R-TTM (test-time matching rounds): schedule, selection, no-op at τ = ∞, one round against a direct
loss call, and the command end to end on a tiny run."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.swaps import make_swap_sets
from contrastkit.evaluation.compositional import ttm_margins, ttm_select, ttm_thresholds
from contrastkit.evaluation.ttm import (
    TTMConfig,
    logit_scale_of,
    pseudo_pairs,
    round_lr_factor,
    run_ttm,
    ttm_batches,
    ttm_margins_1xm,
    ttm_on_run,
    ttm_round,
)
from contrastkit.losses import build
from contrastkit.models.dual_encoder import ModelConfig, build_model


def _tiny_model(sets):
    torch.manual_seed(0)
    texts = [c for s in sets.values() for caps in s.captions for c in caps]
    return build_model(ModelConfig.tiny(), texts=texts).eval()


@pytest.fixture(scope="module")
def sets():
    return {k: make_swap_sets(5, k, 32, 0) for k in ("attribute", "relation")}


def test_schedule_is_linear_from_2_to_0() -> None:
    taus = ttm_thresholds(10)
    assert taus.tolist() == pytest.approx([2.0 + (0.0 - 2.0) * r / 9 for r in range(10)], abs=1e-15)
    assert taus[0] == 2.0 and taus[-1] == 0.0 and taus[1] == pytest.approx(1.7777777777777777)


def test_selection_on_synthetic_margins() -> None:
    # build 2×2 groups whose margins are known: s00 = m, the rest 0
    m = np.array([2.5, -3.0, 0.1, -0.1, 2.0, -2.0, 0.0, 1.999])
    s = np.zeros((len(m), 2, 2))
    s[:, 0, 0] = m
    assert ttm_margins(s).tolist() == m.tolist()
    idx, orient = ttm_select(ttm_margins(s), 2.0)
    assert idx.tolist() == [0, 1, 4, 5] and orient.tolist() == [1, -1, 1, -1]
    idx, orient = ttm_select(ttm_margins(s), 0.0)  # τ = 0: everything, a zero margin as identity
    assert idx.tolist() == list(range(8)) and orient.tolist() == [1, -1, 1, -1, 1, -1, 1, 1]
    assert len(ttm_select(m, math.inf)[0]) == 0


def test_one_by_m_margins_are_top1_minus_top2() -> None:
    s = torch.tensor([[[0.1, 0.7, 0.3]], [[0.5, 0.5, -1.0]], [[2.0, -1.0, 0.0]]], dtype=torch.float64)
    margins, top = ttm_margins_1xm(s)
    assert margins.tolist() == pytest.approx([0.4, 0.0, 2.0], abs=1e-12)
    assert top.tolist() == [1, 0, 0]
    idx, orient = ttm_select(margins, 0.3)
    assert idx.tolist() == [0, 2] and orient.tolist() == [1, 1]
    with pytest.raises(InputError):
        ttm_margins_1xm(np.zeros((3, 2, 2)))


def test_pseudo_pairs_follow_the_orientation(sets) -> None:
    swaps = sets["attribute"]
    images, caps = pseudo_pairs(swaps, np.array([3, 1]), np.array([1, -1]))
    assert torch.equal(images[0], swaps.images[3, 0]) and torch.equal(images[3], swaps.images[1, 1])
    assert caps == [swaps.captions[3][0], swaps.captions[3][1], swaps.captions[1][1], swaps.captions[1][0]]


def test_lr_schedule_and_batches() -> None:
    assert round_lr_factor(0, 10, 0.1) == 1.0
    assert round_lr_factor(10, 10, 0.1) == pytest.approx(0.1)
    assert round_lr_factor(5, 10, 0.1) == pytest.approx(0.55)
    steps = ttm_batches(7, 3, seed=42, epochs=2)
    assert [len(b) for b in steps] == [3, 3, 1, 3, 3, 1]
    assert sorted(np.concatenate(steps[:3]).tolist()) == list(range(7))


def test_infinite_threshold_selects_nothing_and_changes_nothing(sets) -> None:
    model, loss = _tiny_model(sets), build("clip")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TTMConfig(rounds=3, epochs=1, threshold_start=math.inf, threshold_end=math.inf)
    rows = run_ttm(model, loss, sets, cfg)
    assert [r["selected"] for r in rows[1:]] == [0, 0, 0]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit for bit, buffers too
    assert rows[-1]["winoground/all/group"] == rows[0]["winoground/all/group"]


def test_one_round_trains_with_the_runs_own_loss(sets) -> None:
    model, loss = _tiny_model(sets), build("siglip")
    cfg = TTMConfig(rounds=1, epochs=1, batch_size=4, threshold_start=0.0, threshold_end=0.0, lr=1e-3)
    scores = {
        k: torch.randn(len(s), 2, 2, generator=torch.Generator().manual_seed(1)) for k, s in sets.items()
    }
    margins = ttm_margins(scores["attribute"])
    idx, orient = ttm_select(margins, 0.0)
    images, caps = pseudo_pairs(sets["attribute"], idx, orient)
    ref, ref_loss = copy.deepcopy(model), copy.deepcopy(loss)
    first = ttm_batches(len(idx), cfg.batch_size, cfg.seed, 1)[0]
    rows = np.stack([2 * first, 2 * first + 1], 1).reshape(-1)
    ref.train()
    direct = ref_loss(
        ref.encode("image", images[torch.as_tensor(rows)]),
        ref.encode("text", ref.tokenize([caps[i] for i in rows])),
    )
    opt = torch.optim.AdamW([p for m in (model, loss) for p in m.parameters()], lr=cfg.lr)
    losses = ttm_round(model, loss, images, caps, opt, cfg, r=0)
    assert len(losses) == 2  # 5 groups in batches of 4
    assert losses[0] == pytest.approx(float(direct.detach()), rel=1e-6, abs=1e-7)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, ref.state_dict()[k])]
    assert any(k.startswith("towers.image") for k in changed) and any(
        k.startswith("towers.text") for k in changed
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * round_lr_factor(2, 2, cfg.min_lr_factor))


def test_round_restarts_at_095_of_the_previous_peak(sets) -> None:
    model, loss = _tiny_model(sets), build("clip")
    cfg = TTMConfig(rounds=3, epochs=1, batch_size=50, threshold_start=0.0, threshold_end=0.0)
    rows = run_ttm(model, loss, sets, cfg)
    assert [r["lr_peak"] for r in rows[1:]] == pytest.approx([1e-5, 0.95e-5, 0.95**2 * 1e-5])
    assert [r["selected"] for r in rows[1:]] == [10, 10, 10]
    assert rows[1]["scale"] == pytest.approx(1 / 0.07, rel=1e-6)  # round 0: the untrained scale
    assert (
        rows[3]["scale"] != rows[1]["scale"]
    )  # the scale trains with the rest (reference: it is a parameter)
    assert logit_scale_of(loss) == pytest.approx(math.exp(float(loss.log_scale.detach())), rel=1e-6)


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="rounds"):
        TTMConfig(rounds=0)
    with pytest.raises(ConfigError, match="kinds"):
        TTMConfig(kinds=("colour",))
    with pytest.raises(ConfigError, match="thresholds"):
        TTMConfig(threshold_start=float("nan"))


def test_ttm_on_a_run_writes_json_png_and_an_evaluable_run(tmp_path) -> None:
    from contrastkit.evaluation.report import evaluate_run
    from contrastkit.train import RunConfig, train

    run = train(RunConfig.tiny(out_dir=str(tmp_path))).run_dir
    cfg = TTMConfig(rounds=2, epochs=1, n=4, threshold_start=0.0, threshold_end=0.0, lr=1e-3)
    with pytest.warns(UserWarning, match="batch-norm layers"):  # the tiny image tower has batch norm
        report = ttm_on_run(run, tmp_path / "ttm", cfg)
    saved = json.loads((tmp_path / "ttm" / "ttm.json").read_text())
    assert saved["rounds"] == json.loads(json.dumps(report["rounds"]))
    assert (tmp_path / "ttm" / "ttm.png").stat().st_size > 0
    last = report["rounds"][-1]
    opts = {"winoground": {"n": 4}}
    metrics = evaluate_run(tmp_path / "ttm", tasks=["winoground"], options=opts, splits=["test"])["metrics"]
    for kind in ("attribute", "relation"):
        for key in ("text", "image", "group", "group_match"):
            name = f"winoground/{kind}/{key}"
            assert metrics["generated"][name] == pytest.approx(last[name])
    with pytest.raises(ConfigError, match="not the run itself"):
        ttm_on_run(run, run, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # --norm-eval: nothing to warn about
        ttm_on_run(run, tmp_path / "ttm-ne", dataclasses.replace(cfg, norm_eval=True, rounds=1))


def test_norm_eval_keeps_batch_norm_statistics(sets) -> None:
    model, loss = _tiny_model(sets), build("clip")
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    cfg = TTMConfig(rounds=1, epochs=1, threshold_start=0.0, threshold_end=0.0, lr=1e-3, norm_eval=True)
    run_ttm(model, loss, sets, cfg)
    after = model.state_dict()
    assert stats and all(torch.equal(v, after[k]) for k, v in stats.items())
    assert not torch.equal(
        after["projections.image.weight"], _tiny_model(sets).state_dict()["projections.image.weight"]
    )
