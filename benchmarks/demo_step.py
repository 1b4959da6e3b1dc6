"""The Shapes demo's training step: where its time goes, and which speed options pay.

The demo's exact run (:func:`contrastkit.demo.demo_config`: 30,000 Shapes pairs, timm ResNet +
BERT towers, CLIP loss, AdamW, batch 256) is built through the library's own builders, and its
step is the trainer's own ``_step``.

1. **Profile** (``--profile-steps``, median over steps): the step cut into phases — data (the next
   batch from the loader, moved to the device), image-tower forward, text-tower forward, loss
   forward, loss backward (to the two embeddings), image-tower backward, text-tower backward (each
   tower's own graph, so the three sum to one ``loss.backward()``), gradient clipping, the guard's
   weight snapshot, the optimizer step, and the rest (finiteness check, zero_grad, schedule).
   Whole ``_step`` calls alternate with the profiled steps, to check that the phases add up.
2. **Options** (``--rounds`` × ``--steps`` steps per option per round, options in rotated order
   each round, all in this one process on the same pre-drawn batches): the baseline (the demo's
   config), the baseline again (the noise floor), ``optim.impl`` = foreach / fused / for_loop,
   ``train.channels_last``, ``train.compile``, and the baseline on 1 thread (with ``--threads 2``).
   Reported: each option's speed as the median over rounds of (baseline step time / its step
   time) with min–max, and its median ms per step. Compile time (the first steps) is reported
   apart.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/demo_step.py --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _measure  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch starts)
import torch

from contrastkit.core.runtime import seed_everything, set_threads
from contrastkit.data import open_split, source_captions
from contrastkit.demo import demo_config
from contrastkit.losses import from_config as build_loss
from contrastkit.models.dual_encoder import build_model
from contrastkit.train import RunConfig, setup
from contrastkit.train.dist_towers import GradSync
from contrastkit.train.distributed import DistContext
from contrastkit.train.feed import DataFeed
from contrastkit.train.guard import StepGuard, WeightSnapshot
from contrastkit.train.optim import build_optimizer, build_scheduler, param_groups
from contrastkit.train.session import Session
from contrastkit.train.speed import apply_speed_options
from contrastkit.train.trainer import _step, _step_seed

DEVICE = torch.device("cpu")
OPTIONS: dict[str, dict[str, dict]] = {  # name -> {"train": ..., "optim": ...} overrides of the demo
    "baseline": {},
    "baseline (again)": {},
    "optim.impl=foreach": {"optim": {"impl": "foreach"}},
    "optim.impl=fused": {"optim": {"impl": "fused"}},
    "optim.impl=for_loop": {"optim": {"impl": "for_loop"}},
    "train.channels_last": {"train": {"channels_last": True}},
    "train.compile": {"train": {"compile": True}},
    "1 thread": {},
    "channels_last + fused": {"train": {"channels_last": True}, "optim": {"impl": "fused"}},
    "channels_last + compile": {"train": {"channels_last": True, "compile": True}},
}


def _variant(base: RunConfig, over: dict[str, dict]) -> RunConfig:
    train = dataclasses.replace(base.train, **over.get("train", {}))
    optim = dataclasses.replace(base.optim, **over.get("optim", {}))
    return dataclasses.replace(base, train=train, optim=optim)


def session(cfg: RunConfig, train_set, captions: list[str]) -> Session:
    """The parts of :func:`contrastkit.train.session.build_session` that ``_step`` uses, without a
    run folder (no logger, no feed): the same builders in the same order."""
    seed_everything(cfg.train.seed)
    ctx = DistContext()
    loss = build_loss(cfg.loss)
    objective = setup.objective(cfg, loss, ctx)
    model = build_model(cfg.model, texts=captions)
    model.to(DEVICE)
    loss.to(DEVICE)
    apply_speed_options(
        model, compile_towers=cfg.train.compile, channels_last=cfg.train.channels_last, device=DEVICE
    )
    optimizer = build_optimizer(cfg.optim, param_groups(model, loss, cfg.optim.weight_decay))
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.train.steps)
    return Session(
        cfg, Path("."), DEVICE, train_set, model, loss, objective, ctx, optimizer, scheduler,
        StepGuard(cfg.guard), None, None, WeightSnapshot(optimizer), GradSync(model, loss, ctx),  # type: ignore[arg-type]
    )  # fmt: skip


def _ms(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def profiled_step(s: Session, feed: DataFeed, batches, step: int) -> dict[str, float]:
    """One step of the demo (the trainer's ``_step``, pair loss, no chunking), phase by phase."""
    t: dict[str, float] = {}
    t["data"], batch = _ms(lambda: feed.take(next(batches), DEVICE))
    torch.manual_seed(_step_seed(s.cfg.train.seed, step, 0))
    s.model.train()
    t["image forward"], a = _ms(lambda: s.model.encode("image", batch["image"]))
    t["text forward"], b = _ms(lambda: s.model.encode("text", batch["text"]))
    t["loss forward"], loss = _ms(lambda: s.objective(a.float(), b.float()))
    s.guard.check_loss(float(loss.detach()))
    scalars = [p for p in s.loss.parameters() if p.requires_grad]
    t["loss backward"], grads = _ms(lambda: torch.autograd.grad(loss, [a, b, *scalars]))
    for p, g in zip(scalars, grads[2:]):
        p.grad = g
    t["image backward"], _ = _ms(lambda: a.backward(grads[0]))
    t["text backward"], _ = _ms(lambda: b.backward(grads[1]))
    params = [p for g in s.optimizer.param_groups for p in g["params"]]
    t["grad clip"], norm = _ms(lambda: torch.nn.utils.clip_grad_norm_(params, s.cfg.optim.grad_clip))
    s.guard.check_grad_norm(float(norm))
    t["guard snapshot"], _ = _ms(s.snapshot.take)
    t["optimizer step"], _ = _ms(s.optimizer.step)

    def rest() -> None:
        s.snapshot.finite()
        s.loss.after_optimizer_step()
        s.model.after_optimizer_step(step, s.cfg.train.steps)
        s.optimizer.zero_grad(set_to_none=True)
        s.scheduler.step()

    t["finite check, zero_grad, schedule"], _ = _ms(rest)
    return t


def profile(cfg: RunConfig, train_set, captions: list[str], n: int, warmup: int, names: list[str]) -> None:
    """Phase medians of each option in ``names``; options, and profiled and whole steps, alternate
    step by step, so that every column and the sum check see the same machine load."""
    runs = []
    for name in names:
        s = session(_variant(cfg, OPTIONS[name]), train_set, captions)
        feed = DataFeed(train_set, cfg.data, s.dist)
        bs, seed = cfg.train.batch_size, cfg.train.seed
        runs.append(
            (s, feed, iter(feed.loader(s.model.tokenize, s.model.count_truncated, bs, seed, 0, DEVICE)))
        )
    rows: list[list[dict[str, float]]] = [[] for _ in names]
    whole: list[list[float]] = [[] for _ in names]
    for i in range(warmup + n):
        for j, (s, feed, batches) in enumerate(runs):
            row = profiled_step(s, feed, batches, 2 * i)
            t0 = time.perf_counter()
            batch = feed.take(next(batches), DEVICE)
            torch.manual_seed(_step_seed(cfg.train.seed, 2 * i + 1, 0))
            _step(s, batch, 2 * i + 1)
            if i >= warmup:
                rows[j].append(row)
                whole[j].append((time.perf_counter() - t0) * 1e3)
    med = [{k: statistics.median(r[k] for r in rs) for k in rs[0]} for rs in rows]
    total = [sum(m.values()) for m in med]
    print(
        f"\n## Profile: median over {n} steps (after {warmup} warm-up steps), {torch.get_num_threads()} "
        f"threads, load {os.getloadavg()[0]:.2f}\n"
    )
    print("| phase | " + " | ".join(f"{n} ms | %" for n in names) + " |")
    print("|---|" + "---:|---:|" * len(names))
    for k in med[0]:
        print(
            f"| {k} | " + " | ".join(f"{m[k]:.1f} | {100 * m[k] / t:.1f}%" for m, t in zip(med, total)) + " |"
        )
    print("| **sum of phases** | " + " | ".join(f"**{t:.1f}** | 100%" for t in total) + " |")
    w = [statistics.median(x) for x in whole]
    print(
        "| whole step (trainer `_step` + data, alternating) | "
        + " | ".join(f"{x:.1f} | {100 * x / t:.0f}%" for x, t in zip(w, total))
        + " |"
    )
    bs = cfg.train.batch_size
    print(
        "\nsamples/s at the whole step's median: "
        + ", ".join(f"{n} {bs / x * 1e3:.0f}" for n, x in zip(names, w))
    )


def options(cfg: RunConfig, train_set, captions: list[str], args: argparse.Namespace) -> None:
    names = [n for n in OPTIONS if n in args.options.split(",") or args.options == "all"]
    if args.threads < 2:
        names = [n for n in names if n != "1 thread"]
    sessions, warm_ms = {}, {}
    feed = DataFeed(train_set, cfg.data, DistContext())
    for name in names:
        sessions[name] = session(_variant(cfg, OPTIONS[name]), train_set, captions)
    first = sessions[names[0]]
    loader = feed.loader(
        first.model.tokenize, first.model.count_truncated, cfg.train.batch_size, cfg.train.seed, 0, DEVICE
    )
    it = iter(loader)
    batches = [feed.take(next(it), DEVICE) for _ in range(args.steps)]
    step_of = dict.fromkeys(names, 0)

    def run(name: str, k: int) -> float:
        s = sessions[name]
        torch.set_num_threads(1 if name == "1 thread" else args.threads)
        t0 = time.perf_counter()
        for j in range(k):
            torch.manual_seed(_step_seed(cfg.train.seed, step_of[name], 0))
            _step(s, batches[j % len(batches)], step_of[name])
            step_of[name] += 1
        return (time.perf_counter() - t0) * 1e3 / k

    for name in names:  # warm-up; for train.compile this is where the towers compile
        t0 = time.perf_counter()
        run(name, args.warmup)
        warm_ms[name] = (time.perf_counter() - t0) * 1e3
    load0 = os.getloadavg()[0]
    per: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            per[name].append(run(name, args.steps))
        ratios = {n: per["baseline"][-1] / per[n][-1] for n in names}
        print(
            f"round {r + 1}: " + ", ".join(f"{n} {per[n][-1]:.0f} ms ({ratios[n]:.3f})" for n in names),
            flush=True,
        )
    load1 = os.getloadavg()[0]
    print(
        f"\n## Options: {args.rounds} rounds × {args.steps} steps each, {args.threads} threads; "
        f"load {load0:.2f} before, {load1:.2f} after\n"
    )
    print(
        "| option | ms/step (median) | speed vs baseline (median of rounds) | min–max |\n|---|---:|---:|---|"
    )
    for n in names:
        ratio = [b / v for b, v in zip(per["baseline"], per[n])]
        print(
            f"| {n} | {statistics.median(per[n]):.1f} | {statistics.median(ratio):.3f} | "
            f"{min(ratio):.3f}–{max(ratio):.3f} |"
        )
    print(
        f"\nwarm-up ({args.warmup} steps, compiling included): "
        + ", ".join(f"{n} {v / 1e3:.1f} s" for n, v in warm_ms.items())
    )


def policies(args: argparse.Namespace) -> None:
    """OpenMP's wait policy is read once, when torch loads: each policy runs the baseline in its own
    process, the policies in rotated order each round (``""``: unset, libgomp's default spin)."""
    import subprocess

    names = args.omp_policies.split(",")
    per: dict[str, list[float]] = {n: [] for n in names}
    load0 = os.getloadavg()[0]
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--profile-steps", "0"]
            cmd += [
                "--rounds",
                "1",
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--options",
                "baseline",
            ]
            env = {**os.environ, "OMP_WAIT_POLICY": "" if name == "unset" else name}
            # as `make demo` runs: glibc reads this at exec (in this process it came too late to act)
            env.pop("MALLOC_MMAP_THRESHOLD_", None)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            per[name].append(
                float(next(ln for ln in out.splitlines() if ln.startswith("| baseline |")).split("|")[2])
            )
        print(f"round {r + 1}: " + ", ".join(f"{n} {per[n][-1]:.0f} ms" for n in names), flush=True)
    print(
        f"\n## OMP_WAIT_POLICY: {args.rounds} rounds, one process per policy per round, {args.steps} "
        f"steps each, {args.threads} threads; load {load0:.2f} before, {os.getloadavg()[0]:.2f} after\n"
    )
    print(
        f"| policy | ms/step (median) | speed vs {names[0]} (median of rounds) | min–max |\n"
        "|---|---:|---:|---|"
    )
    for n in names:
        ratio = [b / v for b, v in zip(per[names[0]], per[n])]
        print(
            f"| {n} | {statistics.median(per[n]):.1f} | {statistics.median(ratio):.3f} | "
            f"{min(ratio):.3f}–{max(ratio):.3f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile-steps", type=int, default=20, help="0: no profile")
    ap.add_argument("--rounds", type=int, default=5, help="0: no option comparison")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per option per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--options", default="all", help=f"comma-separated of: {', '.join(OPTIONS)}")
    ap.add_argument("--profile-options", default="baseline,train.channels_last", help="comma-separated")
    ap.add_argument(
        "--omp-policies",
        default="",
        help="e.g. PASSIVE,ACTIVE,unset: only the baseline, a process per policy",
    )
    args = ap.parse_args()
    if args.omp_policies:
        return policies(args)
    set_threads(args.threads)
    cfg = demo_config(threads=args.threads)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    t0 = time.perf_counter()
    train_set = open_split(cfg.data, cfg.data.train_split)
    captions = source_captions(train_set)
    print(f"data: {time.perf_counter() - t0:.1f} s to generate {len(train_set)} Shapes pairs")
    if args.profile_steps:
        names = args.profile_options.split(",")
        unknown = [n for n in names if n not in OPTIONS]
        if unknown:
            ap.error(f"--profile-options: unknown {unknown}; choose from {list(OPTIONS)}")
        profile(cfg, train_set, captions, args.profile_steps, args.warmup, names)
    if args.rounds:
        options(cfg, train_set, captions, args)


if __name__ == "__main__":
    main()
