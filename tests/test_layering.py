"""Architecture: data flows one way; no module imports a layer above its own.

Layers (low → high): core < {data, losses, models} < scale < train < evaluation < {studies, curation} < top
(demo, commands < cli). A module may import its own layer or lower ones only (``data``, ``losses`` and
``models`` are siblings and may not import one another, except where listed).
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "contrastkit"
RANK = {
    "core": 0,
    "data": 1,
    "losses": 1,
    "models": 1,
    "scale": 2,
    "train": 3,
    "evaluation": 4,
    "studies": 5,
    "curation": 5,  # filters over data with evaluation's encoders; a sibling of studies (no imports between)
    "demo": 6,
    "commands": 6,  # handlers cli.py delegates to (list, explain, plan): below cli, which imports it
    "report": 6,  # contrastkit report: HTML pages of what train, evaluation and studies wrote
    "cli": 7,
    "__main__": 8,
    "__init__": 9,
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("contrastkit"):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("contrastkit"))


def test_no_upward_or_sideways_imports():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        own = layer_of(".".join(rel.parts)) if len(rel.parts) > 1 else "__init__"
        if rel.parts[-1] in ("cli", "demo"):
            own = rel.parts[-1]
        for mod in imports(path):
            target = layer_of(mod)
            if target == own:
                continue
            if RANK[target] >= RANK[own]:
                bad.append(f"{rel} imports {mod}")
    assert not bad, "\n".join(bad)


def test_importing_the_package_does_no_work():
    import subprocess
    import sys

    code = "import time; t=time.perf_counter(); import contrastkit; print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 2.0  # no data generation, model building or heavy imports at import time
