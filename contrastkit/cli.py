"""The ``contrastkit`` command line: a thin layer over the Python API.

```text
contrastkit demo [shapes|fashion|emoji|pretrained] [--out runs] [--threads N]
contrastkit wise runs/NAME --alphas 0,0.25,0.5,0.75,1 [--reference fashion_mnist:test]
contrastkit train --config configs/shapes-clip.yaml [--set train.steps=100 ...] [--name NAME]
contrastkit train --resume runs/NAME [--set train.steps=M]
contrastkit eval runs/NAME [--splits test,unseen] [--tasks zeroshot,retrieval]
contrastkit eval runs/NAME --data imagefolder --data-param root=photos [--classes a,b] [--templates FILE]
contrastkit data shards pairs.csv --out shards/ [--shard-size 1000] [--image-size 256]
contrastkit data inspect photos/ [--out inspect-photos] [--samples 16]
contrastkit data export shapes:train --out data/shapes-csv [--split train]
contrastkit curate data/pairs.csv --filter clip_score [--param keep=0.3] --model runs/NAME --out DIR
contrastkit ttm runs/NAME --out DIR [--rounds 10] [--epochs 30]
contrastkit continual runs/NAME [RUN ...] [--out DIR] [--wise 0.5] [--classes seen|task|all]
contrastkit prototypes runs/NAME --k 64 --out protos.pt [--split train] [--max-images N]
contrastkit export runs/NAME --format hf|open_clip|safetensors --out DIR
contrastkit plan configs/shapes-clip.yaml --memory 16GiB
contrastkit study configs/study-shapes-clip-vs-siglip.yaml [--jobs N] [--report-only]
contrastkit study configs/study-shapes-clip-vs-siglip.yaml --executor ray [--address HOST:PORT]
contrastkit list [tasks|losses|towers|datasets|sources] [--verbose]
contrastkit explain NAME
contrastkit report runs/NAME|runs/STUDY [--compare runs/OTHER] --out DIR [--evaluate]
```
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from contrastkit.commands import (
    KINDS,
    TasksHelp,
    add_continual_parser,
    add_curate_parser,
    add_executor_arguments,
    add_prototypes_parser,
    add_ttm_parser,
    curate,
    explain,
    listing,
    plan,
    prototypes,
    ray_options,
    ttm,
)
from contrastkit.core.progress import progress_default

if TYPE_CHECKING:
    from contrastkit.train import RunConfig

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contrastkit", description="Contrastive and multimodal representation learning."
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo",
        help="shapes (default): CLIP on built-in Shapes; fashion: LiT on Fashion-MNIST with locked MiniLM; "
        "emoji: frozen EfficientNet-Lite0 + MiniLM with trained heads; pretrained: a Hugging Face CLIP "
        "folder fine-tuned on pairs from a CSV, exported, WiSE-FT",
    )
    d.add_argument(
        "which",
        nargs="?",
        default="shapes",
        choices=["shapes", "fashion", "emoji", "pretrained"],
        help="which demo",
    )
    d.add_argument("--out", default="runs", help="parent folder of the run (default: runs)")
    d.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    d.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    w = sub.add_parser("wise", help="WiSE-FT: zero-shot accuracy of interpolated initial/fine-tuned weights")
    w.add_argument("run", metavar="RUN", help="run folder")
    w.add_argument(
        "--alphas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", help="comma-separated α in [0, 1]"
    )
    w.add_argument(
        "--reference", metavar="DATA:SPLIT", help="also evaluate a reference data set, e.g. digits:test"
    )
    w.add_argument("--n", type=int, default=None, help="evaluate at most N images per split")
    w.add_argument(
        "--recalibrate",
        type=int,
        default=512,
        help="training images per endpoint for re-estimating batch-norm statistics (0: off)",
    )

    t = sub.add_parser("train", help="train from a config file, or resume a run")
    g = t.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="YAML run config")
    g.add_argument(
        "--resume",
        metavar="RUN",
        help="run folder to continue from its newest checkpoint; with --set train.steps=M: train it "
        "further, to M steps in all",
    )
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=100 (repeatable)",
    )
    t.add_argument("--name", help="run name (default: the config's name)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--eval", action="store_true", help="evaluate after training")

    e = sub.add_parser(
        "eval", help="evaluate a run, or a local Hugging Face CLIP/SigLIP or open_clip folder", add_help=False
    )
    e.add_argument("-h", "--help", action=TasksHelp)
    e.add_argument(
        "run", metavar="RUN_OR_MODEL", help="run folder, Hugging Face CLIP/SigLIP folder or open_clip folder"
    )
    e.add_argument(
        "--splits", "--split", dest="splits", help="comma-separated splits (default: the run's, else test)"
    )
    e.add_argument(
        "--tasks",
        default="zeroshot,retrieval",
        help="comma-separated tasks (default: zeroshot,retrieval; all listed below)",
    )
    e.add_argument("--data", help="data set to evaluate on (default: the run's; shapes for a model)")
    e.add_argument(
        "--data-param", action="append", default=[], metavar="KEY=VALUE", help="data set parameter: n=500"
    )
    e.add_argument(
        "--classes", help="class names in label order: a text file, one per line, or a comma list: cat,dog"
    )
    e.add_argument(
        "--templates",
        help="prompt templates with {}: a text file, one per line, or a |-separated list: "
        "'a photo of a {}.|a drawing of a {}.'",
    )
    e.add_argument("--class-task", help="class task the --classes file names (default: the first)")
    e.add_argument(
        "--train-split",
        help="split probes fit on (default: the data set's training split; a file source given with "
        "--data has none: then a seeded half of each evaluated split, with a warning)",
    )
    e.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="TASK.KEY=VALUE",
        help="a task option, read as YAML (repeatable): errors.compare=runs/OTHER, instruct.exclude=own",
    )
    e.add_argument("--out", help="output folder (default: the run folder; eval/NAME for a model)")
    e.add_argument("--batch-size", type=int, help="encoder batch size (default: 256 run, 64 model)")

    ex_ = sub.add_parser(
        "export", help="write a run's model for transformers (hf), open_clip, or as safetensors"
    )
    ex_.add_argument("run", metavar="RUN", help="run folder")
    ex_.add_argument(
        "--format", required=True, choices=["hf", "open_clip", "safetensors"], help="output format"
    )
    ex_.add_argument("--out", required=True, help="output folder")

    da = sub.add_parser("data", help="convert a data source (WebDataset shards, CSV + files), or inspect it")
    dsub = da.add_subparsers(dest="data_command", required=True)
    src_help = (
        "a .csv/.tsv/.parquet file, an ImageFolder directory, a Hugging Face save_to_disk folder, "
        "a built-in set NAME:SPLIT (shapes:train){}"
    )
    sh = dsub.add_parser("shards", help="write a source as WebDataset tar shards with a manifest")
    sh.add_argument("src", metavar="SRC", help=src_help.format(""))
    sh.add_argument("--out", required=True, help="output folder of the shards")
    sh.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: 1000)")
    sh.add_argument("--image-size", type=int, help="resize the shorter side to this (default: copy bytes)")
    sh.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    ex = dsub.add_parser("export", help="write a source as image files + pairs.csv (the csv source's layout)")
    ex.add_argument("src", metavar="SRC", help=src_help.format(""))
    ex.add_argument("--out", required=True, help="output folder (pairs.csv + images/; splits append)")
    ins = dsub.add_parser("inspect", help="decode every image; count problems; histograms and samples")
    ins.add_argument(
        "src", metavar="SRC", help=src_help.format(", or shards: a .tar, a {a..b} pattern, a folder")
    )
    ins.add_argument("--out", help="output folder (default: ./inspect-NAME)")
    ins.add_argument("--samples", type=int, default=16, help="images in samples.png (default: 16)")
    for sp in (sh, ex, ins):
        sp.add_argument("--split", default="train", help="split to read (default: train)")
        sp.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="source parameter, value read as YAML: caption_columns=[a,b] (repeatable)",
        )
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    cu = add_curate_parser(sub, src_help.format(""))
    tt = add_ttm_parser(sub)
    add_continual_parser(sub)
    add_prototypes_parser(sub)

    pl = sub.add_parser("plan", help="largest contrastive batch that fits a memory budget")
    pl.add_argument("config", help="YAML run config")
    pl.add_argument("--memory", required=True, help="per-device memory budget, e.g. 16GiB")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pl.add_argument("--chunk", type=int, default=256, help="gradient-cache chunk to plan with")
    pl.add_argument("--tile", type=int, default=2048, help="loss tile size to plan with")

    st = sub.add_parser("study", help="many seeds x settings, compared with the Multi-Bootstrap")
    st.add_argument("file", help="study YAML")
    st.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    st.add_argument(
        "--only", action="append", default=[], metavar="RUN", help="run just this run (repeatable)"
    )
    st.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    add_executor_arguments(st)

    for sp in (e, w, cu, pl, st, tt):  # long phases show progress bars (on stderr) unless asked not to
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    ls = sub.add_parser("list", help="list registered components")
    ls.add_argument("what", nargs="?", choices=list(KINDS), help="one kind (default: all)")
    ls.add_argument("-v", "--verbose", action="store_true", help="spec ids, descriptions, parameters")
    xp = sub.add_parser("explain", help="the full description of a registered component")
    xp.add_argument("name", metavar="NAME", help="a loss, tower, evaluation task, data set or source")

    rp = sub.add_parser("report", help="a static HTML page of a run, two runs or a study (docs/report.md)")
    rp.add_argument("path", metavar="RUN_OR_STUDY", help="run folder or study folder")
    rp.add_argument("--compare", metavar="RUN2", help="a second run: metrics side by side, curves overlaid")
    rp.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created; index.html + assets/)"
    )
    rp.add_argument(
        "--evaluate", action="store_true", help="first evaluate shown runs that have no evaluation yet"
    )
    return p


def _train(args: argparse.Namespace) -> None:
    from contrastkit.core import apply_overrides, from_dict, load_yaml
    from contrastkit.evaluation import evaluate_run, format_table
    from contrastkit.train import RunConfig, resume, train

    if args.resume:
        result = resume(args.resume, steps=_resume_steps(args.overrides, args.name))
    else:
        data = apply_overrides(load_yaml(args.config), args.overrides)
        if args.name:
            data["name"] = args.name
        cfg = from_dict(RunConfig, data)
        _check_machine(cfg)
        result = train(cfg, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    if result.already_finished:  # not "loss nan": say why nothing trained, and how to go on
        print(
            f"run {result.run_dir} is already finished at step {result.step} (last loss "
            f"{result.last_loss:.4f}); to train it further, resume it with a larger total: "
            f"contrastkit train --resume {result.run_dir} --set train.steps=M (M > {result.step})"
        )
    else:
        print(
            f"trained {result.run_dir}: step {result.step}, loss {result.last_loss:.4f}, "
            f"{result.skipped} skipped steps, {result.seconds:.0f} s"
        )
    if args.eval:
        print(format_table(evaluate_run(result.run_dir)["metrics"]))


def _resume_steps(overrides: Sequence[str], name: str | None) -> int | None:
    """The new total of ``--resume … --set train.steps=M`` (extending a run), else ``None``: a
    resume is exact, so no other setting may change."""
    from contrastkit.core.config import parse_yaml
    from contrastkit.core.errors import ConfigError

    keys = [item.partition("=")[0].strip() for item in overrides]
    if name or any(k != "train.steps" for k in keys) or len(keys) > 1:
        raise ConfigError(
            "--resume continues a run exactly: --name and --set cannot change it, except one "
            "--set train.steps=M (a larger total, to train it further)"
        )
    if not overrides:
        return None
    steps = parse_yaml(overrides[0].partition("=")[2], "--set train.steps")
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ConfigError(f"--set train.steps expects an integer, got {steps!r}")
    return steps


def _check_machine(cfg: RunConfig) -> None:
    """Refuse, before a run folder is made, what this machine cannot do: more threads than cores,
    a device it lacks, an ``out_dir`` that cannot be written."""
    from contrastkit.core.io import check_writable_dir
    from contrastkit.core.runtime import check_threads, resolve_device

    check_threads(cfg.train.threads, "train.threads")
    resolve_device(cfg.train.device, "train.device")
    check_writable_dir(cfg.out_dir, "out_dir")


def _params(items: Sequence[str], flag: str) -> dict[str, object]:
    """``KEY=VALUE`` items as a dict, values read as YAML (``[a, b]`` → a list, ``5`` → an int)
    with the config loader's limits (:func:`contrastkit.core.config.parse_yaml`)."""
    from contrastkit.core.config import parse_yaml
    from contrastkit.core.errors import ConfigError

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            params[key] = parse_yaml(value, f"{flag} {key}")
        except ConfigError as err:
            bad = "not valid YAML" in str(err) and "{" in value
            hint = ' (quote list items that contain braces: ["a {}", "b {}"])' if bad else ""
            raise ConfigError(f"{err}{hint}") from None
    return params


