"""What the report shows of an evaluation folder: metric tables, their protocol, the plots the
tasks drew, and retrieval failures — as plain data for the templates (no markup here).

* Metric tables (:func:`metric_tables`): one table per task family (the metric name up to its
  first ``/``: ``zeroshot``, ``retrieval``, ``geometry`` …), one row per metric in natural order
  (``R@5`` before ``R@10``), one column per split, the ``generated`` column of split-independent
  tasks included as :mod:`contrastkit.evaluation.report` writes it. Cells: :func:`format_value`.
* Side by side (:func:`compare_tables`): per split the two runs' values and ``Δ = B − A``.
* Protocol (:func:`protocol_view`): the task definitions, the model record, the data record
  (data set, parameters, splits, sizes, fit split), the prompts, the library versions, and any
  other protocol field, as YAML text.
* Plots (:func:`gallery`): every PNG under ``plots/<split>/`` (sub-folders too), captioned with
  its split and file name; pictures a ``failures.json`` refers to go to the failures instead.
* Failures (:func:`failures`): ``plots/<split>/errors/failures.json`` —
  ``{"retrieval": [{"image": FILE, "caption": str, "rank": int, "top5": [str, ...]}], ...}``, any
  key holding such a list. Read defensively: unreadable JSON or a wrong shape is a note on the
  page, an entry that is not an object is counted and skipped, an image that is not a PNG file in
  the same folder (no path parts) is shown as missing, never as a broken picture.

Related: :mod:`contrastkit.report.run` (assembles a run's page from these).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from contrastkit.report.render import Assets, format_delta, format_value

__all__ = [
    "MAX_FAILURES",
    "compare_tables",
    "config_diff",
    "failures",
    "gallery",
    "metric_tables",
    "protocol_view",
    "yaml_text",
]

MAX_FAILURES = 50  # entries per kind and split: a page of thumbnails, not the whole error list
_ENTRY_KEYS = ("image", "caption", "rank", "top5")


def _natural(name: str) -> list[Any]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name)]


def yaml_text(obj: Any) -> str:
    """``obj`` as block YAML in its own key order (what the page shows in ``<pre>``)."""
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)


def _families(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    names = sorted({k for m in metrics.values() for k in m}, key=_natural)
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(name.split("/", 1)[0], []).append(name)
    return out


def _cell(value: Any, name: str) -> dict[str, str]:
    return {"text": format_value(value, name), "title": repr(value)}


def metric_tables(metrics: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{family, splits, rows: [{name, cells: [{text, title}]}]}]`` (module docstring)."""
    tables = []
    for family, names in _families(metrics).items():
        splits = [s for s in metrics if any(n in metrics[s] for n in names)]
        rows = [{"name": n, "cells": [_cell(metrics[s].get(n), n) for s in splits]} for n in names]
        tables.append({"family": family, "splits": splits, "rows": rows})
    return tables


