"""Sparse MoE layers (M-LIMOE): regularisers against their formulas, capacity and Batch Priority
Routing on hand-made router outputs, and the vectorised dispatch against a per-token loop."""

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.moe import (
    SparseMoE,
    entropy,
    expert_capacity,
    global_entropy,
    local_entropy,
    record_usage,
    route,
    thresholded_global_entropy,
)


@pytest.mark.parametrize("experts", [2, 4, 8])
def test_uniform_router_gives_log_e_and_minus_log_e(experts):
    p = torch.full((10, experts), 1.0 / experts, dtype=torch.float64)
    assert float(local_entropy(p)) == pytest.approx(math.log(experts), abs=1e-12)
    assert float(global_entropy(p)) == pytest.approx(-math.log(experts), abs=1e-12)


def test_one_hot_identical_routing_gives_zero_and_zero():
    p = torch.zeros(7, 4, dtype=torch.float64)
    p[:, 2] = 1.0
    assert float(local_entropy(p)) == 0.0
    assert float(global_entropy(p)) == 0.0


def test_entropies_match_the_direct_formulas_with_gradients():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, 5, generator=g, dtype=torch.float64), -1).requires_grad_(True)
    q = p.detach()
    h = -(q * q.log()).sum(-1)
    assert torch.allclose(entropy(q), h, rtol=0, atol=1e-15)
    pbar = q.mean(0)
    assert float(local_entropy(q)) == pytest.approx(float(h.mean()), abs=1e-15)
    assert float(global_entropy(q)) == pytest.approx(float((pbar * pbar.log()).sum()), abs=1e-15)
    (g_local,) = torch.autograd.grad(local_entropy(p), p)
    assert torch.allclose(g_local, -(p.log() + 1) / len(p), atol=1e-14)  # ∂/∂p_ie of mean_i H(p_i)
    (g_global,) = torch.autograd.grad(global_entropy(p), p)
    assert torch.allclose(g_global, (pbar.log() + 1).expand_as(p) / len(p), atol=1e-14)


def test_thresholded_global_is_zero_exactly_when_the_marginal_entropy_reaches_tau():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(20, 8, generator=g, dtype=torch.float64) * 2, -1)
    h = float(entropy(p.mean(0)))
    for tau in (0.0, h / 2, h - 1e-9, h, h + 1e-9, h + 0.5, math.log(8)):
        val = float(thresholded_global_entropy(p, tau))
        assert val == pytest.approx(max(0.0, tau - h), abs=1e-12)
        assert (val == 0.0) == (h >= tau)


def test_capacity_formula_and_its_float_rounding():
    assert expert_capacity(10, 2, 1, 1.0) == 5
    assert expert_capacity(64, 8, 1, 1.25) == 10  # 1.25·64/8 = 10 exactly, not 11
    assert expert_capacity(11, 2, 1, 1.0) == 6  # ceil(5.5)
    assert expert_capacity(10, 4, 2, 1.5) == 8  # ceil(1.5·2·10/4) = ceil(7.5)


def _all_prefer_expert_zero() -> torch.Tensor:
    """10 tokens, E = 2, every token's first choice expert 0, with distinct confidences."""
    conf = torch.tensor([0.55, 0.9, 0.6, 0.95, 0.7, 0.65, 0.99, 0.8, 0.75, 0.85], dtype=torch.float64)
    return torch.stack([conf, 1 - conf], 1)


def test_capacity_five_slots_and_bpr_keeps_the_five_most_confident_tokens():
    p = _all_prefer_expert_zero()
    cap = expert_capacity(10, 2, 1, 1.0)
    assert cap == 5
    plain = route(p, 1, cap, bpr=False)
    assert plain.keep[:, 0].tolist() == [True] * 5 + [False] * 5  # sequence order: the first five
    bpr = route(p, 1, cap, bpr=True)
    top5 = set(torch.topk(p[:, 0], 5).indices.tolist())
    assert {i for i in range(10) if bpr.keep[i, 0]} == top5 == {1, 3, 6, 7, 9}
    assert sorted(bpr.slot[bpr.keep[:, 0], 0].tolist()) == [0, 1, 2, 3, 4]


