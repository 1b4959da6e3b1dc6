"""What a curation writes: the kept rows as a ``csv`` source, the removed rows, the report, plots.

Files in the output folder:

* ``pairs.csv`` — the kept rows in source order: ``image`` (a file path: the original file by
  absolute path, or ``images/<row>.<ext>`` written here for in-memory images, images stored as
  bytes, and with ``copy_images``), the captions (``caption``, ``caption_1`` … when every kept row
  has the same number, else one ``captions`` column split by ``caption_sep``), one column per
  class task (the class name; empty for no label), the source's extra columns, ``source_row``
  (the row's index in the source) and ``score_<filter>`` (the score each filter gave the row);
* ``removed.csv`` — one line per removed row: ``source_row``, ``step``, ``filter``, ``reason``,
  ``score``, ``duplicate_of`` (near duplicates: the kept row it repeats), the first caption;
* ``curation.json`` — rows in/kept/removed overall, per step and per reason, every filter's
  parameters and threshold, score quantiles, the model, and ``data_config``: the ``data:`` block
  that reads ``pairs.csv`` back;
* ``curation.md`` — the same as a short page; ``scores-<k>-<filter>.png`` — a histogram of step k's
  scores, kept and removed rows stacked, the threshold drawn.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from contrastkit.core.io import atomic_path, atomic_write_json, atomic_write_text, save_png
from contrastkit.core.progress import progress_bar
from contrastkit.data.convert import encode_image
from contrastkit.data.pairs import PairSet
from contrastkit.data.table import PAIR_KEY, PairTable

__all__ = ["StepRecord", "format_summary", "plot_scores", "write_outputs", "write_table"]

_SEPARATORS = ("|", "¦", "\u241e")  # caption_sep candidates: the first absent from every caption


@dataclass(frozen=True)
class StepRecord:
    """One step of a curation: ``filter`` (``read`` for unusable rows), its parameters, the rows it
    saw, ``removed`` (source row → reason) and, for a filter, ``scores``/``kept_mask`` aligned with
    ``rows`` (source rows, ascending), the ``threshold`` and near-duplicate ``partner`` rows."""

    filter: str
    params: dict[str, Any]
    rows_in: int
    removed: dict[int, str]
    scores: np.ndarray | None = None
    kept_mask: np.ndarray | None = None
    threshold: float | None = None
    score_name: str = ""
    rows: np.ndarray | None = None
    partner: dict[int, int] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    rule: str = "threshold"


def _image_cell(source: PairSet | PairTable, i: int, out: Path, copy_images: bool) -> str:
    """The ``image`` cell of source row ``i``, writing the file under ``out/images`` if needed."""
    from PIL import Image

    if isinstance(source, PairSet) or isinstance(source.images[i], bytes):
        (out / "images").mkdir(exist_ok=True)  # only when an image is written here
    if isinstance(source, PairSet):
        name = f"images/{i:07d}.png"
        (out / name).write_bytes(encode_image(source.images[i]))
        return name
    ref = source.images[i]
    if ref is None:
        return ""
    if isinstance(ref, str):
        path = Path(ref).resolve()
        if not copy_images or not path.is_file():  # a missing file stays missing: the loader counts it
            return str(path)
        (out / "images").mkdir(exist_ok=True)
        name = f"images/{i:07d}{path.suffix.lower()}"
        shutil.copyfile(path, out / name)
        return name
    try:
        with Image.open(io.BytesIO(ref)) as img:
            ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(img.format or "", "bin")
    except Exception:  # undecodable bytes are written as they are: the loader counts them
        ext = "bin"
    name = f"images/{i:07d}.{ext}"
    (out / name).write_bytes(ref)
    return name


def _caption_layout(captions: list[tuple[str, ...]]) -> tuple[list[str], str | None]:
    """Caption column names and ``caption_sep`` (``None``: one column per caption)."""
    width = {len(c) for c in captions}
    if len(width) == 1:
        n = width.pop()
        return ["caption", *[f"caption_{k}" for k in range(1, n)]], None
    text = "".join(c for caps in captions for c in caps)
    sep = next((s for s in _SEPARATORS if s not in text), None)
    if sep is None:
        return ["caption", *[f"caption_{k}" for k in range(1, max(width))]], None
    return ["captions"], sep


def write_table(
    source: PairSet | PairTable,
    rows: np.ndarray,
    captions: list[tuple[str, ...]],
    scores: dict[str, np.ndarray],
    out: Path,
    copy_images: bool = False,
) -> dict[str, Any]:
    """Write ``rows`` of ``source`` (with their non-empty ``captions`` and per-row ``scores``
    columns) as ``out/pairs.csv`` (module docstring); returns the ``data:`` config that reads it."""
    cap_cols, sep = _caption_layout(captions)
    tasks = list(source.tasks)
    extras = dict(source.extras) if isinstance(source, PairTable) else {}
    extra_names = {k: ("pair_text" if k == PAIR_KEY else k) for k in extras}
    header = ["image", *cap_cols, *tasks, *extra_names.values(), "source_row", *scores]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        from contrastkit.core.errors import ConfigError

        raise ConfigError(f"the output table would have the column(s) {dup} twice; rename them in the source")
    with atomic_path(out / "pairs.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for k, i in enumerate(progress_bar(rows, f"write {out}", unit="row")):
            i = int(i)
            caps = list(captions[k])
            cells = [sep.join(caps)] if sep else caps + [""] * (len(cap_cols) - len(caps))
            labels = [t.classnames[t.labels[i]] if t.labels[i] >= 0 else "" for t in source.tasks.values()]
            extra = ["" if col.values[i] is None else col.values[i] for col in extras.values()]
            vals = [f"{float(s[k]):.6g}" for s in scores.values()]
            w.writerow([_image_cell(source, i, out, copy_images), *cells, *labels, *extra, i, *vals])
    params: dict[str, Any] = {"path": str((out / "pairs.csv").resolve()), "caption_columns": cap_cols}
    if sep:
        params["caption_sep"] = sep
    if tasks:
        params["label_columns"] = tasks
    numeric = [extra_names[k] for k, c in extras.items() if c.kind != "text"]
    text = [extra_names[k] for k, c in extras.items() if c.kind == "text" and k != PAIR_KEY]
    if numeric:
        params["extra_columns"] = numeric
    if text:
        params["text_columns"] = text
    if PAIR_KEY in extras:
        params["pair_column"] = "pair_text"
    return {"name": "csv", "params": params}


def plot_scores(
    scores: np.ndarray,
    keep: np.ndarray,
    threshold: float,
    path: Path,
    title: str,
    xlabel: str,
    rule: str = "threshold",
) -> Path:
    """Histogram of ``scores``, kept and removed rows stacked, ``threshold`` as a dashed line
    labelled ``rule`` (integer scores: one bar per value, the line at the edge below the threshold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = np.isfinite(scores)
    s, k = scores[ok], keep[ok]
    integer = bool(len(s)) and np.all(s == np.round(s))
    if integer:
        bins = np.arange(s.min() - 0.5, s.max() + 1.5) if len(s) else 10
        line = threshold - 0.5
    else:
        bins, line = 40, threshold
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.hist(
        [s[k], s[~k]],
        bins=bins,
        stacked=True,
        color=["tab:blue", "tab:red"],
        label=[f"kept ({int(k.sum())})", f"removed ({int((~k).sum())})"],
    )
    ax.axvline(line, color="black", ls="--", lw=1.2, label=rule)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("number of rows")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def _quantiles(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {}
    q = np.quantile(x, [0.0, 0.05, 0.5, 0.95, 1.0])
    return dict(zip(["min", "p05", "median", "p95", "max"], (round(float(v), 6) for v in q)))


def _step_report(k: int, rec: StepRecord, out: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "step": k,
        "filter": rec.filter,
        "params": rec.params,
        "rows_in": rec.rows_in,
        "kept": rec.rows_in - len(rec.removed),
        "removed": len(rec.removed),
        "reasons": dict(Counter(rec.removed.values())),
    }
    if rec.scores is None or rec.kept_mask is None or rec.threshold is None:
        return entry
    plot = f"scores-{k}-{rec.filter}.png"
    title = f"{rec.filter} (step {k}): {entry['kept']} of {rec.rows_in} rows kept"
    plot_scores(rec.scores, rec.kept_mask, rec.threshold, out / plot, title, rec.score_name, rec.rule)
    entry.update(threshold=rec.threshold, score=rec.score_name, quantiles=_quantiles(rec.scores))
    entry.update(details=rec.details, plot=plot)
    return entry


def _write_removed(source: PairSet | PairTable, records: list[StepRecord], out: Path) -> None:
    with atomic_path(out / "removed.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source_row", "step", "filter", "reason", "score", "duplicate_of", "caption"])
        for k, rec in enumerate(records, 1):
            pos = {int(r): p for p, r in enumerate(rec.rows)} if rec.rows is not None else {}
            for i, why in sorted(rec.removed.items()):
                score = "" if rec.scores is None else f"{float(rec.scores[pos[i]]):.6g}"
                twin = (rec.partner or {}).get(i, "")
                w.writerow([i, k, rec.filter, why, score, twin, source.captions[i][0]])


def write_outputs(
    source: PairSet | PairTable,
    kept: np.ndarray,
    records: list[StepRecord],
    out: Path,
    info: dict[str, Any],
    model: dict[str, Any] | None,
    copy_images: bool,
    t0: float,
) -> dict[str, Any]:
    """Write every file of the module docstring; returns the ``curation.json`` report."""
    scores: dict[str, np.ndarray] = {}
    for rec in records:
        if rec.scores is None or rec.rows is None:
            continue
        name = f"score_{rec.filter}"
        name = name if name not in scores else f"{name}_{len(scores) + 1}"
        scores[name] = rec.scores[np.searchsorted(rec.rows, kept)]
    captions = [tuple(c for c in source.captions[int(i)] if c.strip()) for i in kept]
    data_config = write_table(source, kept, captions, scores, out, copy_images)
    _write_removed(source, records, out)
    steps = [_step_report(k, rec, out) for k, rec in enumerate(records, 1)]
    n = len(source)
    report = {
        **info,
        "rows": n,
        "kept": len(kept),
        "removed": n - len(kept),
        "removed_by_reason": dict(sum((Counter(r.removed.values()) for r in records), Counter())),
        "steps": steps,
        "model": model,
        "data_config": data_config,
        "score_columns": list(scores),
        "outputs": ["pairs.csv", "removed.csv", "curation.json", "curation.md"]
        + [s["plot"] for s in steps if "plot" in s],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(out / "curation.json", report)
    atomic_write_text(out / "curation.md", _markdown(report))
    return report


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "-"


def _model_text(model: dict[str, Any] | None) -> str:
    if not model:
        return "none (no filter needed embeddings)"
    parts = [str(model.get("kind", "?")), str(model.get("path", ""))]
    if "checkpoint" in model:
        parts.append(f"checkpoint {model['checkpoint']}")
    return " ".join(p for p in parts if p)


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Curation of {r['source']} ({r['split']})",
        "",
        f"{r['rows']} rows → **{r['kept']} kept**, {r['removed']} removed "
        f"({100 * r['removed'] / max(r['rows'], 1):.1f}%). Model: {_model_text(r['model'])}.",
        "",
        "| step | filter | parameters | rows in | kept | removed | threshold | removed because |",
        "|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for s in r["steps"]:
        why = "; ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or "-"
        tau = f"{s['threshold']:.4g}" if "threshold" in s else "-"
        lines.append(
            f"| {s['step']} | {s['filter']} | {_params_text(s['params'])} | {s['rows_in']} | {s['kept']} "
            f"| {s['removed']} | {tau} | {why} |"
        )
    lines += ["", "Read the kept rows (`pairs.csv`) as a data source:", "", "```yaml"]
    lines += [yaml.safe_dump({"data": r["data_config"]}, sort_keys=False, allow_unicode=True).rstrip(), "```"]
    lines += [f"\n![{s['filter']} scores]({s['plot']})" for s in r["steps"] if "plot" in s]
    return "\n".join(lines) + "\n"


def format_summary(r: dict[str, Any]) -> str:
    """A few lines for the terminal: rows kept per step, why rows went, where the files are."""
    lines = [f"{r['source']} ({r['split']}): {r['rows']} rows, {r['kept']} kept, {r['removed']} removed"]
    for s in r["steps"]:
        tau = f", threshold {s['threshold']:.4g}" if "threshold" in s else ""
        why = "; ".join(f"{k}: {v}" for k, v in s["reasons"].items())
        lines.append(
            f"  {s['step']}. {s['filter']:<16} {s['rows_in']:>8} in {s['kept']:>8} kept{tau}"
            + (f"  ({why})" if why else "")
        )
    lines.append(f"model: {_model_text(r['model'])}")
    return "\n".join(lines)
