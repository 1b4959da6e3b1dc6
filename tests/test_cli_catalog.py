"""Discoverability: ``contrastkit list``, ``contrastkit explain``, the tasks of ``eval --help``, and the
README's command list agreeing with ``contrastkit --help`` and the CLI module's docstring."""

import re
from pathlib import Path

import pytest

import contrastkit.cli
from contrastkit.cli import main
from contrastkit.core.catalog import describe, spec_ids, type_label
from contrastkit.core.registry import PositiveInt, Probability, Registry

README = Path(__file__).resolve().parents[1] / "README.md"


def _run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _help(args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_list_tasks(capsys):
    code, out, _ = _run(["list", "tasks"], capsys)
    names = out.split()
    assert code == 0 and {"zeroshot", "retrieval", "probe", "geometry"} <= set(names)
    assert names == sorted(names)


def test_list_sources_and_datasets_are_separate(capsys):
    assert _run(["list", "sources"], capsys)[1].split() == [
        "csv",
        "hf",
        "imagefolder",
        "parquet",
        "tsv",
        "webdataset",
    ]
    datasets = _run(["list", "datasets"], capsys)[1].split()
    assert "shapes" in datasets and "csv" not in datasets


def test_list_losses_verbose(capsys):
    code, out, _ = _run(["list", "losses", "--verbose"], capsys)
    assert code == 0
    block = out.split("\nclip  ", 1)[1].split("\nclip_in", 1)[0].splitlines()
    assert block[0].startswith("[L-CLIP]  Module form of clip_loss")
    params = [line.strip() for line in block[1:]]
    assert params == [
        "init_temperature: float > 0 = 0.07",
        "learnable: bool = True",
        "max_scale: float >= 1 = 100.0",
        "init_bias: float | None = None",
        "allow_single: bool = False",
        "similarity: str = 'cosine'",
        "bandwidth: float > 0 = 1.0",
    ]
    assert "\ndcl  [L-DCL]" in out and "\nhn_nce  [L-HNNCE]" in out  # ids from class / module docs
    assert "\n    dim: int >= 1  (required)" in out  # moco2's queue dimension has no default


def test_list_verbose_leaves_out_run_time_parameters(capsys):
    out = _run(["list", "datasets", "-v"], capsys)[1]
    shapes = out.split("\nshapes  ", 1)[1].splitlines()
    assert "    image_size: int in [16, 256] = 32" in shapes
    assert not any(line.strip().startswith("split") for line in shapes)  # filled in from data.splits
    tasks = _run(["list", "tasks", "-v"], capsys)[1]
    assert "zeroshot  [E-ZEROSHOT]  E-ZEROSHOT on every labelled class task" in tasks
    assert "ctx" not in tasks


def test_list_everything(capsys):
    out = _run(["list"], capsys)[1]
    for kind, name in [("tasks", "zeroshot"), ("losses", "siglip"), ("towers", "timm"), ("sources", "csv")]:
        assert f"{kind}:\n" in out and f"\n  {name}\n" in out


def test_explain_prints_the_card(capsys):
    code, out, _ = _run(["explain", "clip"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "clip — loss (contrastkit.losses.clip.CLIPLoss)"
    assert lines[1] == "spec id: L-CLIP"
    assert "  init_temperature: float > 0 = 0.07" in lines
    assert "Module form of clip_loss holding θ_s = log s (and an optional bias)." in out  # the docstring
    assert "max_scale: clamp s ≤ max_scale after each optimizer step" in out  # its Args section
    assert "Radford et al. 2021" in out  # the module's card
    assert "``" not in out and ":func:" not in out


def test_explain_tasks_and_sources_and_case(capsys):
    assert "E-RETRIEVAL both directions" in _run(["explain", "retrieval"], capsys)[1]
    out = _run(["explain", "csv"], capsys)[1]
    assert out.startswith("csv — data source") and "  path: str | Path  (required)" in out
    assert _run(["explain", "InfoNCE"], capsys)[1].startswith("infonce — loss")


def test_explain_unknown_name(capsys):
    code, out, err = _run(["explain", "nonsense"], capsys)
    assert code == 2 and out == ""
    assert "no component named 'nonsense'; did you mean: infonce (losses)" in err  # first of the close names
    code, _, err = _run(["explain", "sigclip"], capsys)
    assert code == 2 and "did you mean: siglip (losses), clip (losses)" in err
    code, _, err = _run(["explain", "qqqqqq"], capsys)
    assert code == 2 and "did you mean" not in err and "`contrastkit list` shows every name" in err


def test_eval_help_lists_the_tasks(capsys):
    out = _help(["eval", "--help"], capsys)
    assert "--tasks TASKS" in out and "evaluation tasks (--tasks" in out
    tasks = out.split("evaluation tasks (--tasks", 1)[1]
    for name, words in [
        ("zeroshot", "E-ZEROSHOT on every labelled"),
        ("retrieval", "E-RETRIEVAL both directions"),
        ("probe", "Linear, kNN, few-shot"),
        ("winoground", "E-WINOGROUND + E-GROUPMATCH"),
    ]:
        assert re.search(rf"^  {name} +{re.escape(words)}", tasks, re.M), name
    from contrastkit.evaluation import EVAL_TASKS

    for name in EVAL_TASKS.names():  # the longest name too keeps a gap before its description
        assert re.search(rf"^  {name}  +\S", tasks, re.M), name


def _subcommands(text: str) -> set[str]:
    """``contrastkit X`` (or ``-m contrastkit X``) at the start of a line, any X."""
    return set(re.findall(r"^(?:\S.*?-m )?contrastkit ([a-z]+)", text, re.M))


def test_readme_command_list_matches_help(capsys):
    usage = _help(["--help"], capsys)
    in_help = set(re.search(r"\{([a-z,]+)\}", usage).group(1).split(","))
    section = README.read_text().split("## Command line", 1)[1]
    in_readme = _subcommands(re.search(r"```bash\n(.*?)```", section, re.S).group(1))
    in_docstring = _subcommands(contrastkit.cli.__doc__)
    assert {"list", "explain", "eval", "train"} <= in_help
    assert in_readme == in_help, f"README only: {in_readme - in_help}; --help only: {in_help - in_readme}"
    assert in_docstring == in_help, f"cli docstring differs: {in_docstring ^ in_help}"


def test_catalog_on_a_small_registry():
    reg: Registry[object] = Registry("thing")

    @reg.register("widget")
    def widget(split: str, size: PositiveInt, p: Probability = 0.5, mode: str = "a", **kw: int) -> object:
        """L-WIDGET — a test builder.

        More text."""

    c = describe(reg, "widget", runtime=("split",))
    assert [str(p) for p in c.params] == [
        "size: int >= 1  (required)",
        "p: float in [0, 1] = 0.5",
        "mode: str = 'a'",
    ]
    assert c.spec_ids == ("L-WIDGET",) and c.summary == "L-WIDGET — a test builder."
    assert spec_ids(widget, "other") == ("L-WIDGET",)
    assert type_label(PositiveInt | None) == "int >= 1 | None"
