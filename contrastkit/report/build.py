"""``contrastkit report RUN|STUDY [--compare RUN2] --out DIR [--evaluate]``: one static HTML page.

Output: ``DIR/index.html`` and its pictures under ``DIR/assets/`` (a study also gets
``DIR/run-<run>.html``, one page per run, linked from the index). The page loads nothing from the
network and runs no script: styles are inline, pictures relative files, collapsible parts are
``<details>`` elements; open it with any browser from disk (``file://``) or copy the folder.

* Input: a run folder (``config.yaml``; :mod:`contrastkit.report.run`) or a study folder
  (``results.parquet``, or ``report.md`` beside ``runs/``; :mod:`contrastkit.report.study`).
  Anything else is a one-line :class:`~contrastkit.core.errors.InputError` naming both; so is
  ``--compare`` with a study or with a folder that is not a run.
* ``DIR`` is created with its parents. An existing ``DIR`` keeps its other files: the report's
  own files (``index.html``, ``run-*.html``, the pictures it writes under ``assets/``) are
  overwritten, nothing is deleted.
* A run without an evaluation is reported as such (the page says how to evaluate it);
  ``evaluate=True`` (``--evaluate``) first evaluates every shown run that has none, with
  :func:`contrastkit.evaluation.evaluate_run`'s defaults (the run's eval splits, zero-shot and
  retrieval), into the run folder — the same as ``contrastkit eval RUN``.

Related: ``contrastkit eval`` (writes what the run page shows), ``contrastkit study`` (the study
page's sources); tests/report/test_report_browser.py opens the pages in headless Chromium.
"""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

from contrastkit.core.errors import InputError
from contrastkit.core.io import check_writable_dir
from contrastkit.core.progress import progress_bar
from contrastkit.report.render import Assets, render_page
from contrastkit.report.run import compare_view, has_evaluation, is_run, read_run, run_view
from contrastkit.report.study import is_study, run_page_name, study_view

__all__ = ["build_report"]

_EXPECTED = (
    "expected a run folder (with config.yaml) or a study folder (with results.parquet, or report.md "
    "and runs/)"
)


def _meta() -> dict[str, str]:
    try:
        version = importlib.metadata.version("contrastkit")
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    return {"version": version, "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _folder(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        state = "does not exist" if not p.exists() else "is not a folder"
        raise InputError(f"{what} {p} {state}: {_EXPECTED}")
    return p


def _evaluate_missing(folders: list[Path]) -> None:
    from contrastkit.evaluation import evaluate_run  # only on request: evaluation loads models

    for folder in folders:
        if not has_evaluation(folder):
            evaluate_run(folder)


def _run_report(src: Path, out: Path, compare: Path | None) -> Path:
    assets = Assets(out)
    a = read_run(src)
    if compare is None:
        runs = [run_view(a, assets, "run")]
        title, comparison = f"Run {a.name}", None
    else:
        b = read_run(compare)
        comparison = compare_view(a, b, assets)
        runs = [run_view(a, assets, "a", "run-a"), run_view(b, assets, "b", "run-b")]
        title = f"Runs {comparison['a']} vs {comparison['b']}"
    return render_page(
        "run.html.j2", out / "index.html", title=title, runs=runs, comparison=comparison, back=None, **_meta()
    )


def _study_report(src: Path, out: Path) -> Path:
    assets = Assets(out)
    view, runs = study_view(src, assets)
    meta = _meta()
    for run in progress_bar(runs, "report: runs", unit="run"):
        page = run_view(run, assets, f"runs/{run.name}")
        render_page(
            "run.html.j2",
            out / run_page_name(run.name),
            title=f"Run {run.name} of {view['title']}",
            runs=[page],
            comparison=None,
            back="index.html",
            **meta,
        )
    return render_page("study.html.j2", out / "index.html", title=view["title"], study=view, **meta)


def build_report(
    path: str | Path, out: str | Path, compare: str | Path | None = None, evaluate: bool = False
) -> Path:
    """Write the report of a run or study folder ``path`` into ``out``; returns ``out/index.html``.

    ``compare``: a second run shown side by side with ``path`` (a run). ``evaluate``: evaluate
    the shown runs that have no evaluation yet (module docstring)."""
    src = _folder(path, "report source")
    other = _folder(compare, "--compare") if compare is not None else None
    if is_run(src):
        if other is not None and not is_run(other):
            raise InputError(f"--compare {other} is not a run folder (no config.yaml): it compares two runs")
    elif is_study(src):
        if other is not None:
            raise InputError(f"--compare compares two runs; {src} is a study folder")
    else:
        raise InputError(f"{src} is neither a contrastkit run nor a study: {_EXPECTED}")
    dest = check_writable_dir(Path(out).expanduser(), "--out")
    if evaluate:
        shown = (
            [src, *([other] if other else [])]
            if is_run(src)
            else sorted(p for p in (src / "runs").glob("*") if is_run(p))
        )
        _evaluate_missing(shown)
    return _run_report(src, dest, other) if is_run(src) else _study_report(src, dest)