def test_second_choices_fill_after_every_first_choice():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1]], dtype=torch.float64)
    r = route(p, 2, capacity=2)
    # expert 0: first choices of tokens 0, 1 (slots 0, 1), then token 2's second choice (slot 2: dropped)
    assert r.expert.tolist() == [[0, 1], [0, 2], [1, 0]]
    assert r.slot.tolist() == [[0, 1], [1, 0], [0, 2]]
    assert r.keep.tolist() == [[True, True], [True, True], [True, False]]
    with pytest.raises(InputError, match="1 <= k <= experts"):
        route(p, 4, 2)


def _naive(layer: SparseMoE, x: torch.Tensor, bpr: bool) -> torch.Tensor:
    """The layer token by token: choices in rounds, tokens in priority order, a counter per expert."""
    probs = torch.softmax(layer.router(x), -1).detach()
    gate, expert = probs.topk(layer.k, -1)
    order = sorted(range(len(x)), key=lambda i: -float(probs[i].max())) if bpr else range(len(x))
    cap, used = layer.capacity(len(x)), [0] * layer.experts
    out = torch.zeros_like(x)
    for j in range(layer.k):
        for i in order:
            e = int(expert[i, j])
            if used[e] < cap:
                used[e] += 1
                out[i] += gate[i, j] * layer.expert(e, x[i : i + 1])[0]
    return out


@pytest.mark.parametrize(
    "k,cf,bpr", [(1, 1.0, False), (1, 1.0, True), (2, 0.6, True), (2, 2.0, False), (1, 0.3, True)]
)
def test_vectorised_layer_equals_a_per_token_loop(k, cf, bpr):
    torch.manual_seed(0)
    layer = SparseMoE(6, 10, experts=4, k=k, capacity_factor=cf).double()
    x = torch.randn(23, 6, dtype=torch.float64)
    got, probs = layer.dispatch(x, bpr)
    assert torch.allclose(got, _naive(layer, x, bpr), rtol=0, atol=1e-12)
    assert torch.allclose(probs, torch.softmax(layer.router(x), -1), atol=1e-15)


def test_padding_takes_no_capacity_and_gets_zero():
    torch.manual_seed(1)
    layer = SparseMoE(4, 8, experts=2, k=1, capacity_factor=1.0).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out, probs = layer(x, valid)
    ref, _ = layer.dispatch(x[valid], False)
    assert torch.equal(out[valid], ref) and torch.equal(out[~valid], torch.zeros(2, 4, dtype=torch.float64))
    assert probs.shape == (8, 2) and layer.capacity(8) == 4


def test_usage_is_counted_per_modality_only_while_recording():
    torch.manual_seed(2)
    layer = SparseMoE(4, 8, experts=3, k=1, capacity_factor=0.5)
    x = torch.randn(12, 4)
    with record_usage(layer) as read:
        _, p = layer.dispatch(x, False, "image")
        layer.dispatch(x[:6], False, "text")
        usage = read()
    assert layer.usage is None
    assert usage["image"]["tokens"].tolist() == [12] and usage["text"]["tokens"].tolist() == [6]
    assert usage["image"]["routed"][0].tolist() == torch.bincount(p.argmax(-1), minlength=3).tolist()
    cap = expert_capacity(12, 3, 1, 0.5)  # 2 slots: k = 1 keeps min(routed, capacity) per expert
    assert usage["image"]["kept"][0].tolist() == usage["image"]["routed"][0].clamp_max(cap).tolist()


def test_bad_layer_settings_are_config_errors():
    with pytest.raises(ConfigError, match="1 <= k <= experts"):
        SparseMoE(4, 8, experts=2, k=3)
    with pytest.raises(ConfigError, match="capacity factors must be > 0"):
        SparseMoE(4, 8, capacity_factor=0.0)
