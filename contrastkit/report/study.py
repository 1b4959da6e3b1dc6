"""A study's report page: the study's own report, its runs by setting, curves with seed bands,
and one linked page per run.

What a study folder holds (:mod:`contrastkit.studies.report`, :mod:`contrastkit.studies.runner`)
and what the page shows of it:

* ``report.md`` — rendered section by section: its paragraphs, its tables (the settings'
  Multi-Bootstrap estimates and intervals, the comparisons' δ, CIs and p-values) and its
  pictures (``forest.png``, ``curves.png``, copied beside the page). Only the Markdown that file
  uses is read: ``#`` headings, ``|`` tables, ``![alt](file)`` lines, paragraphs with
  ```code``` and ``*emphasis*``; everything is escaped.
* ``results.parquet`` — one row per run (``run``, ``seed``, ``metric``, ``value``,
  ``n_examples`` and one column per grid key): the settings table (per-seed values, their mean,
  min and max, links to the runs). Without it, runs are grouped by folder name (``<setting>-s<seed>``).
* ``runs/<run>/`` — ordinary run folders: a page each (:mod:`contrastkit.report.run`, metrics
  from ``eval_metrics.json`` of the study's split unless the run was evaluated with
  ``contrastkit eval``), and their ``metrics.jsonl`` redrawn per setting: the mean over seeds
  and the min–max band (:func:`contrastkit.report.curves.plot_settings`), next to the study's
  ``curves.png`` (its metric during training) when it has one.

Related: :func:`contrastkit.report.build_report` (entry point), ``contrastkit study FILE
--report-only`` (rebuilds ``report.md`` and the figures this page shows).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from contrastkit.report.curves import plot_settings
from contrastkit.report.render import Assets, format_value
from contrastkit.report.run import RunData, is_run, last_logged, read_run

__all__ = ["FIXED_COLUMNS", "is_study", "markdown_sections", "run_page_name", "study_view"]

FIXED_COLUMNS = ("run", "seed", "metric", "value", "n_examples")  # results.parquet besides the grid
_SEED = re.compile(r"^(?P<setting>.+)-s(?P<seed>\d+)$")
_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)\s*$")


def is_study(path: Path) -> bool:
    """A study folder: ``results.parquet``, or ``report.md`` with a ``runs/`` folder."""
    return (path / "results.parquet").is_file() or (
        (path / "report.md").is_file() and (path / "runs").is_dir()
    )


def run_page_name(run: str) -> str:
    """File name of a study run's page beside ``index.html``."""
    return "run-" + re.sub(r"[^A-Za-z0-9._=+-]+", "_", run) + ".html"


def _table(lines: list[str]) -> dict[str, Any]:
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    body = [r for r in cells[1:] if not all(re.fullmatch(r":?-{3,}:?", c) for c in r)]
    return {"kind": "table", "header": cells[0], "rows": body}


def markdown_sections(text: str) -> tuple[str, list[dict[str, Any]]]:
    """``(title, [{title, blocks}])`` of a study ``report.md``; a block is a paragraph
    (``{kind: "p", text}``), a table (``{kind: "table", header, rows}``) or a picture
    (``{kind: "image", alt, src}``, ``src`` as written)."""
    title, sections = "", [{"title": "", "blocks": []}]
    para: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if para:
            sections[-1]["blocks"].append({"kind": "p", "text": " ".join(para)})
            para.clear()
        if table:
            sections[-1]["blocks"].append(_table(table))
            table.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            if para:
                flush()
            table.append(s)
            continue
        if table:
            flush()
        if not s:
            flush()
        elif s.startswith("# ") and not title:
            flush()
            title = s[2:].strip()
        elif s.startswith("#"):
            flush()
            sections.append({"title": s.lstrip("#").strip(), "blocks": []})
        elif m := _IMAGE.match(s):
            flush()
            sections[-1]["blocks"].append({"kind": "image", "alt": m["alt"], "src": m["src"]})
        else:
            para.append(s)
    flush()
    return title, [s for s in sections if s["blocks"] or s["title"]]


