"""Every `contrastkit ...` command in a ```bash block of README.md and docs/*.md parses with the
CLI's own argparse parser, and every option it names exists (nothing is executed); the documented
`contrastkit wise` commands carry the options their tables were measured with.

Synopsis notation is expanded first: ``[X]`` → X, ``a|b|c`` → one command per alternative,
an all-capitals placeholder (N, DIR, SRC) → ``1``; a line ending in ``...`` is elided, so only its
option names are checked."""

import argparse
import itertools
import re
import shlex
from pathlib import Path

import pytest

from contrastkit.cli import _parser
from contrastkit.evaluation import EVAL_TASKS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# How the WiSE-FT tables of README.md and docs/real-data.md were measured (docs/real-data.md):
# at most 2,000 images per split, Fashion-MNIST test as the reference, batch-norm recalibration on
# 512 images (the default).
WISE_TABLE = {
    "run": "runs/fashion-to-digits",
    "n": 2000,
    "reference": "fashion_mnist:test",
    "recalibrate": 512,
}


def _lines(path: Path) -> list[str]:
    """The argument text of each ``contrastkit`` (or ``… -m contrastkit``) line of the file's bash
    blocks, backslash continuations joined, trailing comments dropped."""
    out = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", path.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            m = re.match(r"\s*(?:\S.*?\s-m\s+)?contrastkit\s+(.*)", line)
            if m:
                out.append(re.sub(r"\s+#(\s.*)?$", "", m.group(1)).strip())
    return out


def _expand(line: str) -> tuple[list[list[str]], bool]:
    """Synopsis → concrete argument lists, and whether the line is elided (``...``)."""
    line = re.sub(r"(?<![=\w])\[([^\[\]]*)\]", r"\1", line)  # [optional] (not a YAML list: x=[a,b])
    tokens = shlex.split(line)
    elided = tokens[-1:] == ["..."]
    tokens = ["1" if re.fullmatch(r"[A-Z]+", t) else t for t in tokens if t != "..."]
    choices = [t.split("|") if re.fullmatch(r"[\w.:-]+(\|[\w.:-]+)+", t) else [t] for t in tokens]
    return [list(c) for c in itertools.product(*choices)], elided


def _commands() -> list[tuple[str, list[str], bool]]:
    out = []
    for path in DOCS:
        for line in _lines(path):
            variants, elided = _expand(line)
            out += [(f"{path.name}: contrastkit {line}", argv, elided) for argv in variants]
    return out


COMMANDS = _commands()


def _subparser(argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that reads the options of ``argv``: follow the sub-command names."""
    parser, rest = _parser(), list(argv)
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        names = [t for t in rest if not t.startswith("-")]
        if sub is None or not names:
            return parser
        assert names[0] in sub.choices, f"unknown sub-command {names[0]!r}; choices: {list(sub.choices)}"
        parser, rest = sub.choices[names[0]], rest[rest.index(names[0]) + 1 :]


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 30
    assert {argv[0] for _, argv, _ in COMMANDS} >= {
        "demo",
        "train",
        "eval",
        "wise",
        "data",
        "export",
        "study",
    }


@pytest.mark.parametrize(("where", "argv", "elided"), COMMANDS, ids=[c[0][:90] for c in COMMANDS])
def test_documented_command_parses(where, argv, elided, capsys):
    parser = _subparser(argv)
    known = {s for a in parser._actions for s in a.option_strings}
    for token in argv:
        if token.startswith("--"):
            assert token.split("=")[0] in known, f"{where}: {token} is not an option of {parser.prog}"
    if elided:
        return
    try:
        args = _parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: {capsys.readouterr().err.strip()}")
    for path in [v for v in vars(args).values() if isinstance(v, str) and v.startswith("configs/")]:
        assert (ROOT / path).is_file(), f"{where}: {path} does not exist"
    if args.command == "eval":
        assert set(args.tasks.split(",")) <= set(EVAL_TASKS.names()), f"{where}: unknown task"


def _table_alphas(path: Path) -> set[float]:
    """The α values of a WiSE-FT table: README's 'at α = 0, 0.6, 1' or real-data.md's α column."""
    text = path.read_text()
    if path.name == "README.md":
        row = next(r for r in text.splitlines() if r.startswith("| WiSE-FT"))
        return {float(a) for a in re.search(r"α = ([\d., ]+\d)", row).group(1).split(", ")}
    table = text.split("| α |", 1)[1].split("\n\n", 1)[0]
    return {float(m) for m in re.findall(r"^\| ([\d.]+)", table, re.M)}


def test_wise_commands_carry_the_options_their_tables_were_made_with():
    wise = [(w, argv) for w, argv, _ in COMMANDS if argv[0] == "wise"]
    assert {w.split(":")[0] for w, _ in wise} == {"README.md", "real-data.md"}
    for where, argv in wise:
        args = _parser().parse_args(argv)
        made_with = {
            "run": args.run,
            "n": args.n,
            "reference": args.reference,
            "recalibrate": args.recalibrate,
        }
        assert made_with == WISE_TABLE, where
        alphas = {float(a) for a in args.alphas.split(",")}
        table = _table_alphas(ROOT / ("README.md" if where.startswith("README") else "docs/real-data.md"))
        assert len(table) >= 3 and table <= alphas, f"{where}: the table's α {sorted(table)} not all swept"
