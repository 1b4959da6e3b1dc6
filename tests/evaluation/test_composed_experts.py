"""The ``composed`` (composed image retrieval) and ``experts`` (MoE usage) evaluation tasks."""

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.data.composed import make_composed_shapes
from contrastkit.data.shapes import make_shapes
from contrastkit.evaluation import EVAL_TASKS, EvalContext
from contrastkit.evaluation.composed import composed_ranks
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.experts import expert_fractions, plot_expert_usage


def test_ranks_match_a_naive_count_with_ties_against_the_query():
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(9, 4, generator=g), torch.randn(15, 4, generator=g)
    gal[3] = gal[7]  # a tie between items 3 and 7
    targets = torch.tensor([0, 3, 7, 14, 2, 5, 7, 3, 1])
    s = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(gal, dim=-1).T
    naive = [
        sum(1 for j in range(15) if s[i, j] > s[i, t] or (s[i, j] == s[i, t] and j < t))
        for i, t in enumerate(targets.tolist())
    ]
    assert composed_ranks(q, gal, targets).tolist() == naive


def _pixel_encoders(fused_oracle: bool) -> Encoders:
    """Images: their pixels; texts: nothing (constant); composed: the true target's pixels."""
    data = make_composed_shapes(n=24, image_size=32, seed=0)
    lookup = {bytes(r.numpy()): t for r, t in zip(data.references, data.targets)}

    def images(x):
        return x.reshape(len(x), -1).float()

    def texts(t):
        return torch.zeros(len(t), 32 * 32 * 3)  # normalises to 0: the sum query is the image alone

    def composed(x, t):
        return images(torch.stack([lookup[bytes(r.numpy())] for r in x]))

    return Encoders(images, texts, composed=composed if fused_oracle else None)


def test_composed_task_scores_sum_and_fused_queries():
    pairs = make_shapes("test", n=4)
    ctx = EvalContext(_pixel_encoders(True), pairs, options={"composed": {"n": 24}})
    out, examples = EVAL_TASKS.get("composed")(ctx)
    # text carries nothing: the sum query is the reference itself, which the gallery holds
    assert out["composed/sum/reference@1"] == 1.0 and out["composed/sum/R@1"] == 0.0
    assert out["composed/fused/R@1"] == out["composed/fused/R@5"] == 1.0
    assert out["composed/fused/color/R@1"] == out["composed/fused/shape/R@1"] == 1.0
    assert examples["composed/sum/R@5"].shape == (24,)
    plain = EVAL_TASKS.get("composed")(
        EvalContext(_pixel_encoders(False), pairs, options={"composed": {"n": 24}})
    )[0]
    assert not any(k.startswith("composed/fused") for k in plain)
    with pytest.raises(ConfigError, match="unknown composed option"):
        EVAL_TASKS.get("composed")(EvalContext(_pixel_encoders(False), pairs, options={"composed": {"m": 1}}))


def test_experts_task_needs_moe_and_plots_fractions(tmp_path):
    pairs = make_shapes("test", n=4)
    enc = _pixel_encoders(False)
    with pytest.raises(ConfigError, match="sparse mixture-of-experts"):
        EVAL_TASKS.get("experts")(EvalContext(enc, pairs))
    usage = {
        "image": {
            "tokens": np.array([10, 10]),
            "routed": np.array([[10, 0, 0], [4, 3, 3]]),
            "kept": np.array([[6, 0, 0], [4, 3, 3]]),
        },
        "text": {
            "tokens": np.array([5, 5]),
            "routed": np.array([[0, 5, 0], [2, 2, 1]]),
            "kept": np.array([[0, 5, 0], [2, 2, 1]]),
        },
    }
    frac = expert_fractions(usage)
    assert np.allclose(frac["image"].sum(1), 1) and frac["text"][1].tolist() == [0.4, 0.4, 0.2]
    enc = Encoders(enc.images, enc.texts, expert_usage=lambda x, t: usage)
    out, _ = EVAL_TASKS.get("experts")(EvalContext(enc, pairs, options={"plot_dir": tmp_path}))
    assert out["experts/image/layer0/dropped"] == pytest.approx(0.4)
    assert out["experts/image/layer0/entropy"] == 0.0 and out["experts/image/layer0/used"] == 1
    assert out["experts/layer0/overlap"] == 0.0 and out["experts/layer1/overlap"] == pytest.approx(
        0.4 + 0.3 + 0.2
    )
    assert out["experts/text/layer1/entropy"] == pytest.approx(-(2 * 0.4 * np.log(0.4) + 0.2 * np.log(0.2)))
    assert (tmp_path / "experts.png").stat().st_size > 1000 and (tmp_path / "experts.json").is_file()
    assert plot_expert_usage(usage, tmp_path / "b.png").is_file()