def _results(path: Path) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Rows of ``results.parquet``, its grid columns, notes."""
    file = path / "results.parquet"
    if not file.is_file():
        return [], [], ["no results.parquet: runs grouped by folder name"]
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(file)
    except Exception as err:  # a torn or foreign file: the page still shows the runs
        return (
            [],
            [],
            [f"results.parquet is unreadable ({' '.join(str(err).split())}); runs grouped by folder name"],
        )
    grid = [c for c in table.column_names if c not in FIXED_COLUMNS]
    return table.to_pylist(), grid, []


def _settings(runs: list[RunData], rows: list[dict[str, Any]], grid: list[str]) -> list[dict[str, Any]]:
    """``[{label, runs: [{name, seed, value, page}], mean, low, high}]`` in the study's order."""
    by_run = {str(r.get("run")): r for r in rows}
    order: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        row = by_run.get(run.name)
        m = _SEED.match(run.name)
        if row is not None and grid:
            label = ", ".join(f"{k}={row.get(k)}" for k in grid)
        else:
            label = m["setting"] if m else run.name
        seed = row.get("seed") if row is not None else (int(m["seed"]) if m else None)
        value = row.get("value") if row is not None else None
        entry = {
            "name": run.name,
            "seed": format_value(seed),
            "value": value,
            "page": run_page_name(run.name),
        }
        order.setdefault(label, []).append(entry)
    out = []
    for label, entries in order.items():
        values = [float(e["value"]) for e in entries if isinstance(e["value"], int | float)]
        for e in entries:
            e["text"] = format_value(e["value"])
        out.append(
            {
                "label": label,
                "runs": entries,
                "mean": format_value(sum(values) / len(values)) if values else "—",
                "low": format_value(min(values)) if values else "—",
                "high": format_value(max(values)) if values else "—",
            }
        )
    return out


def _run_row(run: RunData, settings: list[dict[str, Any]]) -> dict[str, str]:
    """A line of the runs table: setting, seed, study metric, last step and loss, evaluation."""
    where = next(((s, e) for s in settings for e in s["runs"] if e["name"] == run.name), None)
    return {
        "name": run.name,
        "page": run_page_name(run.name),
        "setting": where[0]["label"] if where else "—",
        "seed": where[1]["seed"] if where else "—",
        "value": where[1]["text"] if where else "—",
        "step": format_value(last_logged(run.rows, "step")),
        "loss": format_value(last_logged(run.rows, "loss")),
        "source": run.source or "not evaluated",
    }


def _blocks(
    sections: list[dict[str, Any]], path: Path, assets: Assets
) -> tuple[list[dict[str, Any]], set[str]]:
    """``report.md``'s sections with its pictures copied (a missing one becomes a note)."""
    shown: set[str] = set()
    for section in sections:
        for block in section["blocks"]:
            if block["kind"] != "image":
                continue
            src = block["src"]
            link = None
            if "/" not in src and not src.startswith("."):
                link = assets.copy(path / src, f"study/{src}")
            block["link"] = link
            shown |= {src} if link else set()
    return sections, shown


def study_view(path: Path, assets: Assets) -> tuple[dict[str, Any], list[RunData]]:
    """The study page's data, and the runs whose pages it links (module docstring)."""
    text = (
        (path / "report.md").read_text(encoding="utf-8", errors="replace")
        if (path / "report.md").is_file()
        else ""
    )
    title, sections = markdown_sections(text) if text else ("", [])
    notes = [] if text else ["no report.md: rebuild it with contrastkit study FILE --report-only"]
    split = m["split"] if (m := re.search(r"on split `(?P<split>[^`]+)`", text)) else "study split"
    metric = m["metric"] if (m := re.search(r"Metric: `(?P<metric>[^`]+)`", text)) else ""
    folders = sorted(p for p in (path / "runs").iterdir() if is_run(p)) if (path / "runs").is_dir() else []
    runs = [read_run(p, split) for p in folders]
    rows, grid, more = _results(path)
    settings = _settings(runs, rows, grid)
    sections, shown = _blocks(sections, path, assets)
    extra = []  # the study's figures its report.md does not show (an older report)
    for name in ("forest.png", "curves.png"):
        link = assets.copy(path / name, f"study/{name}") if name not in shown else None
        if link:
            extra.append({"src": link, "caption": name})
    band = None
    groups = {
        s["label"]: [r.series for r in runs if r.name in {e["name"] for e in s["runs"]}] for s in settings
    }
    if any(groups.values()):
        file, link = assets.target("study/training-by-setting.png")
        keys = plot_settings(groups, file)
        band = {"src": link, "keys": keys} if keys else None
        if not keys:
            file.unlink(missing_ok=True)
    view = {
        "title": title.replace("`", "") or f"Study {path.name}",
        "path": str(path),
        "metric": metric,
        "split": split,
        "sections": sections,
        "figures": extra,
        "settings": settings,
        "grid": grid,
        "band": band,
        "runs": [_run_row(r, settings) for r in runs],
        "notes": notes + more,
    }
    return view, runs
