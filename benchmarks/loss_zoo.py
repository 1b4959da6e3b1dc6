"""Train the Shapes demo model briefly with every registered loss and compare them in one table.

Every loss in :data:`contrastkit.losses.base.LOSSES` is tried (after importing every module file
of ``contrastkit/losses/``, so modules that ``contrastkit.losses`` does not import yet are
registered too). A loss is trained only if it can train a two-tower model from the (image, text)
embeddings alone: it is built with its defaults (plus ``total_steps`` = the step budget and
``dim`` = the model's embedding width when its constructor has them) and probed on random
embeddings. A loss that accepts ``labels`` trains with the Shapes shape+color class ids
(``data.label_task``; two-object images get unique ids); a loss that *needs* other batch fields
(``weights``, extra negatives, a past model's embeddings) is skipped with the reason printed.
Losses beyond pairs (loss zoo II) train with a recipe from ``RECIPES``: two augmented views, a
momentum encoder, the Shapes attribute vector as a third modality (MLP tower), or caption
concepts; ``clip_plus_ssl:<ssl>`` rows combine CLIP with an image–image SSL loss.

**Quality.** Each loss trains in a fresh subprocess and run folder (``--out/<loss>``) through the
Python API (``contrastkit.train.RunConfig`` / ``train`` with ``LossConfig(name)``, then
``contrastkit.evaluation.evaluate_run`` on the test split), with the demo model and optimiser
(warm-up shortened to a tenth of the budget; non-finite steps are skipped and the run stops after
10 in a row, reported as a failure). Columns: test zero-shot top-1 on shape+color and on color,
test text→image R@1, and a shape+color linear probe of the image embeddings (fixed λ, 50/50 split
of the test images) — the only meaningful column for image-only objectives, which leave the text
tower untrained. A budget this small ranks losses by early progress, not by their final quality.

**Speed.** A second subprocess per loss builds two training sessions of the same run config
(:func:`contrastkit.train.session.build_session`): one with the loss and its recipe, one with the
reference loss (``--reference``, default ``clip``, plain pairs). After ``--warmup`` steps each, it
times the trainer's own step (towers, loss, backward, optimiser) in ``--rounds`` interleaved rounds
of ``--round-steps`` steps per session (loss, reference, then reference, loss, …; each session on
its own pre-drawn batches). Reported: the loss's median ms per step, the median of the per-round
ratios (loss step / reference step) with their min–max, and the 1-minute load average before and
after that process. ``--part`` picks quality, speed or both. The step time does not depend on
``--train-n`` (the model and its vocabulary are the same): a smaller one only saves the sessions'
data generation.

    python benchmarks/loss_zoo.py --losses clip,siglip,m3col --steps 60
    python benchmarks/loss_zoo.py            # every loss, 150 steps of 128, 8000 training pairs
    python benchmarks/loss_zoo.py --part speed   # the speed columns only (minutes, not an hour)
    python benchmarks/loss_zoo.py --probe-only   # which losses would train, and why not
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import pkgutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import TIMING, ratio_spread, set_mmap_threshold  # OMP_WAIT_POLICY=PASSIVE
from _train_steps import step_times

METRICS = {
    "zs_shape_color": "zeroshot/shape+color/top1",
    "zs_color": "zeroshot/color/top1",
    "t2i_r1": "retrieval/text_to_image_R@1",
    "probe_shape_color": "probe/shape+color/linear_top1",
}

# The linear probe at a fixed λ (no sweep) and one few-shot draw: ~20 s per loss instead of minutes.
PROBE_OPTIONS = {"probe": {"lam": 1e-4, "shots": (1,), "seeds": (0,), "max_iter": 200}}

# Losses that need more than (image, text) batches (loss zoo II): a row label maps to the registry
# name, its parameters and the run changes it needs — ``data`` (two augmented views, the Shapes
# attribute vector as a third modality, caption concepts), ``momentum`` (EMA copies of towers) and
# extra ``towers``. Image-only objectives (SSL, MoCo, multi-view) leave the text tower untrained,
# so only their linear-probe column means something; ``clip_plus_ssl:*`` adds CLIP on (image, text).
VIEWS = {"views": 2}
ATTRIBUTES = {"modalities": ["image", "text", "attributes"]}
MLP_TOWER = {"attributes": {"name": "mlp", "params": {"input_dim": 45, "hidden_dim": 128}}}
RECIPES: dict[str, dict[str, Any]] = {
    "mv_infonce": {"data": VIEWS},
    "mv_dhel": {"data": VIEWS},
    "collossl": {"data": VIEWS},
    "moco2": {"data": VIEWS, "momentum": (["image"], 0.99, "constant"), "params": {"queue_size": 4096}},
    "moco3": {"data": VIEWS, "momentum": (["image"], 0.99, "cosine"), "params": {"temperature": 0.2}},
    "byol": {"data": VIEWS, "momentum": (["image"], 0.99, "cosine"), "params": {"predictor_hidden": 512}},
    "simsiam": {"data": VIEWS, "momentum": (["image"], 0.0, "constant"), "params": {"predictor_hidden": 32}},
    "clip_plus_ssl:ntxent": {"loss": "clip_plus_ssl", "data": VIEWS, "params": {"ssl": "ntxent"}},
    "clip_plus_ssl:barlow": {
        "loss": "clip_plus_ssl",
        "data": VIEWS,
        "params": {"ssl": "barlow", "ssl_weight": 0.005},
    },
    "clip_plus_ssl:byol": {
        "loss": "clip_plus_ssl",
        "data": VIEWS,
        "momentum": (["image"], 0.99, "cosine"),
        "params": {"ssl": "byol", "ssl_params": {"predictor_hidden": 512, "dim": 128}},
    },
    "tcl": {
        "momentum": (["image", "text"], 0.995, "constant"),
        "params": {"local": False, "queue_size": 4096},
    },
    "gram": {"data": ATTRIBUTES, "towers": MLP_TOWER},
    "pairwise_clip": {"data": ATTRIBUTES, "towers": MLP_TOWER},
    "catlip": {"data": {"concepts": True}},
    "tagalign": {"data": {"concepts": True}},
    "captioning": {"params": {"width": 128, "heads": 4, "layers": 2}},
    "coca": {"params": {"width": 128, "heads": 4, "layers": 2}},
}
SKIP = {
    "mlcd": "needs k-means prototypes of a pretrained model's embeddings (offline clustering); "
    "not defined from scratch",
}


def load_registry() -> tuple[Any, dict[str, str]]:
    """The loss registry after importing ``contrastkit.losses`` and every module file in it;
    returns it with ``{module: error}`` for modules that failed to import."""
    import contrastkit.losses as pkg
    from contrastkit.losses.base import LOSSES

    failed = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        try:
            importlib.import_module(f"{pkg.__name__}.{info.name}")
        except Exception as exc:  # a broken module must not hide the others
            failed[info.name] = f"{type(exc).__name__}: {exc}"
    return LOSSES, failed


def loss_params(registry: Any, name: str, steps: int, embed_dim: int) -> dict[str, Any]:
    """Constructor parameters the benchmark sets: the schedule length and the embedding width."""
    recipe = RECIPES.get(name, {})
    sig = inspect.signature(registry.get(recipe.get("loss", name))).parameters
    params: dict[str, Any] = dict(recipe.get("params", {}))
    if "total_steps" in sig:
        params["total_steps"] = steps
    if "dim" in sig and sig["dim"].default in (None, inspect.Parameter.empty):
        params["dim"] = embed_dim
    if (
        name == "mochi"
    ):  # the spec makes MoCHi's N, s, s' and warm-up explicit: the paper's (256, 512, 256) scaled down
        params.update(n_hard=128, n_mix=128, n_mix_query=64, warmup_steps=steps // 10, queue_size=4096)
    return params


def recipe_note(registry: Any, name: str) -> str:
    """What a row was trained with beyond the plain (image, text) batches."""
    recipe = RECIPES.get(name, {})
    notes = []
    accepts = getattr(registry.get(recipe.get("loss", name)), "accepts", ())
    if isinstance(accepts, frozenset) and "labels" in accepts:
        notes.append("shape+color labels")
    data = recipe.get("data", {})
    if data.get("views"):
        notes.append(f"{data['views']} augmented views")
    if "attributes" in data.get("modalities", ()):
        notes.append("3rd modality: attribute vector (MLP tower)")
    if data.get("concepts"):
        notes.append("caption-concept targets")
    if "momentum" in recipe:
        mods, m, schedule = recipe["momentum"]
        notes.append(f"EMA {'+'.join(mods)} m={m} {schedule}")
    if recipe.get("params"):
        notes.append(", ".join(f"{k}={v}" for k, v in recipe["params"].items()))
    return "; ".join(notes)


def run_name(name: str) -> str:
    return name.replace(":", "-")


def probe(registry: Any, name: str, params: dict[str, Any], embed_dim: int) -> str | None:
    """``None`` if the loss trains from two embedding batches alone, else why not."""
    import torch

    try:
        loss = registry.build(name, **params)
    except Exception as exc:
        return f"does not build with defaults: {type(exc).__name__}: {exc}"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, embed_dim, generator=gen, requires_grad=True)
    y = torch.randn(16, embed_dim, generator=gen, requires_grad=True)
    aux = (
        {"labels": torch.randint(0, 4, (16,), generator=gen)}
        if "labels" in getattr(loss, "accepts", ())
        else {}
    )
    try:
        value = loss(x, y, **aux)
        value.backward()
    except Exception as exc:
        needs = sorted(getattr(loss, "accepts", ()))
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        if needs:
            return f"needs batch field(s) {needs} that Shapes batches do not carry — {why}"
        return f"cannot train from (image, text) embeddings alone — {why}"
    if value.ndim != 0 or not torch.isfinite(value):
        return f"probe gave a non-finite or non-scalar value {value}"
    return None


def run_config(args: argparse.Namespace, name: str, params: dict[str, Any]):
    from contrastkit.data import DataConfig
    from contrastkit.losses.base import LOSSES, LossConfig
    from contrastkit.models import TowerConfig
    from contrastkit.models.momentum import MomentumConfig
    from contrastkit.train import OptimConfig, RunConfig, TrainConfig

    base = RunConfig()
    recipe = RECIPES.get(name, {})
    loss_name = recipe.get("loss", name)
    built = LOSSES.build(loss_name, **params)
    data_changes = dict(recipe.get("data", {}))
    if "modalities" in data_changes:
        data_changes["modalities"] = tuple(data_changes["modalities"])
    data = DataConfig(
        params=dict(base.data.params),
        splits={"train": {"n": args.train_n}, "test": {"n": args.test_n}},
        eval_splits=("test",),
        label_task="shape+color" if "labels" in built.accepts else None,
        **data_changes,
    )
    towers = {**base.model.towers, **{k: TowerConfig(**v) for k, v in recipe.get("towers", {}).items()}}
    momentum = None
    if "momentum" in recipe:
        mods, m, schedule = recipe["momentum"]
        momentum = MomentumConfig(tuple(mods), m=m, schedule=schedule)
    return dataclasses.replace(
        base,
        name=run_name(name),
        out_dir=args.out,
        data=data,
        model=dataclasses.replace(base.model, towers=towers, momentum=momentum),
        loss=LossConfig(name=loss_name, params=params),
        optim=dataclasses.replace(OptimConfig(), warmup_steps=max(1, args.steps // 10)),
        train=TrainConfig(
            steps=args.steps,
            batch_size=args.batch,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
            log_every=10,
            ckpt_every=args.steps,
            keep_checkpoints=1,
            progress=False,
            tensorboard=False,
        ),
    )


def worker(args: argparse.Namespace) -> None:
    """Train and evaluate one loss in this (fresh) process; write ``zoo.json`` in its run folder."""
    from contrastkit.evaluation import evaluate_run
    from contrastkit.train import train

    set_mmap_threshold(TIMING)  # the allocator as in a plain training run, not _measure's child default
    load_registry()
    params = json.loads(args.params)
    cfg = run_config(args, args.worker, params)
    result = train(cfg, overwrite=True)
    metrics = evaluate_run(
        result.run_dir, splits=["test"], tasks=("zeroshot", "retrieval", "probe"), options=PROBE_OPTIONS
    )
    metrics = metrics["metrics"]["test"]
    out = {
        "steps": result.step,
        "wall_s": result.seconds,
        "skipped_steps": result.skipped,
        "last_loss": result.last_loss,
        **{k: metrics.get(key, float("nan")) for k, key in METRICS.items()},
    }
    (Path(result.run_dir) / "zoo.json").write_text(json.dumps(out, indent=1))


def run_one(args: argparse.Namespace, name: str, params: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--params", json.dumps(params)]
    for flag in ("steps", "batch", "train_n", "test_n", "out", "seed", "device", "threads"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    result_file = Path(args.out) / run_name(name) / "zoo.json"
    if proc.returncode != 0 or not result_file.is_file():
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
        return {"reason": f"failed (exit {proc.returncode}): {tail}"}
    out = json.loads(result_file.read_text())
    out["process_s"] = time.perf_counter() - t0
    return out


def speed_worker(args: argparse.Namespace) -> None:
    """Time the training step of ``--speed-worker`` against the reference loss's in interleaved
    rounds in this one process; print ``{"loss": [...], "ref": [...], "skipped": n}`` (seconds per
    step, one value per round) as the last line."""
    from contrastkit.models.dual_encoder import ModelConfig

    registry, _ = load_registry()
    ref = (args.reference, loss_params(registry, args.reference, args.steps, ModelConfig().embed_dim))
    cfgs = {}
    for arm, (name, params) in {"loss": (args.speed_worker, json.loads(args.params)), "ref": ref}.items():
        if "warmup_steps" in params:  # the steady state: MoCHi mixes hard negatives after its warm-up
            params = {**params, "warmup_steps": 0}
        cfgs[arm] = run_config(args, name, params)
    times, skipped = step_times(cfgs, args.warmup, args.rounds, args.round_steps)
    print(json.dumps({**times, "skipped": skipped}))


def run_speed(args: argparse.Namespace, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``name``'s step time against the reference's, from a fresh process, with the load around it."""
    cmd = [sys.executable, __file__, "--speed-worker", name, "--params", json.dumps(params)]
    flags = ("steps", "batch", "train_n", "test_n", "seed", "device", "threads", "reference", "warmup")
    for flag in (*flags, "rounds", "round_steps"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    load0 = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    load = f"{load0:.1f}→{os.getloadavg()[0]:.1f}"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
        return {"speed_error": f"speed failed (exit {proc.returncode}): {tail}", "load": load}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "ms_per_step": 1e3 * statistics.median(r["loss"]),
        "x_ref": ratio_spread(r["loss"], r["ref"]),
        "speed_skipped": r["skipped"],
        "load": load,
    }