def _task_options(items: Sequence[str], tasks: Sequence[str]) -> dict[str, dict[str, object]]:
    """``--option TASK.KEY=VALUE`` items as ``{task: {key: value}}`` (values as in :func:`_params`);
    a task that is not evaluated is an error (the option would be silently unused)."""
    from contrastkit.core.errors import ConfigError

    out: dict[str, dict[str, object]] = {}
    for key, value in _params(items, "--option").items():
        task, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(
                f"--option expects TASK.KEY=VALUE (e.g. errors.compare=runs/OTHER), got {key!r}"
            )
        if task not in tasks:
            raise ConfigError(f"--option {key}: task {task!r} is not in --tasks {list(tasks)}")
        out.setdefault(task, {})[name] = value
    return out


def _prompts(value: str | None, sep: str) -> str | list[str] | None:
    """A prompt option: an existing file's path, else a ``sep``-separated list (a template list: any
    value with ``{}``); a value with neither is taken as a file name (missing → a clear error)."""
    if value is None or os.path.isfile(os.path.expanduser(value)):
        return value
    if sep in value or (sep == "|" and "{}" in value):
        return [v.strip() for v in value.split(sep)]
    return value


def _eval(args: argparse.Namespace) -> None:
    from contrastkit.core.errors import ConfigError
    from contrastkit.evaluation.report import evaluate_model, format_table

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    params = _params(args.data_param, "--data-param")
    with progress_default(not args.no_progress):
        report = evaluate_model(
            args.run,
            out_dir=args.out,
            data=args.data,
            splits=args.splits.split(",") if args.splits else None,
            tasks=args.tasks.split(","),
            data_params=params or None,
            classes=_prompts(args.classes, ","),
            templates=_prompts(args.templates, "|"),
            class_task=args.class_task,
            train_split=args.train_split,
            batch_size=args.batch_size,
            options=_task_options(args.option, args.tasks.split(",")) or None,
        )
    print(format_table(report["metrics"]))
    print(f"wrote {report['outputs_dir']}/: " + ", ".join(report["outputs"]))


