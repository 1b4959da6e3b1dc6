"""The argument parser of the ``contrastkit`` command line (:mod:`contrastkit.cli` runs the
handlers): :func:`build_parser` assembles one small function per sub-command, so each command's
options are read in one place. Nothing here imports the library's heavy parts.
"""

from __future__ import annotations

import argparse
from typing import Any

from contrastkit.commands.catalog import KINDS, TasksHelp, add_curate_parser, add_executor_arguments
from contrastkit.commands.runs import add_continual_parser, add_prototypes_parser, add_ttm_parser

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The whole ``contrastkit`` parser: one sub-command per function of this module or of
    :mod:`~contrastkit.commands.catalog` / :mod:`~contrastkit.commands.runs`."""
    p = argparse.ArgumentParser(
        prog="contrastkit", description="Contrastive and multimodal representation learning."
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    w = _add_wise(sub)
    _add_train(sub)
    e = _add_eval(sub)
    _add_export(sub)
    src_help = _add_data(sub)
    cu = add_curate_parser(sub, src_help.format(""))
    tt = add_ttm_parser(sub)
    add_continual_parser(sub)
    add_prototypes_parser(sub)
    pl = _add_plan(sub)
    st = _add_study(sub)
    for sp in (e, w, cu, pl, st, tt):  # long phases show progress bars (on stderr) unless asked not to
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_catalog(sub)
    _add_report(sub)
    return p


def _add_demo(sub: Any) -> argparse.ArgumentParser:
    """``demo``: the built-in demos."""
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
    return d


def _add_wise(sub: Any) -> argparse.ArgumentParser:
    """``wise``: WiSE-FT sweeps of a run."""
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
    return w


def _add_train(sub: Any) -> argparse.ArgumentParser:
    """``train``: from a config, or resume a run."""
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
    return t


def _add_eval(sub: Any) -> argparse.ArgumentParser:
    """``eval``: a run, or a local CLIP/SigLIP/open_clip folder; ``--help`` lists the tasks."""
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
    return e


def _add_export(sub: Any) -> argparse.ArgumentParser:
    """``export``: a run's model for transformers, open_clip or as safetensors."""
    ex_ = sub.add_parser(
        "export", help="write a run's model for transformers (hf), open_clip, or as safetensors"
    )
    ex_.add_argument("run", metavar="RUN", help="run folder")
    ex_.add_argument(
        "--format", required=True, choices=["hf", "open_clip", "safetensors"], help="output format"
    )
    ex_.add_argument("--out", required=True, help="output folder")
    return ex_


def _add_data(sub: Any) -> str:
    """``data shards|export|inspect``: convert or inspect a data source; returns the help text of a
    source argument (``curate`` takes the same sources)."""
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
    return src_help


def _add_plan(sub: Any) -> argparse.ArgumentParser:
    """``plan``: the largest batch that fits a memory budget."""
    pl = sub.add_parser("plan", help="largest contrastive batch that fits a memory budget")
    pl.add_argument("config", help="YAML run config")
    pl.add_argument("--memory", required=True, help="per-device memory budget, e.g. 16GiB")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pl.add_argument("--chunk", type=int, default=256, help="gradient-cache chunk to plan with")
    pl.add_argument("--tile", type=int, default=2048, help="loss tile size to plan with")
    return pl


def _add_study(sub: Any) -> argparse.ArgumentParser:
    """``study``: seeds x settings with the Multi-Bootstrap."""
    st = sub.add_parser("study", help="many seeds x settings, compared with the Multi-Bootstrap")
    st.add_argument("file", help="study YAML")
    st.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    st.add_argument(
        "--only", action="append", default=[], metavar="RUN", help="run just this run (repeatable)"
    )
    st.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    add_executor_arguments(st)
    return st


def _add_catalog(sub: Any) -> None:
    """``list`` and ``explain``: the registered components."""
    ls = sub.add_parser("list", help="list registered components")
    ls.add_argument("what", nargs="?", choices=list(KINDS), help="one kind (default: all)")
    ls.add_argument("-v", "--verbose", action="store_true", help="spec ids, descriptions, parameters")
    xp = sub.add_parser("explain", help="the full description of a registered component")
    xp.add_argument("name", metavar="NAME", help="a loss, tower, evaluation task, data set or source")


def _add_report(sub: Any) -> argparse.ArgumentParser:
    """``report``: static HTML pages of runs and studies."""
    rp = sub.add_parser("report", help="a static HTML page of a run, two runs or a study (docs/report.md)")
    rp.add_argument("path", metavar="RUN_OR_STUDY", help="run folder or study folder")
    rp.add_argument("--compare", metavar="RUN2", help="a second run: metrics side by side, curves overlaid")
    rp.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created; index.html + assets/)"
    )
    rp.add_argument(
        "--evaluate", action="store_true", help="first evaluate shown runs that have no evaluation yet"
    )
    return rp
