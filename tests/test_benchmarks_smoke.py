"""The benchmark scripts behind docs/performance.md and docs/losses.md run end to end at toy sizes
and write what their summaries and figures read: every compared method in every round of one
process, ratios to the round's own floor or reference, and (evaluation) the same metrics from both
retrieval backends.

Nothing here is timed: the scripts' numbers are for the docs, measured under the benchmark lock.
Those that start several interpreters (~15–40 s each) are marked slow: ``pytest -m slow`` runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "CONTRASTKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCH / script), *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.mark.slow  # ~15–20 s: fresh interpreters importing torch, open_clip, faiss, matplotlib
def test_loss_scaling_rounds_summary_and_figure(tmp_path: Path) -> None:
    rounds = tmp_path / "rounds.jsonl"
    _run("loss_scaling.py", "--sizes", "128", "--rounds", "2", "--threads", "1", "--out", str(rounds))
    # dense forms skipped by the memory estimate: only the floor and the tiled forms run
    _run(
        "loss_scaling.py",
        "--sizes",
        "256",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--max-dense-gib",
        "0",
        "--out",
        str(rounds),
    )
    recs = [json.loads(line) for line in rounds.read_text().splitlines()]
    assert [(r["n"], r["round"]) for r in recs] == [(128, 0), (128, 1), (256, 0)]
    want = {"floor", "clip/tiled", "clip/dense", "siglip/tiled", "siglip/dense"}
    if _has("open_clip"):
        want |= {"clip/open_clip", "siglip/open_clip"}
    assert set(recs[0]["seconds"]) == want == set(recs[0]["extra_mib"])
    assert set(recs[2]["seconds"]) == {"floor", "clip/tiled", "siglip/tiled"}
    assert all(s > 0 for r in recs for s in r["seconds"].values())
    assert all(m >= 0 for r in recs for m in r["extra_mib"].values())
    png = tmp_path / "cost.png"
    table = _run("loss_scaling.py", "--summary", str(rounds), "--plot", str(png))
    assert "| 128 | floor | 2 |" in table and "1.00 (1.00–1.00)" in table  # the floor over itself
    assert png.stat().st_size > 10_000


@pytest.mark.slow  # ~15–20 s: fresh interpreters importing torch, open_clip, faiss, matplotlib
def test_eval_scaling_backends_agree(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    rounds = tmp_path / "rounds.jsonl"
    args = ["--sizes", "300,1000", "--queries", "200", "--dim", "32", "--noise", "1.0", "--rounds", "2"]
    _run("eval_scaling.py", *args, "--threads", "1", "--out", str(rounds))
    recs = [json.loads(line) for line in rounds.read_text().splitlines()]
    assert [(r["gallery"], r["round"]) for r in recs] == [(300, 0), (300, 1), (1000, 0), (1000, 1)]
    assert all(r["same_metrics"] for r in recs)  # dense and faiss paths: identical recall and ranks
    assert all(set(r["seconds"]) == {"dense", "faiss"} for r in recs)
    png = tmp_path / "eval.png"
    table = _run("eval_scaling.py", "--summary", str(rounds), "--plot", str(png))
    assert "| 1,000 | 2 |" in table and "**no**" not in table
    assert png.stat().st_size > 10_000


@pytest.mark.slow  # ~15–20 s: fresh interpreters importing torch, open_clip, faiss, matplotlib
def test_loss_speed_interleaved_table() -> None:
    out = _run(
        "loss_speed.py",
        "--n",
        "64",
        "--dim",
        "16",
        "--losses",
        "clip,ntxent",
        "--repeats",
        "2",
        "--threads",
        "1",
    )
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    for name in ("clip", "ntxent"):
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert len(cells) == 8 and "(" in cells[3] and "–" in cells[3] and "→" in cells[7]
    assert rows["ntxent"].count("floor@2N") == 1 and "floor@2N" not in rows["clip"]


def test_interleaved_rotates_arms_and_ratio_spread_reads_rounds() -> None:
    sys.path.insert(0, str(BENCH))
    from _measure import interleaved, ratio_spread

    order: list[str] = []
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, 2)
    assert order == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]  # A,B / B,A / A,B
    assert [len(v) for v in times.values()] == [3, 3] and all(t >= 0 for v in times.values() for t in v)
    assert ratio_spread([2.0, 9.0, 3.0], [1.0, 3.0, 1.0]) == "3.00 (2.00–3.00)"  # per-round ratios 2, 3, 3
    with pytest.raises(ValueError):  # rounds must pair up
        ratio_spread([1.0, 2.0], [1.0])


@pytest.mark.slow  # ~40 s: a quality and a speed process per loss, each generating toy Shapes data
def test_loss_zoo_quality_and_interleaved_speed(tmp_path: Path) -> None:
    args = ["--losses", "clip,moco2", "--train-n", "200", "--test-n", "100", "--batch", "16", "--steps", "3"]
    args += ["--threads", "1", "--warmup", "1", "--rounds", "2", "--round-steps", "1", "--out", str(tmp_path)]
    out = _run("loss_zoo.py", *args)
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    for name in ("clip", "moco2"):  # moco2: two augmented views and an EMA image tower (a recipe)
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert cells[1] == "3" and float(cells[2]) > 0, cells  # trained 3 steps; ms per step
        assert "(" in cells[3] and "–" in cells[3] and "→" in cells[4], cells  # ratio (min–max), load
        assert 0 <= float(cells[8]) <= 1, cells  # the linear probe ran
    assert "step time × clip" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["loss"] for r in summary] == ["clip", "moco2"] and all(r["speed_skipped"] == 0 for r in summary)


def test_multibootstrap_speed_interleaved_table() -> None:
    args = ["--seeds", "3", "--examples", "40", "--nboot", "20", "--loop-replicates", "4", "--rounds", "2"]
    out = _run("multibootstrap_speed.py", *args)
    rows = [line for line in out.splitlines() if line.startswith("| paired") or line.startswith("| unpaired")]
    assert len(rows) == 2 and all("× (" in r and "→" in r for r in rows)


@pytest.mark.slow  # ~15 s: a fresh interpreter, every loss of the family at toy size
def test_tiled_family_rows_for_every_tiled_loss() -> None:
    out = _run(
        "tiled_family.py", "--sizes", "96", "--dim", "16", "--repeats", "2", "--threads", "1", "--tile", "32"
    )
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    for name in ("supcon", "ntxent", "multi_positive", "hn_nce", "xmc_decoupled", "moco2", "llave"):
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert cells[1] == "96" and "–" in cells[4] and "–" in cells[6] and "→" in cells[9], cells
    memory = _run("tiled_family.py", "--sizes", "96", "--dim", "16", "--losses", "supcon", "--memory-only")
    assert "| supcon | 96 |" in memory


def test_gpu_smoke_runs_on_cpu_at_toy_sizes(tmp_path: Path) -> None:
    # the GPU check cannot rot between GPU loans: the same code on the CPU at toy sizes
    out = tmp_path / "smoke.json"
    _run("gpu_smoke.py", "--device", "cpu", "--tiny", "--out", str(out))
    info = json.loads(out.read_text())
    assert info["device"] == "cpu"
    assert [r["loss"] for r in info["losses"]] == ["clip", "siglip", "ntxent"]
    for r in info["losses"]:  # float32 rounding between the tiled and the dense form
        assert r["value_rel_diff"] < 1e-5 and r["grad_rel_diff"] < 1e-5, r
    assert [r["precision"] for r in info["training"]] == ["fp32", "bf16"]
    for r in info["training"]:
        assert r["steps"] == 4 and r["batch_size"] == 16 and r["samples_per_s"] > 0


@pytest.mark.slow  # ~20 s: the gradient-cache case at toy sizes (chunks of 8, batch 64), 2 rounds
def test_train_throughput_gradcache_rows_plan_and_bound() -> None:
    out = _run("train_throughput.py", "--cases", "gradcache", "--tiny", "--rounds", "2", "--threads", "1")
    rows = [line.split() for line in out.splitlines() if line.startswith(("  plain", "  cached"))]
    assert len(rows) == 6 and rows[0][-3] == "1.000", rows  # the first row is the reference
    assert "plan for " in out and "plan's re-run work per step" in out
    bounds = [float(line.split(":")[-1]) for line in out.splitlines() if line.startswith("    k =")]
    assert len(bounds) == 4 and bounds == sorted(bounds), bounds  # more kept, higher bound
    assert "graph_memory plan (" in out and "on 64 (tiled)" in out
