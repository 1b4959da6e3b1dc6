"""Training samples/s of one process vs two simulated nodes (two ``torchrun --nnodes 2`` agents on
this machine, c10d rendezvous on 127.0.0.1, gloo), at the same global batch.

Both arms train ``--config`` (default ``configs/shapes-clip.yaml``, the demo run) for ``--steps``
steps with ``train.threads=1`` per process (a 2-node run uses two processes, so two cores), logging
every step and checkpointing only at the end. The figure is the median of the per-step
``samples_per_s`` that rank 0 logs after ``--warmup`` steps: the global batch over the step's wall
time (data + compute + the gradient all-reduce, on the 2-node arm also waiting for the other rank).
The arms alternate over ``--rounds`` (one, two; two, one; …) because the machine is shared; each
line of ``--out`` holds one measurement with the 1-minute load average (``os.getloadavg``, which
counts this benchmark's own processes) seen just before it.

    flock /tmp/ck-bench.lock python benchmarks/multinode_throughput.py [--rounds 3] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _measure

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _overrides(args: argparse.Namespace, out_dir: str) -> list[str]:
    sets = [
        f"out_dir={out_dir}",
        f"train.steps={args.steps}",
        f"train.batch_size={args.batch}",
        "train.threads=1",
        "train.log_every=1",
        f"train.ckpt_every={args.steps}",
        "train.tensorboard=false",
        "train.progress=false",
        *args.set,
    ]
    return [x for s in sets for x in ("--set", s)]


def _run(arm: str, args: argparse.Namespace, out_dir: str) -> None:
    train = ["-m", "contrastkit", "train", "--config", args.config, "--name", arm, *_overrides(args, out_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONTRASTKIT_PROGRESS": "0"}
    if arm == "one":
        procs = [subprocess.Popen([sys.executable, *train], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)]
    else:
        port = _free_port()
        rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "bench"]
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
        procs = [
            subprocess.Popen(
                [*launch, "--node_rank", str(node), *rdzv, *train],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
            )
            for node in range(2)
        ]
    codes = [p.wait(timeout=1800) for p in procs]
    if any(codes):
        raise SystemExit(f"{arm}: exit codes {codes}")


def _rates(run: Path, warmup: int) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_s"] for r in rows if "samples_per_s" in r and r["step"] > warmup]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/shapes-clip.yaml")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="more config overrides (KEY=VALUE)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "multinode_throughput.jsonl"))
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[float]] = {"one": [], "two": []}
    for r in range(args.rounds):
        for arm in ("one", "two") if r % 2 == 0 else ("two", "one"):
            with tempfile.TemporaryDirectory(prefix="ck-multinode-") as out_dir:
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                _run(arm, args, out_dir)
                rates = _rates(Path(out_dir) / arm, args.warmup)
            rec = {
                "round": r,
                "arm": arm,
                "processes": 1 if arm == "one" else 2,
                "median_samples_per_s": statistics.median(rates),
                "steps_measured": len(rates),
                "batch": args.batch,
                "seconds_total": time.perf_counter() - t0,
                "load_1min": load,
                "cpus": os.cpu_count(),
                "source": _measure.source_state(),
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
            results[arm].append(rec["median_samples_per_s"])
            with open(args.out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
    one, two = statistics.median(results["one"]), statistics.median(results["two"])
    ratios = [b / a for a, b in zip(results["one"], results["two"])]
    print(
        f"median samples/s: 1 process {one:.0f}, 2 simulated nodes {two:.0f}; per-round ratio "
        f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
