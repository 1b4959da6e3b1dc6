"""The batch planner: memory models solved correctly, per-sample memory measured, CLI output."""

import pytest

from contrastkit.core.errors import InputError
from contrastkit.scale.planner import parse_bytes, plan_batch


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


_MEASURE = """
import json, torch
from contrastkit.models import ModelConfig, build_model
from contrastkit.scale.planner import measure_sample_memory
texts = ["a red circle", "a blue square"]
out = []
for cfg in (ModelConfig.tiny(), ModelConfig()):
    m = build_model(cfg, texts=texts)
    batch = lambda n, m=m: {"image": torch.zeros(n, 3, 32, 32, dtype=torch.uint8),
                            "text": m.tokenize(["a red circle"] * n)}
    out.append(measure_sample_memory(m, batch, torch.device("cpu")))
print(json.dumps(out))
"""


def test_measured_activation_memory_grows_with_the_model():
    """Measured in a fresh process, as `contrastkit plan` does: resident-memory growth inside a
    long test session depends on what earlier tests left in the allocator's free lists."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 < a < b, (a, b)
    assert b > 100_000  # the demo model keeps >100 kB of activations per 32 px sample
