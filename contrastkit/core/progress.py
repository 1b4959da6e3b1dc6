"""Progress bars: one helper for every loop that can take more than a few seconds.

:func:`progress_bar` wraps an iterable (or counts manual ``update`` calls) in a tqdm bar that

* stays silent for loops that finish within :data:`DELAY` seconds (no clutter from quick calls);
* on a terminal refreshes in place; on anything else (a CI log, ``2> file``, a notebook's captured
  stream) writes one plain line every :data:`LOG_INTERVAL` seconds instead of carriage-return
  overwrites, which a log shows as one ever-growing line;
* can be switched off, strongest first, by the environment variable ``CONTRASTKIT_PROGRESS=0``
  (CI), by the caller's ``enabled=False`` (``train.progress: false``, a ``progress`` argument),
  or — for calls that leave ``enabled`` at ``None`` — by the ambient default of
  :func:`progress_default` (what ``--no-progress`` sets for a command).
"""

from __future__ import annotations

import contextvars
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

from tqdm.auto import tqdm

__all__ = ["DELAY", "LOG_INTERVAL", "progress_bar", "progress_default", "progress_enabled"]

T = TypeVar("T")

DELAY = 2.0  # seconds before a bar first shows: quick loops print nothing
LOG_INTERVAL = 30.0  # seconds between lines when the output is not a terminal
_ENV = "CONTRASTKIT_PROGRESS"
_DEFAULT: contextvars.ContextVar[bool] = contextvars.ContextVar("contrastkit_progress", default=True)
_CURSOR_UP = re.compile(r"\x1b\[A")


def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether a bar asked for with ``enabled`` shows: ``False`` under ``CONTRASTKIT_PROGRESS=0``,
    else ``enabled``, else (``None``) the ambient default of :func:`progress_default`."""
    if os.environ.get(_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _DEFAULT.get() if enabled is None else bool(enabled)


@contextmanager
def progress_default(enabled: bool | None) -> Iterator[None]:
    """Within the block, bars that leave ``enabled`` at ``None`` show iff ``enabled`` (``None``:
    keep the surrounding default). Context-local: other threads and processes keep theirs."""
    if enabled is None:
        yield
        return
    token = _DEFAULT.set(bool(enabled))
    try:
        yield
    finally:
        _DEFAULT.reset(token)


class _LineStream:
    """A non-terminal stream fed by tqdm: every refresh becomes one whole line (carriage returns,
    cursor moves and the blank padding of an erased bar are dropped)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        self._pending += text
        return len(text)

    def flush(self) -> None:
        text, self._pending = _CURSOR_UP.sub("", self._pending), ""
        lines = [line.strip() for line in re.split(r"[\r\n]", text)]
        for line in lines:
            if line:
                self._stream.write(line + "\n")
        self._stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(
    iterable: Iterable[T] | None = None,
    desc: str = "",
    enabled: bool | None = None,
    *,
    total: float | None = None,
    unit: str = "it",
    leave: bool = True,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or, without one, of ``total`` manual ``update`` steps) on
    stderr, shown per the module docstring. ``leave=False`` for inner loops: the bar vanishes
    when done. Other tqdm options (``initial``, ``postfix``, …) pass through."""
    stream = sys.stderr  # looked up per call: pytest and callers may swap it
    tty = _is_terminal(stream)
    options: dict[str, Any] = {
        "delay": DELAY,
        "mininterval": 0.5 if tty else LOG_INTERVAL,
        "dynamic_ncols": tty,
        "file": stream if tty else _LineStream(stream),
    }
    if not tty:
        options.update(ncols=100, ascii=True)  # a log may not be UTF-8, and has no width
    options.update(kwargs)
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=leave,
        disable=not progress_enabled(enabled),
        **options,
    )
