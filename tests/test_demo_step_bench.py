"""benchmarks/demo_step.py (docs/performance.md, "The demo's step") runs end to end at toy sizes:
the profile's phases add up to a table, and every compared option gets a row. Nothing is timed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_step_profile_and_options_run():
    """~30 s: the demo's 30,000 Shapes pairs are generated once, two sessions are built."""
    env = {**os.environ, "CONTRASTKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "demo_step.py"), "--threads", "1"]
    cmd += ["--profile-steps", "1", "--warmup", "1", "--rounds", "1", "--steps", "1"]
    cmd += ["--options", "baseline,optim.impl=fused", "--profile-options", "baseline"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("| image backward |", "| optimizer step |", "| **sum of phases** |", "| optim.impl=fused |"):
        assert row in out.stdout, out.stdout
