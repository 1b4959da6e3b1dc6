"""Rendering of the static HTML report: a Jinja2 environment over the package's templates, the
number formats of its tables, and the folder its images are copied into.

* Templates: ``contrastkit/report/templates/*.html.j2`` (package data), loaded with
  :class:`jinja2.PackageLoader`, so an installed wheel renders as an editable checkout does.
  Autoescape is on for every template and an undefined name is an error (``StrictUndefined``):
  text from run folders (captions, config values, file names) can never become markup.
* Numbers (:func:`format_value`): a metric prints with 4 decimals; a count (an ``int``, or a
  metric named ``*_queries``) without decimals; ``None`` and NaN as an em dash. The full value
  is in the cell's ``title`` (``repr``), so nothing is lost by rounding. Differences
  (:func:`format_delta`) print signed, ``b − a``.
* Images (:class:`Assets`): every picture the page shows is copied (or drawn) under
  ``DIR/assets/``; the page links them relatively, so the folder can be moved or zipped and
  opened with ``file://``. A file that does not start with the PNG signature is not linked
  (a broken ``<img>`` would hide a truncated plot); the page names it instead.

Related: :mod:`contrastkit.report.run`, :mod:`contrastkit.report.study` (what they render),
:mod:`contrastkit.report.curves` (the figures drawn for the page).
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from contrastkit.core.io import atomic_write_text

__all__ = ["ASSETS", "Assets", "format_delta", "format_value", "inline_markup", "is_png", "render_page"]

ASSETS = "assets"
_PNG = b"\x89PNG\r\n\x1a\n"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def format_value(value: Any, name: str = "") -> str:
    """A table cell: 4 decimals for a metric, none for a count, an em dash for missing/NaN."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        v = float(value)
        if math.isnan(v):
            return "—"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if isinstance(value, int) or name.endswith("_queries"):
            return f"{v:.0f}"
        return f"{v:.4f}"
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(float(value)) else float(value)


def format_delta(a: Any, b: Any, name: str = "") -> tuple[str, str]:
    """``(text, css class)`` of ``b − a``: signed, the digits of :func:`format_value`; an em dash
    when either side is missing or not a number."""
    x, y = _number(a), _number(b)
    if x is None or y is None:
        return "—", ""
    d = y - x
    digits = 0 if name.endswith("_queries") or (isinstance(a, int) and isinstance(b, int)) else 4
    text = f"{d:+.{digits}f}"
    return text, "up" if d > 0 else "down" if d < 0 else ""


def inline_markup(text: Any) -> Markup:
    """Markdown-like text of a study's ``report.md`` as safe HTML: the text is escaped first, then
    ```code``` spans and ``*emphasis*`` become tags (nothing else is interpreted)."""
    out = str(escape(str(text)))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", out)
    return Markup(out)


def is_png(path: Path) -> bool:
    """Whether ``path`` is a file that starts with the PNG signature."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == _PNG
    except OSError:
        return False


class Assets:
    """The images of one report under ``out_dir/assets/``: :meth:`copy` a file there, or
    :meth:`target` a path to draw a figure at; both return the page-relative link."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.root = out_dir / ASSETS
        self.used: set[str] = set()

    def _name(self, name: str) -> str:
        parts = [_UNSAFE.sub("_", p).lstrip(".") or "_" for p in Path(name).parts if p not in ("", ".", "..")]
        stem = "/".join(parts) or "image.png"
        base, dot, ext = stem.rpartition(".")
        candidate, i = stem, 2
        while candidate in self.used:  # two sources with one name: keep both
            candidate, i = f"{base}-{i}{dot}{ext}", i + 1
        self.used.add(candidate)
        return candidate

    def target(self, name: str) -> tuple[Path, str]:
        """``(file to write, link)`` for a figure drawn for the page."""
        rel = self._name(name)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, f"{ASSETS}/{rel}"

    def copy(self, src: Path, name: str) -> str | None:
        """Copy the PNG ``src`` into the report; ``None`` if it is missing or not a PNG."""
        if not is_png(src):
            return None
        path, link = self.target(name)
        shutil.copyfile(src, path)
        return link


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("contrastkit.report", "templates"),
        autoescape=True,  # every template, whatever its file name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = inline_markup
    return env


def render_page(template: str, path: Path, **context: Any) -> Path:
    """Render ``templates/<template>`` with ``context`` into ``path`` (written atomically)."""
    html = _environment().get_template(template).render(**context)
    atomic_write_text(path, html)
    return path
