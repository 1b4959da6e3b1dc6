"""The "tiled" column of docs/losses.md says, for every loss, what `scale.tile_size` really does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from contrastkit.core.errors import ConfigError
from contrastkit.losses.base import LOSSES, MultiLoss
from contrastkit.scale.tiled import TiledLoss
from contrastkit.scale.tiled_more import TILED_MULTI

DOC = Path(__file__).resolve().parents[2] / "docs" / "losses.md"


def _column() -> dict[str, str]:
    """loss name → the "tiled" cell, from every table whose header has that column."""
    marks: dict[str, str] = {}
    at = None
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # not "\\|"
        if line.startswith("| name |") and "tiled" in cells:
            at = cells.index("tiled")
        elif at is not None and line.startswith("|") and not line.startswith("|---"):
            marks[cells[0].strip("`")] = cells[at]
        elif not line.startswith("|"):
            at = None
    return marks


def _tiles(name: str) -> bool | None:
    """Whether the registered loss has a tiled form (None: it cannot be built without arguments)."""
    try:
        loss = LOSSES.get(name)()
    except (TypeError, ConfigError):
        return None
    if isinstance(loss, MultiLoss):
        return getattr(loss, "fn", None) in TILED_MULTI
    try:
        TiledLoss(loss, 4)
    except ConfigError:
        return False
    return True


def test_every_registered_loss_has_a_row_with_yes_or_no() -> None:
    marks = _column()
    assert set(LOSSES.names()) <= set(marks), sorted(set(LOSSES.names()) - set(marks))
    assert set(marks.values()) == {"yes", "no"}


@pytest.mark.parametrize("name", sorted(LOSSES.names()))
def test_the_tiled_cell_is_what_tile_size_does(name: str) -> None:
    tiles = _tiles(name)
    if tiles is None:
        pytest.skip(f"{name} needs constructor arguments")
    assert _column()[name] == ("yes" if tiles else "no")
