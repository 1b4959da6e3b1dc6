"""Command handlers about components and jobs: ``list``, ``explain``, the task list of
``eval --help``, ``plan``, ``curate`` and the executor options of ``study``.

The describing is :mod:`contrastkit.core.catalog`'s; this module only knows which registries exist
(:data:`KINDS`) and imports each one when it is asked for, so the command line starts fast.
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contrastkit.core.catalog import Component
    from contrastkit.core.registry import Registry

__all__ = [
    "KINDS",
    "FilterSteps",
    "TasksHelp",
    "add_curate_parser",
    "add_executor_arguments",
    "curate",
    "explain",
    "listing",
    "plan",
    "ray_options",
    "registry",
    "tasks_epilog",
]

KINDS: dict[str, tuple[str, ...]] = {
    "tasks": ("ctx",),  # kind → parameters the caller fills in at run time (not configurable)
    "losses": (),
    "towers": (),
    "datasets": ("split",),
    "sources": ("split",),
    "samplers": ("context",),
    "filters": (),
}
"""The registries ``contrastkit list`` shows, in order."""


def registry(kind: str) -> Registry[Any]:
    """The registry of ``kind`` (a key of :data:`KINDS`), imported now."""
    if kind == "tasks":
        from contrastkit.evaluation import EVAL_TASKS as reg
    elif kind == "losses":
        from contrastkit.losses import LOSSES as reg
    elif kind == "towers":
        from contrastkit.models import TOWERS as reg
    elif kind == "datasets":
        from contrastkit.data import DATASETS as reg
    elif kind == "sources":
        from contrastkit.data import SOURCES as reg
    elif kind == "samplers":
        from contrastkit.data import SAMPLERS as reg
    elif kind == "filters":
        from contrastkit.curation import FILTERS as reg
    else:
        from contrastkit.core.errors import UnknownNameError

        raise UnknownNameError(f"unknown component kind {kind!r}; available: {', '.join(KINDS)}")
    return reg


def _components(kind: str) -> list[Component]:
    from contrastkit.core.catalog import describe

    reg = registry(kind)
    return [describe(reg, name, KINDS[kind]) for name in reg.names()]


def listing(what: str | None, verbose: bool = False) -> str:
    """``contrastkit list [KIND] [--verbose]``: the names of ``what`` one per line (``verbose``: with
    spec ids, description and typed parameters); no ``what``: every kind under a heading."""
    from contrastkit.core.catalog import format_listing

    if what is not None:
        return format_listing(_components(what), verbose)
    blocks = []
    for kind in KINDS:
        body = format_listing(_components(kind), verbose)
        blocks.append(f"{kind}:\n" + textwrap.indent(body, "  "))
    return "\n\n".join(blocks)


def explain(name: str) -> str:
    """``contrastkit explain NAME``: the card of every registered component called ``name``; an
    unknown name raises :class:`UnknownNameError` with the closest names."""
    from contrastkit.core.catalog import close_matches, describe, format_card
    from contrastkit.core.errors import UnknownNameError

    regs = {kind: registry(kind) for kind in KINDS}
    for key in dict.fromkeys((name, name.lower().replace("-", "_"))):  # InfoNCE, fashion-mnist
        cards = [format_card(describe(reg, key, KINDS[k])) for k, reg in regs.items() if key in reg]
        if cards:
            return f"\n\n{'-' * 80}\n\n".join(cards)
    known = {n: kind for kind, reg in regs.items() for n in reg.names()}
    near = close_matches(name, known)
    hint = "did you mean: " + ", ".join(f"{n} ({known[n]})" for n in near) + "? " if near else ""
    raise UnknownNameError(f"no component named {name!r}; {hint}`contrastkit list` shows every name")


def tasks_epilog() -> str:
    """The registered evaluation tasks, one per line with its description (``eval --help``)."""
    from contrastkit.core.catalog import summary

    width = max(shutil.get_terminal_size().columns - 2, 60)  # what argparse wraps its help to
    lines = ["evaluation tasks (--tasks, comma-separated; details: contrastkit explain TASK):"]
    tasks = _components("tasks")
    pad = max(len(c.name) for c in tasks) + 2  # the longest name still leaves a gap before its text
    for c in tasks:
        head = f"  {c.name:<{pad}}"
        text = summary(c.doc, width=1000)
        lines.append(textwrap.fill(text, width, initial_indent=head, subsequent_indent=" " * len(head)))
    return "\n".join(lines)


class TasksHelp(argparse.Action):
    """``-h/--help`` of ``contrastkit eval``: the usual help followed by :func:`tasks_epilog`
    (the tasks are imported only when the help is asked for)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show this help message and the evaluation tasks, and exit")
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.epilog = tasks_epilog()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.print_help()
        parser.exit()


