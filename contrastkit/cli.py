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
    build_parser,
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
    return build_parser()


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