def compare_tables(
    a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Tables of two runs: per split the cells ``A``, ``B`` and ``Δ = B − A`` (``{text, title, cls}``)."""
    both = {s: {**a.get(s, {}), **b.get(s, {})} for s in [*a, *(s for s in b if s not in a)]}
    tables = []
    for family, names in _families(both).items():
        splits = [s for s in both if any(n in both[s] for n in names)]
        rows = []
        for n in names:
            cells = []
            for s in splits:
                va, vb = a.get(s, {}).get(n), b.get(s, {}).get(n)
                text, cls = format_delta(va, vb, n)
                cells += [_cell(va, n), _cell(vb, n), {"text": text, "title": "B − A", "cls": cls}]
            rows.append({"name": n, "cells": cells})
        tables.append({"family": family, "splits": splits, "rows": rows})
    return tables


def protocol_view(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol of an evaluation as ``{definitions, model, data, prompts, versions, other}``."""
    protocol = dict(evaluation.get("protocol") or {})
    definitions = protocol.pop("metric_definitions", {}) or {}
    prompts = protocol.pop("prompts", None)
    data_keys = ("data", "data_params", "splits", "tasks", "embeddings", "fit_split", "split_independent")
    data = {k: protocol.pop(k) for k in data_keys if k in protocol}
    if evaluation.get("n"):
        data["n"] = evaluation["n"]
    model = evaluation.get("model") or protocol.pop("model", None)
    versions = evaluation.get("versions") or protocol.pop("versions", None) or {}
    protocol.pop("model", None)
    protocol.pop("versions", None)
    return {
        "definitions": [(str(k), str(v)) for k, v in definitions.items()],
        "model": yaml_text(model) if model else "",
        "data": yaml_text(data) if data else "",
        "prompts": yaml_text(prompts) if prompts else "",
        "versions": [(str(k), str(v)) for k, v in versions.items()],
        "other": yaml_text(protocol) if protocol else "",
    }


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix.rstrip("."): d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def config_diff(a: Any, b: Any) -> list[tuple[str, str, str]]:
    """``(key, value in A, value in B)`` of every flattened config key whose values differ."""
    fa, fb = _flatten(a if isinstance(a, dict) else {}), _flatten(b if isinstance(b, dict) else {})
    missing = "(absent)"
    rows = []
    for key in sorted(set(fa) | set(fb), key=_natural):
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va != vb:
            rows.append(
                (key, va if va is missing else json.dumps(va), vb if vb is missing else json.dumps(vb))
            )
    return rows


def _split_dirs(eval_dir: Path) -> list[Path]:
    plots = eval_dir / "plots"
    return sorted(p for p in plots.iterdir() if p.is_dir()) if plots.is_dir() else []


def _entry(
    e: Mapping[str, Any], folder: Path, assets: Assets, prefix: str
) -> tuple[dict[str, Any], Path | None]:
    """One failure entry for the page, and the picture it used (if any)."""
    image, thumb, note, used = e.get("image"), None, "", None
    if isinstance(image, str) and image and Path(image).name == image and image not in (".", ".."):
        src = folder / image
        thumb = assets.copy(src, f"{prefix}/{image}") if src.is_file() else None
        note = "" if thumb else f"image {image} missing or not a PNG"
        used = src if thumb else None
    else:
        note = "no image" if image is None else f"image {image!r} is not a file name in this folder"
    top = e.get("top5", [])
    top5 = [str(t) for t in top] if isinstance(top, list) else [str(top)]
    rank = e.get("rank")
    extra = [(str(k), json.dumps(v, ensure_ascii=False)) for k, v in e.items() if k not in _ENTRY_KEYS]
    row = {
        "thumb": thumb,
        "note": note,
        "caption": str(e.get("caption", "")),
        "rank": format_value(rank) if rank is not None else "—",
        "top5": top5,
        "extra": extra,
    }
    return row, used


def _failures_of(path: Path, shown: str, assets: Assets, prefix: str) -> tuple[dict[str, Any], set[Path]]:
    block: dict[str, Any] = {"file": shown, "sections": [], "notes": []}
    used: set[Path] = set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        block["notes"].append(f"{shown} is malformed ({err}); no failures shown")
        return block, used
    if not isinstance(data, dict):
        block["notes"].append(
            f'{shown} is malformed: expected an object of lists ({{"retrieval": [...]}}), '
            f"got {type(data).__name__}; no failures shown"
        )
        return block, used
    for kind, entries in data.items():
        if not isinstance(entries, list):
            block["notes"].append(
                f"{shown}: {kind!r} is not a list of entries ({type(entries).__name__}); skipped"
            )
            continue
        rows, bad = [], 0
        for e in entries[:MAX_FAILURES]:
            if not isinstance(e, dict):
                bad += 1
                continue
            row, src = _entry(e, path.parent, assets, prefix)
            rows.append(row)
            used |= {src} if src else set()
        if bad:
            block["notes"].append(
                f"{shown}: {bad} entr{'y' if bad == 1 else 'ies'} of {kind!r} not an object; skipped"
            )
        more = len(entries) - MAX_FAILURES
        block["sections"].append({"kind": str(kind), "rows": rows, "more": max(more, 0)})
    return block, used


def failures(eval_dir: Path, assets: Assets, prefix: str) -> tuple[list[dict[str, Any]], set[Path]]:
    """Per split with ``plots/<split>/errors/failures.json``: ``{split, file, sections, notes}``;
    and the pictures the entries showed (left out of :func:`gallery`)."""
    out, used = [], set()
    for folder in _split_dirs(eval_dir):
        path = folder / "errors" / "failures.json"
        if path.is_file():
            shown = path.relative_to(eval_dir).as_posix()
            block, pics = _failures_of(path, shown, assets, f"{prefix}/{folder.name}/errors")
            out.append({"split": folder.name, **block})
            used |= pics
    return out, used


def _caption(split: str, rel: Path) -> str:
    words = " / ".join(p.replace("_", " ").replace("-", " ") for p in rel.with_suffix("").parts)
    return f"{split}: {words}"


def gallery(
    eval_dir: Path, assets: Assets, prefix: str, skip: Collection[Path] = ()
) -> tuple[list[dict[str, Any]], list[str]]:
    """``([{split, images: [{src, caption}]}], notes)``: every PNG under ``plots/<split>/``."""
    out, notes = [], []
    for folder in _split_dirs(eval_dir):
        images = []
        for path in sorted(folder.rglob("*.png")):
            if path in skip or not path.is_file():
                continue
            rel = path.relative_to(folder)
            link = assets.copy(path, f"{prefix}/{folder.name}/{rel.as_posix()}")
            if link is None:
                notes.append(f"{path.relative_to(eval_dir).as_posix()} is not a readable PNG; not shown")
                continue
            images.append({"src": link, "caption": _caption(folder.name, rel)})
        if images:
            out.append({"split": folder.name, "images": images})
    return out, notes
