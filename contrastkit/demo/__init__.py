"""``contrastkit demo``: train a CLIP dual encoder on built-in Shapes, evaluate, report.

The demo's run config is :func:`demo_config` — the same run as ``configs/shapes-clip.yaml``
(a test keeps the two identical).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from contrastkit.evaluation import evaluate_run, format_table
from contrastkit.train import RunConfig, train

__all__ = ["TARGET", "demo_config", "run_demo"]

TARGET = ("test", "zeroshot/shape+color/top1", 0.90)


def demo_config(
    out_dir: str = "runs", name: str = "demo", threads: int = 0, steps: int | None = None
) -> RunConfig:
    base = RunConfig(name="shapes-clip")
    train_cfg = dataclasses.replace(base.train, threads=threads, **({"steps": steps} if steps else {}))
    return dataclasses.replace(base, name=name, out_dir=out_dir, train=train_cfg)


def run_demo(
    out_dir: str = "runs", threads: int = 0, steps: int | None = None, progress: bool = True
) -> dict:
    """Train, evaluate and print; returns the evaluation report (also in ``runs/demo/metrics.json``)."""
    t0 = time.perf_counter()
    cfg = demo_config(out_dir, threads=threads, steps=steps)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=progress))
    print(
        f"contrastkit demo: CLIP on built-in Shapes ({cfg.data.splits['train']['n']} training "
        f"images, {cfg.train.steps} steps of {cfg.train.batch_size}) -> {Path(out_dir) / 'demo'}"
    )
    result = train(cfg, overwrite=True)
    report = evaluate_run(result.run_dir)
    wall = time.perf_counter() - t0
    print()
    print(format_table(report["metrics"]))
    split, key, goal = TARGET
    got = report["metrics"][split][key]
    verdict = "met" if got >= goal else "NOT met"
    print(
        f"\n{split} {key} = {got:.3f} (target >= {goal}: {verdict}); "
        f"training {result.seconds:.0f} s, total wall time {wall:.0f} s"
    )
    print(f"wrote {result.run_dir / 'metrics.json'} and {result.run_dir / 'similarity.png'}")
    report["wall_seconds"] = wall
    return report
