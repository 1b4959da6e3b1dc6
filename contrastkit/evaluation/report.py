"""Evaluate a model — a contrastkit run, a Hugging Face CLIP/SigLIP folder or any two encoders —
on labelled pair sets, and report every number with the protocol that produced it.

``evaluate_pairs`` measures one :class:`PairSet`; ``evaluate_model`` (and ``evaluate_run`` for a run
folder) evaluates splits and writes to the output folder:

* ``eval.json`` — every metric per split, the number of examples, and the protocol: the model
  (kind, path, checkpoint and weight SHA-256s), its preprocessing, the data set/splits, the zero-shot
  class names and templates (listed, plus SHA-256 of the newline-joined list), the metric
  definitions (each task's docstring), and the library versions;
* ``per_example.npz`` — per-example scores keyed ``<split>/<metric>`` (float64; ``np.load(...,
  allow_pickle=False)``), the arrays whose means are the metrics;
* ``similarity.png`` (first split) and whatever tasks draw into ``plots/<split>/``
  (``options["plot_dir"]``, e.g. the geometry task);
* a run also gets ``metrics.json`` (metrics + protocol, as before), in the same output folder: a
  run evaluated with ``out_dir`` elsewhere is left untouched.

Fit split (``protocol.fit_split``): tasks that fit on a training split (``FIT_TASKS``: probes,
suppression on pairs) use ``train_split`` if given, else the data set's training split — a run's
``data.train_split``, ``train`` of a built-in set. A file source given as ``data`` has no default (a
source without split column or split folders returns the same rows for every split). Without one,
they fit on a seeded half of each evaluated split: a warning is logged and recorded with the
reason. Tasks whose data do not depend on the evaluated split (``SPLIT_INDEPENDENT``: winoground,
suppression on generated Shapes) are evaluated once, in the column ``generated``.

Prompt files (``classes``/``templates``): UTF-8, one entry a line, blank lines and ``#`` lines
ignored (or the entries as a list); a template must contain ``{}``; the class list must have as
many names as the task has classes (label order). Missing file, empty list, bad template, wrong
count → one-line error.

``data`` may also name a file source (``csv``, ``tsv``, ``parquet``, ``imagefolder``, ``hf``,
``webdataset``; :mod:`contrastkit.data.loading`) with ``data_params`` as in a config: its splits are
decoded with the run's ``data.image`` transform (a run trained on a built-in set: its
``image_size``; a Hugging Face model: its processor's resize size) and evaluated like any pair set.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.config import to_dict
from contrastkit.core.errors import InputError, MissingFileError
from contrastkit.core.io import atomic_path, atomic_write_json, read_json
from contrastkit.core.progress import progress_bar, progress_enabled
from contrastkit.data import load_split
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.eval_data import (
    check_batch_size,
    check_request,
    load_sets,
    model_image,
    named_data,
    run_image,
)
from contrastkit.evaluation.external import (
    HFEncoders,
    checked_encoders,
    hf_encoders,
    open_clip_encoders,
)
from contrastkit.evaluation.late_interaction import is_token_set, similarity
from contrastkit.evaluation.multistage import run_encoders
from contrastkit.evaluation.plots import plot_similarity
from contrastkit.evaluation.prompts import apply_prompt_files, read_lines
from contrastkit.evaluation.protocol import library_versions, listed, metric_definitions, run_record
from contrastkit.evaluation.splits import GENERATED, fit_record, fit_split, once_record, split_independent
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult

__all__ = [
    "TASKS",
    "apply_prompt_files",
    "evaluate_examples",
    "evaluate_model",
    "evaluate_pairs",
    "evaluate_run",
    "format_table",
    "library_versions",
    "read_lines",
]

TASKS = ("zeroshot", "retrieval")  # the default selection; EVAL_TASKS lists all


def _evaluate(
    enc: Encoders,
    pairs: PairSet,
    tasks: Sequence[str],
    train_pairs: PairSet | None = None,
    options: dict[str, Any] | None = None,
) -> TaskResult:
    """Run the selected registered tasks on one pair set, sharing the embeddings."""
    if len(pairs) == 0:
        raise InputError(f"pair set {pairs.name or '(unnamed)'!r} is empty: nothing to evaluate")
    ctx = EvalContext(enc, pairs, train_pairs, dict(options or {}))
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    bar = progress_bar(tasks, f"evaluate {pairs.name or 'pairs'}", unit="task", leave=False)
    for name in bar:
        bar.set_postfix_str(name, refresh=False)  # the first task also embeds the split
        metrics, ex = EVAL_TASKS.get(name)(ctx)
        out.update(metrics)
        examples.update(ex)
    return out, examples


def evaluate_pairs(enc: Encoders, pairs: PairSet, tasks: Sequence[str] = TASKS) -> dict[str, float]:
    """Flat ``{metric: value}`` for one pair set: ``zeroshot/<task>/top1`` …, ``retrieval/...``."""
    return _evaluate(enc, pairs, tasks)[0]


def evaluate_examples(
    enc: Encoders,
    pairs: PairSet,
    tasks: Sequence[str] = TASKS,
    train_pairs: PairSet | None = None,
    options: dict[str, Any] | None = None,
) -> TaskResult:
    """Metrics and per-example scores: ``zeroshot/<task>/top1`` → 0/1 per labelled image,
    ``retrieval/text_to_image_R@K`` → 0/1 per text, ``retrieval/image_to_text_R@K`` → per image.
    The mean of each array is the matching metric."""
    return _evaluate(enc, pairs, tasks, train_pairs, options)


def _similarity_figure(enc: Encoders, pairs: PairSet, path: Path, n: int = 12) -> None:
    idx = np.arange(min(n, len(pairs)))
    sub = pairs.subset(idx)
    caps = [c[0] for c in sub.captions]
    if sub.images is None:  # another modality against text: its first signal (or attributes)
        other = next((m for m in sub.modalities if m in enc.encodes), None)
        if other is None or enc.modality is None:
            return
        rows = enc.modality(other, sub.attributes if other == "attributes" else sub.signal(other))
        sims = similarity(rows, enc.texts(caps))
        title = f"{pairs.name}: {other}–text cosine similarity"
        plot_similarity(None, caps, sims, path, title=title, row_kind=other)
        return
    try:
        texts = enc.texts(caps)
    except InputError:  # an image-only model (SimCLR, Jigsaw Clustering): no image–text figure
        return
    images = enc.images(sub.images)
    sims = similarity(images, texts)  # cosine, or MaxSim for token sets (evaluation.late_interaction)
    kind = "MaxSim" if is_token_set(images) or is_token_set(texts) else "cosine"
    plot_similarity(sub.images, caps, sims, path, title=f"{pairs.name}: image–text {kind} similarity")


def _report(
    enc: Encoders,
    model_record: dict[str, Any],
    sets: dict[str, PairSet],
    tasks: Sequence[str],
    out_dir: Path,
    data_record: dict[str, Any],
    train_pairs: PairSet | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every split, write eval.json, per_example.npz, the figures; return the report."""
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    enc = checked_encoders(enc)
    metrics: dict[str, dict[str, float]] = {}
    examples: dict[str, np.ndarray] = {}
    prompts: dict[str, dict[str, Any]] = {}
    once: dict[str, dict[str, float]] = {}  # split-independent tasks, evaluated at their first split
    bar = progress_bar(sets.items(), "evaluate", total=len(sets), unit="split")
    for i, (split, pairs) in enumerate(bar):
        opts = {**(options or {}), "plot_dir": out_dir / "plots" / split}
        free = split_independent(tasks, EvalContext(enc, pairs, train_pairs, opts))
        metrics[split], ex = _evaluate(enc, pairs, [t for t in tasks if t not in free], train_pairs, opts)
        examples.update({f"{split}/{k}": np.asarray(v, dtype=np.float64) for k, v in ex.items()})
        todo = [t for t in free if t not in once]
        if todo:
            gen_opts = {**opts, "plot_dir": out_dir / "plots" / GENERATED}
            gen, ex = _evaluate(enc, pairs, todo, train_pairs, gen_opts)
            once.update({t: gen for t in todo})
            examples.update({f"{GENERATED}/{k}": np.asarray(v, dtype=np.float64) for k, v in ex.items()})
        if i == 0:
            _similarity_figure(enc, pairs, out_dir / "similarity.png")
            prompts = {
                k: {"classnames": listed(t.classnames), "templates": listed(t.templates)}
                for k, t in pairs.tasks.items()
            }
    if once:
        metrics[GENERATED] = {k: v for m in once.values() for k, v in m.items()}
    with atomic_path(out_dir / "per_example.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **examples)
    report = {
        "model": model_record,
        "metrics": metrics,
        "n": {s: {"images": len(p), "texts": sum(len(c) for c in p.captions)} for s, p in sets.items()},
        "protocol": {
            **{k: v for k, v in data_record.items() if k != "fit_split"},
            "splits": list(sets),
            "tasks": list(tasks),
            "prompts": prompts,
            "metric_definitions": metric_definitions(tasks),
            # the task options as given (instructions, k, compared runs…): part of what a number means
            "options": json.loads(json.dumps(options or {}, default=str)),
            "embeddings": "L2-normalised (eps 1e-12), cosine similarities in float32",
            "fit_split": fit_record(data_record.get("fit_split", {}), metrics, sets, train_pairs),
            **({"split_independent": once_record(once)} if once else {}),
        },
        "versions": library_versions(),
        "outputs_dir": str(out_dir),
        "outputs": ["eval.json", "per_example.npz"]
        + (["similarity.png"] if (out_dir / "similarity.png").is_file() else [])
        + (["plots/"] if (out_dir / "plots").is_dir() else []),
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_json(out_dir / "eval.json", report)
    return report


def evaluate_run(
    run_dir: str | Path,
    splits: Sequence[str] | None = None,
    tasks: Sequence[str] = TASKS,
    batch_size: int = 256,
    data: str | None = None,
    data_params: dict[str, Any] | None = None,
    classes: str | Path | None = None,
    templates: str | Path | None = None,
    class_task: str | None = None,
    train_split: str | None = None,
    options: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a run's newest checkpoint on ``splits`` (default: the config's ``eval_splits``) of
    its data set (or of ``data`` built with ``data_params``); writes ``metrics.json`` and the
    outputs of :func:`evaluate_model` into ``out_dir`` (default: the run folder; another folder
    leaves the run folder untouched). Probes fit on ``train_split`` (default: ``data.train_split``
    of the run's own data, ``train`` of a built-in ``data``)."""
    from contrastkit.train import load_run_config  # evaluation sits above train

    check_batch_size(batch_size)
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    prompt_files = {"classes": classes, "templates": templates, "class_task": class_task}
    own = load_run_config(run_dir).data
    wanted = [*(splits or (own.eval_splits if data is None else ("test",)))]
    wanted += [train_split] if train_split else []
    asked = own if data is None else named_data(data, data_params, wanted)
    check_request(tasks, asked, wanted, prompt_files)
    cfg, model, ckpt, enc, stages = run_encoders(run_dir, batch_size)  # multistage: all stages concatenated
    out = Path(out_dir).expanduser() if out_dir is not None else run_dir
    if data is None:
        names = list(splits or cfg.data.eval_splits)
        bars = progress_enabled()  # generating or decoding a split can take minutes
        sets = {s: apply_prompt_files(load_split(cfg.data, s, bars), **prompt_files) for s in names}
        origin, load = "default: the run config's data.train_split", lambda s: load_split(cfg.data, s, bars)
        train, fit = fit_split(tasks, train_split, cfg.data.train_split, origin, load)
        data_record = {
            "data": cfg.data.name,
            "data_params": {s: cfg.data.split_params(s) for s in names},
            "fit_split": fit,
        }
    else:
        image = run_image(cfg.data)
        sets, train, data_record = load_sets(
            data, splits or ("test",), data_params, prompt_files, train_split, image, tasks
        )
    record = run_record(run_dir, model, ckpt) | stages
    if cfg.data.speech is not None and data is None:  # spoken prompts for cross_modal's zero-shot
        cm = dict((options or {}).get("cross_modal", {}))
        cm.setdefault("speech", to_dict(cfg.data.speech))
        options = {**(options or {}), "cross_modal": cm}
    report = _report(enc, record, sets, tasks, out, data_record, train, options)
    legacy = {
        "run": str(run_dir),
        "checkpoint": ckpt.name,
        "metrics": report["metrics"],
        "protocol": {**report["protocol"], "model": report["model"], "versions": report["versions"]},
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_json(out / "metrics.json", legacy)
    if out == run_dir and (run_dir / "tensorboard").is_dir():  # a run logging to TensorBoard
        _tensorboard_eval(run_dir / "tensorboard", report["metrics"], out / "similarity.png", ckpt.name)
    return legacy


def _tensorboard_eval(folder: Path, metrics: dict[str, dict[str, float]], png: Path, ckpt: str) -> None:
    """Add an evaluation to the run's TensorBoard events: every numeric metric as ``eval/<split>/
    <metric>`` at the checkpoint's step, and the similarity figure as the image ``eval/similarity``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: the run's logger has already said so
        return
    step = int(re.sub(r"\D", "", ckpt) or 0)
    writer = SummaryWriter(str(folder))
    try:
        for split, values in metrics.items():
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(f"eval/{split}/{key}", value, step)
        if png.is_file():
            import matplotlib.image as mpimg

            writer.add_image("eval/similarity", mpimg.imread(png)[..., :3], step, dataformats="HWC")
    finally:
        writer.close()


def evaluate_model(
    model: str | Path | Encoders,
    out_dir: str | Path | None = None,
    data: str | None = None,
    splits: Sequence[str] | None = None,
    tasks: Sequence[str] = TASKS,
    data_params: dict[str, Any] | None = None,
    classes: str | Path | None = None,
    templates: str | Path | None = None,
    class_task: str | None = None,
    train_split: str | None = None,
    batch_size: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a run folder (``config.yaml``), a Hugging Face CLIP/SigLIP folder (``config.json``),
    an open_clip folder (``open_clip_config.json``) or an :class:`Encoders`; returns the
    ``eval.json`` report. Defaults: a run's own data set and eval splits, else ``shapes`` /
    ``test``; ``out_dir`` = the run folder, ``eval/<folder name>`` for a model folder (required
    for encoders)."""
    check_batch_size(batch_size)
    kw = {"classes": classes, "templates": templates, "class_task": class_task}
    if isinstance(model, Encoders) or not (Path(model).expanduser() / "config.yaml").is_file():
        wanted = [*(splits or ("test",)), *([train_split] if train_split else [])]
        check_request(tasks, named_data(data or "shapes", data_params, wanted), wanted, kw)
    if isinstance(model, Encoders):
        if out_dir is None:
            raise InputError("evaluate_model(encoders) needs an out_dir for its outputs")
        record: dict[str, Any] = dict(model.info) if isinstance(model, HFEncoders) else {"kind": "callables"}
        enc = model
    else:
        path = Path(model).expanduser()
        if (path / "config.yaml").is_file():
            run_kw = {"data": data, "data_params": data_params, "train_split": train_split, **kw}
            evaluate_run(path, splits, tasks, batch_size or 256, options=options, out_dir=out_dir, **run_kw)
            return read_json((Path(out_dir).expanduser() if out_dir is not None else path) / "eval.json")
        if (path / "open_clip_config.json").is_file():
            enc = open_clip_encoders(path, batch_size=batch_size or 64)
        elif (path / "config.json").is_file():
            enc = hf_encoders(path, batch_size=batch_size or 64)
        else:
            raise MissingFileError(
                f"{path} is not a contrastkit run (no config.yaml), a Hugging Face model folder "
                "(no config.json) nor an open_clip folder (no open_clip_config.json)"
            )
        record, out_dir = dict(enc.info), out_dir or Path("eval") / path.resolve().name
    data, splits = data or "shapes", splits or ("test",)
    image = model_image(record)
    sets, train, data_record = load_sets(data, splits, data_params, kw, train_split, image, tasks)
    return _report(enc, record, sets, tasks, Path(out_dir), data_record, train, options)


def _natural(name: str) -> list[object]:
    """Sort key that orders R@5 before R@10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per metric, one column per split, the ``generated`` column of
    split-independent tasks last (splits without metrics left out: all their tasks were such)."""
    once = [GENERATED] if metrics.get(GENERATED) else []
    splits = [s for s in metrics if metrics[s] and s != GENERATED] + once or list(metrics)
    names = sorted({k for m in metrics.values() for k in m}, key=_natural)
    width = max([len(n) for n in names] + [6])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{s:>9}" for s in splits)]
    lines.append("-" * len(lines[0]))
    for n in names:
        cells = []
        for s in splits:
            v = metrics[s].get(n)
            count = n.endswith("_queries")  # counts, not rates: no decimals
            cells.append(f"{'—':>9}" if v is None or np.isnan(v) else f"{v:>9.0f}" if count else f"{v:>9.3f}")
        lines.append(f"{n:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
