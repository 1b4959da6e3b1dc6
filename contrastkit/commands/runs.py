"""Command handlers that work on a trained run: ``ttm`` (test-time matching rounds), ``continual``
(accuracy matrix and forgetting of continual runs) and ``prototypes`` (MLCD's k-means centres of a
run's image embeddings). Each handler imports its machinery when called, so the command line
starts fast.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = [
    "add_continual_parser",
    "add_prototypes_parser",
    "add_ttm_parser",
    "continual",
    "prototypes",
    "ttm",
]


def add_ttm_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``ttm`` sub-command's parser (test-time matching rounds on a run), added to ``sub``."""
    tt = sub.add_parser(
        "ttm", help="test-time matching: self-training rounds on the Shapes swap groups (winoground set)"
    )
    tt.add_argument("run", metavar="RUN", help="run folder")
    tt.add_argument("--out", required=True, help="output folder: ttm.json, ttm.png, the adapted run")
    tt.add_argument(
        "--data",
        default="shapes-swaps",
        choices=["shapes-swaps"],
        help="the group set: shapes-swaps, the 2x2 groups of the winoground task (default)",
    )
    tt.add_argument("--kinds", default="attribute,relation", help="swap kinds (default: both)")
    tt.add_argument("--n", type=int, default=200, help="groups per kind (default: 200, as winoground)")
    tt.add_argument("--data-seed", type=int, default=0, help="seed of the groups (default: 0)")
    tt.add_argument("--rounds", type=int, default=10, help="rounds R (default: 10)")
    tt.add_argument("--epochs", type=int, default=30, help="epochs per round (default: 30)")
    tt.add_argument("--batch-size", type=int, default=50, help="groups per batch (default: 50)")
    tt.add_argument("--lr", type=float, default=1e-5, help="peak learning rate of round 0 (default: 1e-5)")
    tt.add_argument("--seed", type=int, default=42, help="shuffling seed (default: 42)")
    tt.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    tt.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    tt.add_argument(
        "--norm-eval", action="store_true", help="keep batch-norm layers in eval mode while fine-tuning"
    )
    return tt


def ttm(args: argparse.Namespace) -> None:
    """``contrastkit ttm RUN --out DIR``: R-TTM rounds on the run; prints the table of rounds."""
    from contrastkit.core.runtime import check_threads, set_threads
    from contrastkit.evaluation.ttm import TTMConfig, ttm_on_run

    check_threads(args.threads, "--threads")
    set_threads(args.threads)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    cfg = TTMConfig(
        rounds=args.rounds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        n=args.n,
        kinds=kinds,
        data_seed=args.data_seed,
        device=args.device,
        norm_eval=args.norm_eval,
    )
    report = ttm_on_run(args.run, args.out, cfg)
    key = "all" if len(kinds) > 1 else kinds[0]
    print(f"{'round':>5}  {'tau':>5}  {'selected':>8}  {'pseudo ok':>9}  {'group':>6}  {'match':>6}")
    for r in report["rounds"]:
        tau = f"{r['threshold']:.2f}" if "threshold" in r else "-"
        sel = f"{r['selected']:>8}  {r['pseudo_correct']:>9}" if "selected" in r else f"{'-':>8}  {'-':>9}"
        group, match = r[f"winoground/{key}/group"], r[f"winoground/{key}/group_match"]
        print(f"{r['round'] + 1:>5}  {tau:>5}  {sel}  {group:>6.3f}  {match:>6.3f}")
    print(f"wrote {args.out}/: ttm.json, ttm.png, config.yaml, assets/, checkpoints/ (the adapted run)")


def add_continual_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``continual`` sub-command's parser (forgetting of continual runs), added to ``sub``."""
    co = sub.add_parser(
        "continual",
        help="accuracy matrix, average accuracy and forgetting of continual runs; WiSE-FT of the final model",
    )
    co.add_argument(
        "runs", nargs="+", metavar="RUN", help="continual run folders (seeds of a setting end in -s<seed>)"
    )
    co.add_argument("--out", help="output folder (default: the run folder, for one run)")
    co.add_argument("--split", default="test", help="evaluation split (default: test)")
    co.add_argument(
        "--classes",
        default="seen",
        choices=["seen", "task", "all"],
        help="predict among the classes seen so far (default), the stage's own, or all",
    )
    co.add_argument("--wise", default="0.5", help="comma-separated WiSE-FT α of the final model ('' = none)")
    co.add_argument(
        "--wise-from",
        default="initial",
        choices=["initial", "first_stage"],
        help="θ₀ of WiSE-FT: the run's initial weights (default) or the first stage's final model",
    )
    co.add_argument("--n", type=int, default=None, help="evaluate a seeded subset of N images")
    co.add_argument(
        "--recalibrate", type=int, default=512, help="images for batch-norm statistics of WiSE-FT (0: off)"
    )
    co.add_argument("--no-progress", action="store_true", help="no progress bars")
    return co


def continual(args: argparse.Namespace) -> None:
    """``contrastkit continual RUN... [--out DIR]``: writes continual.json/.md/.png, prints the table."""
    from contrastkit.core.errors import InputError
    from contrastkit.evaluation.continual_report import continual_report, format_continual

    try:
        alphas = [float(a) for a in args.wise.split(",") if a.strip()]
    except ValueError:
        raise InputError(f"--wise must be comma-separated numbers, got {args.wise!r}") from None
    if args.out is None and len(args.runs) > 1:
        raise InputError("several runs: give --out (the folder of the combined report)")
    out = args.out or args.runs[0]
    report = continual_report(
        args.runs, out, args.split, args.classes, alphas, args.n, args.recalibrate, args.wise_from
    )
    print(format_continual(report))
    print(f"wrote {out}/: continual.json, continual.md, continual.png")


def add_prototypes_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``prototypes`` sub-command's parser (MLCD's k-means centres of a run), added to ``sub``."""
    pr = sub.add_parser(
        "prototypes",
        help="k-means centres of a run's image embeddings, for loss mlcd's prototypes_file (docs/losses.md)",
    )
    pr.add_argument("run", metavar="RUN", help="a trained run folder (its newest checkpoint embeds)")
    pr.add_argument("--k", type=int, required=True, help="number of centres K")
    pr.add_argument("--out", required=True, help="file to write the [K, d] centres to (e.g. protos.pt)")
    pr.add_argument("--split", default=None, help="data split to embed (default: the run's training split)")
    pr.add_argument("--max-images", type=int, default=None, help="cluster only the split's first N images")
    pr.add_argument("--iters", type=int, default=20, help="Lloyd iterations (default: 20)")
    pr.add_argument("--seed", type=int, default=0, help="k-means initialisation seed (default: 0)")
    return pr


def prototypes(args: argparse.Namespace) -> None:
    """``contrastkit prototypes RUN --k K --out FILE``: fits and writes the centres, prints a summary."""
    from contrastkit.core.errors import InputError
    from contrastkit.evaluation.prototypes import fit_run_prototypes

    if args.k < 1 or (args.max_images is not None and args.max_images < 1) or args.iters < 1:
        raise InputError(
            f"--k, --max-images and --iters must be >= 1, got {args.k}, {args.max_images}, {args.iters}"
        )
    centres = fit_run_prototypes(
        args.run,
        args.out,
        args.k,
        split=args.split,
        max_images=args.max_images,
        iters=args.iters,
        seed=args.seed,
    )
    k, d = centres.shape
    print(f"wrote {args.out}: {k} centres of width {d}")
    print(f"use them with: loss: {{name: mlcd, params: {{prototypes_file: {args.out}}}}}")
