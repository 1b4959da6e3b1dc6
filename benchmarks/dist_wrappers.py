"""Training samples/s on 2 ranks for each ``train.dist_wrapper`` (allreduce, ddp, fsdp), at the same
global batch, on this machine (``torchrun --standalone --nproc_per_node 2``, gloo).

Every arm trains ``--config`` (default ``configs/shapes-clip.yaml``, the demo run: timm ResNet +
BERT towers, 1.6M parameters, CLIP, batch 256 = 128 per rank) for ``--steps`` steps with
``train.threads=1`` per process, logging every step and checkpointing only at the end. The figure
is the median of the per-step ``samples_per_s`` that rank 0 logs after ``--warmup`` steps: the
global batch over the step's wall time (data, forward, backward, the gradient average, the
optimizer). The arms rotate over ``--rounds`` (allreduce, ddp, fsdp; ddp, fsdp, allreduce; …)
because the machine is shared; each line of ``--out`` is one measurement with the 1-minute load
average (``os.getloadavg``, which counts this benchmark's own two processes) seen just before it.

    flock /tmp/ck-bench.lock .venv/bin/python benchmarks/dist_wrappers.py [--rounds 3] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _measure

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("allreduce", "ddp", "fsdp")


def _run(arm: str, args: argparse.Namespace, out_dir: str) -> None:
    sets = [
        f"out_dir={out_dir}",
        f"train.steps={args.steps}",
        f"train.batch_size={args.batch}",
        f"train.dist_wrapper={arm}",
        "train.threads=1",
        "train.log_every=1",
        f"train.ckpt_every={args.steps}",
        "train.tensorboard=false",
        "train.progress=false",
        *args.set,
    ]
    train = ["-m", "contrastkit", "train", "--config", args.config, "--name", arm]
    train += [x for s in sets for x in ("--set", s)]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONTRASTKIT_PROGRESS": "0"}
    code = subprocess.run([*launch, *train], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, timeout=3600)
    if code.returncode:
        raise SystemExit(f"{arm}: exit code {code.returncode}")


def _rates(run: Path, warmup: int) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_s"] for r in rows if "samples_per_s" in r and r["step"] > warmup]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/shapes-clip.yaml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated dist_wrapper values")
    p.add_argument("--set", action="append", default=[], help="more config overrides (KEY=VALUE)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dist_wrappers.jsonl"))
    args = p.parse_args()
    arms = args.arms.split(",")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(args.rounds):
        for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:
            with tempfile.TemporaryDirectory(prefix="ck-dist-wrappers-") as out_dir:
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                _run(arm, args, out_dir)
                rates = _rates(Path(out_dir) / arm, args.warmup)
            rec = {
                "round": r,
                "arm": arm,
                "median_samples_per_s": statistics.median(rates),
                "steps_measured": len(rates),
                "batch": args.batch,
                "config": args.config,
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
    base = results[arms[0]]
    for arm in arms:
        ratios = [b / a for a, b in zip(base, results[arm])]
        print(
            f"{arm}: median {statistics.median(results[arm]):.0f} samples/s "
            f"(min {min(results[arm]):.0f}, max {max(results[arm]):.0f}); per-round × {arms[0]}: "
            f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