def fmt(v: Any, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and v != v) else format(v, spec)


def table(rows: list[dict[str, Any]], reference: str) -> str:
    lines = [
        f"| loss | steps | ms/step | step time × {reference} | load | test shape+color zero-shot top-1 "
        "| test color top-1 | text→image R@1 | shape+color linear probe | note |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['loss']} | {fmt(r.get('steps'), 'd')} | {fmt(r.get('ms_per_step'), '.0f')} "
            f"| {r.get('x_ref', '—')} | {r.get('load', '—')} "
            f"| {fmt(r.get('zs_shape_color'), '.3f')} | {fmt(r.get('zs_color'), '.3f')} "
            f"| {fmt(r.get('t2i_r1'), '.3f')} | {fmt(r.get('probe_shape_color'), '.3f')} "
            f"| {r.get('reason', '')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--losses", default="", help="comma-separated registry names (default: all)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--train-n", type=int, default=8000)
    p.add_argument("--test-n", type=int, default=2000)
    p.add_argument("--out", default="runs/loss_zoo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: all cores)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per loss")
    p.add_argument("--probe-only", action="store_true", help="list which losses would train; train none")
    p.add_argument("--part", choices=("both", "quality", "speed"), default="both")
    p.add_argument("--reference", default="clip", help="speed: the loss every step time is divided by")
    p.add_argument("--warmup", type=int, default=3, help="speed: untimed steps per session")
    p.add_argument("--rounds", type=int, default=5, help="speed: interleaved rounds")
    p.add_argument("--round-steps", type=int, default=3, help="speed: steps per session per round")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--speed-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.speed_worker:
        speed_worker(args)
        return

    from contrastkit.models.dual_encoder import ModelConfig

    registry, failed = load_registry()
    for module, err in failed.items():
        print(f"[loss_zoo] module contrastkit.losses.{module} failed to import: {err}", flush=True)
    names = [n.strip() for n in args.losses.split(",") if n.strip()] or [
        *registry.names(),
        *(k for k in RECIPES if ":" in k),
    ]
    embed_dim = ModelConfig().embed_dim
    rows = []
    for name in names:
        row: dict[str, Any] = {"loss": name}
        if RECIPES.get(name, {}).get("loss", name) not in registry:
            row["reason"] = f"not registered (available: {', '.join(registry.names())})"
        elif name in SKIP:
            row["reason"] = SKIP[name]
        else:
            params = loss_params(registry, name, args.steps, embed_dim)
            why = None if name in RECIPES else probe(registry, name, params, embed_dim)
            if why is not None:
                row["reason"] = why
            elif args.probe_only:
                row["reason"] = f"(probe only: would train with {params or 'defaults'})"
            else:
                row.update(measure(args, name, params))
                if "reason" not in row:
                    row["reason"] = "; ".join(
                        x for x in (recipe_note(registry, name), row.get("speed_error")) if x
                    )
        if "reason" in row and "wall_s" not in row and "x_ref" not in row:
            print(f"[loss_zoo] {name}: skipped — {row['reason']}", flush=True)
        rows.append(row)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=1))
    print()
    if args.part != "quality":
        print(
            f"Speed: ms per training step (median over {args.rounds} rounds × {args.round_steps} steps); "
            f"step time × {args.reference}: median of per-round ratios (min–max); "
            "load: 1-min average before→after.\n"
        )
    print(table(rows, args.reference))


def measure(args: argparse.Namespace, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``--part`` for one trainable loss: quality (train + evaluate) and/or speed."""
    row: dict[str, Any] = {}
    if args.part != "speed":
        print(f"[loss_zoo] {name} {params or ''}: training {args.steps} steps …", flush=True)
        row.update(run_one(args, name, params))
    if args.part != "quality" and "reason" not in row:
        print(f"[loss_zoo] {name}: step time against {args.reference} …", flush=True)
        row.update(run_speed(args, name, params))
    return row


if __name__ == "__main__":
    main()