def _data(args: argparse.Namespace) -> None:
    from contrastkit.core.errors import ConfigError
    from contrastkit.data.inspect import format_inspect, inspect_source, resolve_source, source_label
    from contrastkit.data.shards import ShardSource

    source = resolve_source(args.src, args.split, _params(args.param, "--param"))
    progress = not args.no_progress
    if args.data_command == "inspect":
        out = args.out or f"inspect-{source_label(args.src)}"
        report = inspect_source(source, out, args.samples, progress)
        print(format_inspect(report))
        print(f"wrote {out}/: inspect.json, histograms.png, samples.png")
        return
    from contrastkit.data.convert import write_csv, write_shards
    from contrastkit.data.inspect import shards_summary

    if isinstance(source, ShardSource):
        raise ConfigError(f"{args.src} is already WebDataset shards")
    if args.data_command == "export":
        path = write_csv(source, args.out, args.split, progress)
        print(f"wrote {len(source)} {args.split} rows to {path} (images under {path.parent / 'images'})")
        return
    manifest = write_shards(source, args.out, args.shard_size, args.image_size, args.prefix, progress)
    print(shards_summary(manifest, args.out))


def _demo(args: argparse.Namespace) -> None:
    from contrastkit.core.runtime import check_threads

    check_threads(args.threads, "--threads")
    progress = not args.no_progress
    if args.which == "fashion":
        from contrastkit.demo.fashion import run_fashion_demo

        run_fashion_demo(args.out, threads=args.threads, steps=args.steps, progress=progress)
    elif args.which == "pretrained":
        from contrastkit.demo.pretrained import pretrained_demo

        pretrained_demo(args.out, threads=args.threads, progress=progress)
    elif args.which == "emoji":
        from contrastkit.demo.emoji import run_emoji_demo

        with progress_default(progress):  # feature caches, head trainings
            run_emoji_demo(args.out, threads=args.threads)
    else:
        from contrastkit.demo import run_demo

        run_demo(args.out, threads=args.threads, steps=args.steps, progress=progress)


