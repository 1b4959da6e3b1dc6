"""The batch planner: memory models solved correctly, per-sample memory measured, CLI output."""

import pytest
import torch

from contrastkit.core.errors import InputError
from contrastkit.models import ModelConfig, build_model
from contrastkit.scale.planner import measure_sample_memory, parse_bytes, plan_batch


def test_parse_bytes():
    assert parse_bytes("16GiB") == 16 * 2**30
    assert parse_bytes("512 MB") == 512 * 2**20
    assert parse_bytes("2e9") == 2_000_000_000
    with pytest.raises(InputError, match="cannot read a memory size"):
        parse_bytes("lots")


def test_plans_follow_their_memory_models():
    gib = 2**30
    p = plan_batch(16 * gib, n_params=1_000_000, per_sample=1e6, loss="clip", dim=512)
    fixed = 16e6
    # plain: fixed + 1e6·N + 5·4·N² ≤ budget, and N+1 does not fit
    ok = lambda n: fixed + 1e6 * n + 20 * n * n <= 16 * gib  # noqa: E731
    assert ok(p.plain) and not ok(p.plain + 1)
    assert p.plain < p.tiled < p.cached
    # with tiles and chunks only O(N·d) grows: 12·N·d·4 bytes ≈ budget
    assert p.cached == pytest.approx((16 * gib - fixed - 256e6 - 3 * 2048**2 * 4) / (12 * 512 * 4), rel=1e-3)


def test_measured_activation_memory_grows_with_the_model():
    small, big = ModelConfig.tiny(), ModelConfig()
    texts = ["a red circle", "a blue square"]

    def batch_for(model):
        return lambda n: {
            "image": torch.zeros(n, 3, 32, 32, dtype=torch.uint8),
            "text": model.tokenize(["a red circle"] * n),
        }

    m_small, m_big = build_model(small, texts=texts), build_model(big, texts=texts)
    a = measure_sample_memory(m_small, batch_for(m_small), torch.device("cpu"))
    b = measure_sample_memory(m_big, batch_for(m_big), torch.device("cpu"))
    assert 0 < a < b, (a, b)
    assert b > 100_000  # the demo model keeps >100 kB of activations per 32 px sample
