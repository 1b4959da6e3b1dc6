"""User prompt files for zero-shot: class names and prompt templates read from text files (or given
as lists) and applied to a data set's class tasks (``contrastkit eval --classes/--templates``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from contrastkit.core.errors import InputError, MissingFileError
from contrastkit.data.pairs import PairSet

__all__ = ["apply_prompt_files", "prompt_entries", "read_lines"]


def read_lines(path: str | Path, what: str) -> tuple[str, ...]:
    """Non-blank, non-``#`` lines of a UTF-8 text file (stripped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"{what} file not found: {p}")
    lines = tuple(s.strip() for s in p.read_text(encoding="utf-8").splitlines())
    lines = tuple(s for s in lines if s and not s.startswith("#"))
    if not lines:
        raise InputError(f"{what} file {p} has no entries")
    return lines


def prompt_entries(value: str | Path | Sequence[str], what: str) -> tuple[tuple[str, ...], str]:
    """The entries of a prompt file, or of a list given directly; and how to name their source."""
    if isinstance(value, (str, Path)):
        return read_lines(value, what), str(value)
    entries = tuple(s.strip() for s in value if s.strip())
    if not entries:
        raise InputError(f"the {what} list is empty")
    return entries, f"the {what} list"


def apply_prompt_files(
    pairs: PairSet,
    classes: str | Path | Sequence[str] | None = None,
    templates: str | Path | Sequence[str] | None = None,
    class_task: str | None = None,
) -> PairSet:
    """``pairs`` with class names of ``class_task`` (default: the first task) from ``classes`` and
    the templates of every task (only ``class_task`` if given) from ``templates`` (files, or the
    entries as lists)."""
    if classes is None and templates is None:
        return pairs
    if not pairs.tasks:
        raise InputError(f"data set {pairs.name!r} has no labelled class task to apply prompt files to")
    name = class_task or next(iter(pairs.tasks))
    if name not in pairs.tasks:
        raise InputError(f"unknown class task {name!r}; the data set has {sorted(pairs.tasks)}")
    tasks = dict(pairs.tasks)
    if templates is not None:
        tpl, where = prompt_entries(templates, "templates")
        bad = [t for t in tpl if "{}" not in t]
        if bad:
            raise InputError(f"template {bad[0]!r} in {where} has no '{{}}' placeholder for the class")
        for k in [name] if class_task else list(tasks):
            tasks[k] = replace(tasks[k], templates=tpl)
    if classes is not None:
        names, where = prompt_entries(classes, "class names")
        n = len(tasks[name].classnames)
        if len(names) != n:
            raise InputError(f"{where} lists {len(names)} class names but task {name!r} has {n} classes")
        if len(set(names)) < len(names):
            warnings.warn(f"duplicate class names in {where}: their scores tie", stacklevel=2)
        tasks[name] = replace(tasks[name], classnames=names)
    return replace(pairs, tasks=tasks)