def _wise(args: argparse.Namespace) -> None:
    from contrastkit.core.errors import InputError
    from contrastkit.evaluation.wise import format_wise, wise_sweep

    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        raise InputError(f"--alphas must be comma-separated numbers, got {args.alphas!r}") from None
    reference = None
    if args.reference:
        name, sep, split = args.reference.partition(":")
        reference = (name, split if sep else "test")
    with progress_default(not args.no_progress):
        rows = wise_sweep(args.run, alphas, reference, args.n, args.recalibrate)
    print(format_wise(rows))
    print(f"wrote {args.run}/wise.json and {args.run}/wise.png")


def main(argv: Sequence[str] | None = None) -> int:
    from contrastkit.core.errors import ContrastkitError

    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            _demo(args)
        elif args.command == "wise":
            _wise(args)
        elif args.command == "train":
            _train(args)
        elif args.command == "eval":
            _eval(args)
        elif args.command == "data":
            _data(args)
        elif args.command == "export":
            from contrastkit.train.export import export_run

            print(f"wrote {export_run(args.run, args.format, args.out)} ({args.format})")
        elif args.command == "continual":
            from contrastkit.commands import continual

            with progress_default(not args.no_progress):
                continual(args)
        elif args.command == "prototypes":
            prototypes(args)
        elif args.command == "ttm":
            with progress_default(not args.no_progress):
                ttm(args)
        elif args.command == "curate":
            steps = [(name, _params(items, f"--filter {name} --param")) for name, items in args.filters]
            curate(args, steps, _params(args.data_param, "--data-param"))
        elif args.command == "plan":
            with progress_default(not args.no_progress):
                plan(args)
        elif args.command == "study":
            from contrastkit.studies.study import run_study

            with progress_default(not args.no_progress):
                run_study(args.file, args.jobs, args.only, args.report_only, args.executor, ray_options(args))
        elif args.command == "report":
            from contrastkit.report import build_report

            print(f"wrote {build_report(args.path, args.out, args.compare, args.evaluate)}")
        elif args.command == "explain":
            print(explain(args.name))
        else:
            print(listing(args.what, args.verbose))
    except ContrastkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a reader that stopped early (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