def plan(args: argparse.Namespace) -> None:
    """``contrastkit plan CONFIG --memory 16GiB``: measure the model's activation memory per sample and
    print the largest batch that fits the budget plainly, with loss tiling, and with gradient caching."""
    import torch

    from contrastkit.core import apply_overrides, from_dict, load_yaml, set_threads
    from contrastkit.core.progress import progress_enabled
    from contrastkit.data import load_split
    from contrastkit.models import build_model
    from contrastkit.scale.planner import measure_sample_memory, parse_bytes, plan_batch
    from contrastkit.train import RunConfig

    cfg = from_dict(RunConfig, apply_overrides(load_yaml(args.config), args.overrides))
    budget = parse_bytes(args.memory)
    set_threads(cfg.train.threads)
    pairs = load_split(cfg.data, cfg.data.train_split, progress_enabled())  # generating it can take minutes
    model = build_model(cfg.model, texts=pairs.flat_captions()[0])
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")

    def make_batch(n: int) -> dict[str, torch.Tensor]:
        idx = [i % len(pairs) for i in range(n)]
        return {
            "image": pairs.images[idx].to(device),
            "text": model.tokenize([pairs.captions[i][0] for i in idx]).to(device),
        }

    per_sample = measure_sample_memory(model, make_batch, device)
    n_params = sum(p.numel() for p in model.parameters())
    p = plan_batch(budget, n_params, per_sample, cfg.loss.name, cfg.model.embed_dim, args.tile, args.chunk)
    gib = 2**30
    print(
        f"model: {n_params / 1e6:.2f} M parameters; fixed {p.fixed / gib:.3f} GiB (weights, grads, AdamW); "
        f"activations {per_sample / 2**20:.2f} MiB per sample (measured on {device.type})"
    )
    print(
        f"budget {p.budget / gib:.1f} GiB per device, loss {cfg.loss.name}, embed dim {cfg.model.embed_dim}"
    )
    print(f"{'method':<40} {'largest batch':>14}")
    print(f"{'plain (dense loss)':<40} {p.plain:>14,}")
    print(f"{'scale.tile_size=' + str(p.tile):<40} {p.tiled:>14,}")
    print(f"{f'scale.tile_size={p.tile}, chunk_size={p.chunk}':<40} {p.cached:>14,}")


class FilterSteps(argparse.Action):
    """``--filter NAME`` starts a filter step, ``--param KEY=VALUE`` adds a parameter to the step
    before it: ``--filter complexity --param min_complexity=4 --filter clip_score --param keep=0.5``
    (the namespace gets ``[(name, ["KEY=VALUE", ...]), ...]``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        steps = list(getattr(namespace, self.dest, None) or [])
        if option_string == "--filter":
            steps.append((values, []))
        elif not steps:
            parser.error(f"--param {values} comes before any --filter: it sets the --filter before it")
        else:
            steps[-1][1].append(values)
        setattr(namespace, self.dest, steps)


def add_curate_parser(sub: Any, src_help: str) -> argparse.ArgumentParser:
    """The ``curate`` sub-command's parser, added to ``sub`` (the CLI's sub-parsers)."""
    cu = sub.add_parser(
        "curate", help="filter a data source (clip_score, near_duplicates, complexity) into a csv source"
    )
    cu.add_argument("src", metavar="SRC", help=src_help)
    cu.add_argument(
        "--filter",
        dest="filters",
        action=FilterSteps,
        required=True,
        metavar="NAME",
        help="a filter (contrastkit list filters); repeat to run several in order",
    )
    cu.add_argument(
        "--param",
        dest="filters",
        action=FilterSteps,
        metavar="KEY=VALUE",
        help="parameter of the --filter before it, value read as YAML: keep=0.3 (repeatable)",
    )
    cu.add_argument(
        "--out", required=True, help="output folder: pairs.csv, removed.csv, curation.json/.md, plots"
    )
    cu.add_argument(
        "--model", help="run folder or Hugging Face CLIP/SigLIP folder (clip_score, near_duplicates)"
    )
    cu.add_argument("--split", default="train", help="split to read (default: train)")
    cu.add_argument("--data-param", action="append", default=[], metavar="KEY=VALUE", help="source parameter")
    cu.add_argument("--batch-size", type=int, help="encoder batch size (default: 256 run, 64 model)")
    cu.add_argument("--device", default="auto", help="model device: auto (default), cpu, cuda")
    cu.add_argument("--copy-images", action="store_true", help="copy image files into DIR/images")
    return cu


def curate(
    args: argparse.Namespace, steps: Sequence[tuple[str, dict[str, Any]]], data_params: dict[str, Any]
) -> None:
    """``contrastkit curate SRC --filter NAME [--param KEY=VALUE ...] --out DIR``: run the filters
    (``steps``: names with their parsed parameters) in order, write the kept rows as a csv source
    with a report, and print a summary."""
    from contrastkit.curation import FilterStep
    from contrastkit.curation import curate as run_curation
    from contrastkit.curation.output import format_summary

    report = run_curation(
        args.src,
        [FilterStep(name, params) for name, params in steps],
        args.out,
        model=args.model,
        split=args.split,
        data_params=data_params or None,
        batch_size=args.batch_size,
        device=args.device,
        copy_images=args.copy_images,
        progress=not args.no_progress,
    )
    print(format_summary(report))
    print(f"wrote {args.out}/: " + ", ".join(report["outputs"]))


def add_executor_arguments(st: argparse.ArgumentParser) -> None:
    """``study``'s ``--executor`` and Ray options (each overrides the study file's ``executor`` /
    ``ray`` block; :class:`contrastkit.studies.config.RayConfig` validates them)."""
    st.add_argument(
        "--executor",
        choices=["pool", "ray"],
        help="where runs train: pool (local processes, the default) or ray (one Ray task per run)",
    )
    st.add_argument("--address", metavar="HOST:PORT", help="Ray head node to use (default: a local cluster)")
    st.add_argument(
        "--ray-cpus-per-run", type=float, metavar="N", help="CPUs (torch threads) per run (train.threads)"
    )
    st.add_argument("--ray-gpus-per-run", type=float, metavar="N", help="GPUs per run (default 0)")
    st.add_argument("--ray-memory-per-run", metavar="SIZE", help="memory per run, e.g. 4GiB (default: none)")
    st.add_argument("--ray-max-retries", type=int, metavar="N", help="reruns of a run whose worker died (3)")


def ray_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ray`` keys given on the ``study`` command line (``None``: not given)."""
    return {
        "address": args.address,
        "cpus_per_run": args.ray_cpus_per_run,
        "gpus_per_run": args.ray_gpus_per_run,
        "memory_per_run": args.ray_memory_per_run,
        "max_retries": args.ray_max_retries,
    }
