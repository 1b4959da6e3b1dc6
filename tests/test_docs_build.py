"""The documentation site (mkdocs.yml, ``make docs``) builds with warnings as errors, and its API
reference covers every public module of the package.

The build renders the API reference from the docstrings with mkdocstrings (griffe reads the source
statically, nothing is imported), so a malformed docstring section or a documented parameter that
is not in the signature fails here. It takes about 10 s on 2 CPU cores.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"


def _public_modules() -> set[str]:
    mods = set()
    for path in (ROOT / "contrastkit").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if any(p.startswith("_") for p in parts):
            continue  # private modules and __main__
        mods.add(".".join(parts))
    return mods


def _documented() -> set[str]:
    found = set()
    for page in API.glob("*.md"):
        found |= set(re.findall(r"^:::\s+(contrastkit[\w.]*)\s*$", page.read_text(encoding="utf-8"), re.M))
    return found


def test_api_reference_covers_every_public_module() -> None:
    public, documented = _public_modules(), _documented()
    missing = sorted(public - documented)
    assert not missing, f"add a '::: MODULE' block to docs/api/<subpackage>.md for: {missing}"
    stale = sorted(documented - public)
    assert not stale, f"docs/api/ documents modules that no longer exist: {stale}"


def _defined_in(init: Path) -> set[str]:
    """Public names a package's ``__init__.py`` defines itself (not the ones it re-exports)."""
    names = set()
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize(
    "init", sorted((ROOT / "contrastkit").glob("*/__init__.py")), ids=lambda p: p.parent.name
)
def test_api_reference_lists_what_each_package_defines(init: Path) -> None:
    # A package block renders only the listed members: its re-exports are documented in their modules.
    package = init.parent.name
    page = (API / f"{package}.md").read_text(encoding="utf-8")
    block = re.search(rf"^::: contrastkit\.{package}\n((?:    .*\n)+)", page, re.M)
    assert block, f"docs/api/{package}.md: no '::: contrastkit.{package}' block with options"
    members = yaml.safe_load(textwrap.dedent(block.group(1)))["options"]["members"] or []
    defined = _defined_in(init)
    assert set(members) == defined, (
        f"docs/api/{package}.md: the contrastkit.{package} block should list members: {sorted(defined)}"
    )


def test_every_page_is_in_the_nav() -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def pages(item) -> list[str]:
        if isinstance(item, str):
            return [item]
        if isinstance(item, list):
            return [p for x in item for p in pages(x)]
        return [p for v in item.values() for p in pages(v)]

    in_nav = set(pages(nav))
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk == in_nav, f"not in nav: {sorted(on_disk - in_nav)}; missing: {sorted(in_nav - on_disk)}"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="docs dependencies not installed (requirements.txt)")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    proc = subprocess.run(
        [*cmd, "--site-dir", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}{proc.stderr[-8000:]}"
    assert (site / "index.html").is_file()
    losses = (site / "api" / "losses" / "index.html").read_text(encoding="utf-8")
    assert "contrastkit.losses.clip.clip_loss" in losses  # the docstrings were rendered
