"""contrastkit report: the pages of a tiny run, two runs and a tiny study hold exactly what the run
and study folders hold — every metric of eval.json in its printed form with its full value, the
pictures as PNG files beside the page, failures read defensively, clear errors for bad input."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.report import build_report
from contrastkit.report.curves import panels, scalar_series
from contrastkit.report.render import format_value
from contrastkit.train.logger import read_metrics
from tests.report.conftest import FAILURES, write_failures
from tests.report.page import Page

PNG = b"\x89PNG\r\n\x1a\n"


def printed(value: float, name: str) -> str:
    """The page's number format, written out: 4 decimals, counts without, NaN as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.0f}" if name.endswith("_queries") else f"{value:.4f}"


def check_assets(page: Page) -> None:
    """Every picture is a PNG file inside the report folder; no URL leaves it; no script."""
    assert page.scripts == 0
    for url in page.urls:
        assert url == "data:," or not re.match(r"^[a-z][a-z0-9+.-]*:|^//|^/", url, re.I), url
    for img in page.images:
        path = (page.path.parent / img["src"]).resolve()
        assert path.is_relative_to(page.path.parent.resolve()), img["src"]
        assert path.read_bytes()[:8] == PNG, img["src"]
    for url in page.urls:
        if url.endswith(".html"):
            assert (page.path.parent / url).is_file(), url


def fake_run(src: Path, dest: Path, scale: float = 1.0, seed: int | None = None) -> Path:
    """A run folder without checkpoints: ``src``'s config, metrics.jsonl and eval.json (metrics
    times ``scale``; config ``train.seed`` = ``seed``)."""
    import yaml

    dest.mkdir(parents=True)
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    if seed is not None:
        cfg["train"]["seed"] = seed
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copyfile(src / "metrics.jsonl", dest / "metrics.jsonl")
    report = json.loads((src / "eval.json").read_text())
    report["metrics"] = {s: {k: v * scale for k, v in m.items()} for s, m in report["metrics"].items()}
    (dest / "eval.json").write_text(json.dumps(report))
    return dest


def test_run_page_holds_every_metric_exactly(tiny_run, tmp_path):
    index = build_report(tiny_run, tmp_path / "not" / "yet" / "there")  # parents created
    page = Page(index)
    check_assets(page)
    report = json.loads((tiny_run / "eval.json").read_text())
    tables = {t.attrs["data-family"]: t for t in page.tables_of("metrics")}
    assert set(tables) == {"zeroshot", "retrieval"}
    n = 0
    for split, metrics in report["metrics"].items():
        for name, value in metrics.items():
            table = tables[name.split("/")[0]]
            col = [c.text for c in table.rows[0]].index(split)
            cell = table.row(name)[col]
            assert cell.text == printed(value, name), name
            assert cell.attrs["title"] == repr(value)
            n += 1
    assert n == sum(len(m) for m in report["metrics"].values()) > 20
    # protocol: every task definition, the data record; the config verbatim
    for task, definition in report["protocol"]["metric_definitions"].items():
        assert [task, definition] in [[c.text for c in r] for r in page.tables_of("definitions")[0].rows]
    assert (tiny_run / "config.yaml").read_text() in page.text
    captions = [img["alt"] for img in page.images]
    assert "image–text similarity of a held-out batch" in captions
    assert "test: cka layers" in captions and "unseen: geometry spectrum" in captions
    curves = next(c for c in captions if c.startswith("logged during training"))
    for panel in (
        "loss",
        "logit scale",
        "learning rate",
        "skipped steps (total)",
        "data wait vs step compute (s)",
    ):
        assert panel in curves
    # failures: one thumbnail per entry (the same bytes), caption escaped, rank, top 5
    rows = page.tables_of("failures")[0].rows[1:]
    assert len(rows) == len(FAILURES["retrieval"])
    for row, entry in zip(rows, FAILURES["retrieval"]):
        assert row[1].text == entry["caption"] and row[2].text == str(entry["rank"])
        assert row[3].items == entry["top5"]
    thumbs = [img for img in page.images if img.get("class") == "thumb"]
    src = tiny_run / "plots" / "test" / "errors"
    for img, entry in zip(thumbs, FAILURES["retrieval"]):
        assert (index.parent / img["src"]).read_bytes() == (src / entry["image"]).read_bytes()
    assert "&lt;b&gt;0&lt;/b&gt;" in page.raw and "<b>0</b>" not in page.raw  # autoescaped
    assert not any("retrieval-0" in img["alt"] for img in page.images if img.get("class") != "thumb")


def test_series_and_panels_read_metrics_jsonl_exactly(tiny_run):
    rows = read_metrics(tiny_run)
    series = scalar_series(rows)
    for key in ("loss", "lr", "logit_scale", "data_time", "skipped_total"):
        naive = [(r["step"], float(r[key])) for r in rows if key in r]
        steps, values = series[key]
        assert steps.tolist() == [s for s, _ in naive] and values.tolist() == [v for _, v in naive]
    chosen, left = panels(["loss", "zeta", "step_time", "data_time", "skipped/missing", "skipped_samples"])
    assert chosen == [
        ("loss", ["loss"]),
        ("skipped samples", ["skipped_samples", "skipped/missing"]),
        ("data wait vs step compute (s)", ["data_time", "step_time"]),
        ("zeta", ["zeta"]),
    ]
    assert left == []
    assert panels([f"k{i}" for i in range(5)], max_panels=3) == (
        [("k0", ["k0"]), ("k1", ["k1"]), ("k2", ["k2"])],
        ["k3", "k4"],
    )


@pytest.mark.parametrize(
    "content,note",
    [
        ("{not json", "failures.json is malformed (Expecting property name"),
        ("[1, 2]", "is malformed: expected an object of lists"),
        ('{"retrieval": "oops"}', "'retrieval' is not a list of entries (str); skipped"),
    ],
)
def test_malformed_failures_are_a_note(tiny_run, tmp_path, content, note):
    run = fake_run(tiny_run, tmp_path / "run")
    write_failures(run / "plots" / "test" / "errors", content)
    page = Page(build_report(run, tmp_path / "out"))
    notes = [t for t in page.texts if "failures.json" in t]
    assert any(note in t for t in notes), notes
    assert not [img for img in page.images if img.get("class") == "thumb"]
    check_assets(page)


def test_bad_failure_entries_are_skipped_or_shown_without_a_picture(tiny_run, tmp_path):
    run = fake_run(tiny_run, tmp_path / "run")
    entries = [
        1,
        {"image": "../config.png", "caption": "outside"},
        {"image": "missing.png", "caption": "gone"},
        {"image": "retrieval-0.png", "caption": "ok", "rank": "3", "top5": "one", "score": 0.5},
    ]
    folder = run / "plots" / "test" / "errors"
    write_failures(folder, {"retrieval": entries})
    (folder / "retrieval-1.png").write_bytes(b"not a png")
    page = Page(build_report(run, tmp_path / "out"))
    check_assets(page)
    assert "plots/test/errors/failures.json: 1 entry of 'retrieval' not an object; skipped" in page.text
    rows = page.tables_of("failures")[0].rows[1:]
    assert [r[0].text for r in rows] == [
        "image '../config.png' is not a file name in this folder",
        "image missing.png missing or not a PNG",
        "",
    ]
    assert (
        rows[2][1].text.split("score") == ["ok", ": 0.5"]
        and rows[2][2].text == "3"
        and rows[2][3].items == ["one"]
    )
    assert len([img for img in page.images if img.get("class") == "thumb"]) == 1
    # the unreferenced non-PNG is named, not linked
    assert "plots/test/errors/retrieval-1.png is not a readable PNG; not shown" in page.text


def test_unevaluated_run_says_so_and_evaluate_evaluates(tiny_plain, tmp_path):
    run = shutil.copytree(tiny_plain, tmp_path / "tiny-plain")
    page = Page(build_report(run, tmp_path / "out"))
    assert "This run has not been evaluated yet" in page.text and not page.tables_of("metrics")
    assert any(img["alt"].startswith("logged during training") for img in page.images)
    page = Page(build_report(run, tmp_path / "out", evaluate=True))
    report = json.loads((run / "eval.json").read_text())
    assert "not been evaluated" not in page.text
    table = next(t for t in page.tables_of("metrics") if t.attrs["data-family"] == "zeroshot")
    cell = table.row("zeroshot/color/top1")[1]
    assert cell.text == printed(report["metrics"]["test"]["zeroshot/color/top1"], "")
    check_assets(page)


def test_compare_puts_metrics_side_by_side_with_differences(tiny_run, tmp_path):
    other = fake_run(tiny_run, tmp_path / "other", scale=0.5, seed=7)
    page = Page(build_report(tiny_run, tmp_path / "out", compare=other))
    check_assets(page)
    a = json.loads((tiny_run / "eval.json").read_text())["metrics"]
    b = json.loads((other / "eval.json").read_text())["metrics"]
    tables = {t.attrs["data-family"]: t for t in page.tables_of("compare")}
    for split, metrics in a.items():
        for name, va in metrics.items():
            table = tables[name.split("/")[0]]
            col = 1 + 3 * [c.text for c in table.rows[0][1:]].index(split)
            cells = table.row(name)[col : col + 3]
            vb = b[split][name]
            if math.isnan(va):
                assert [c.text for c in cells] == ["—", "—", "—"]
                continue
            digits = 0 if name.endswith("_queries") else 4
            assert [c.text for c in cells] == [printed(va, name), printed(vb, name), f"{vb - va:+.{digits}f}"]
    assert ["train.seed", "0", "7"] in [[c.text for c in r] for r in page.tables_of("config-diff")[0].rows]
    assert any(img["alt"].startswith("A and B: loss") for img in page.images)
    assert len(page.tables_of("metrics")) == 4  # and each run's own tables below


def test_study_page_and_its_run_pages(tiny_study, tmp_path):
    import pyarrow.parquet as pq

    index = build_report(tiny_study, tmp_path / "out")
    page = Page(index)
    check_assets(page)
    rows = pq.read_table(tiny_study / "results.parquet").to_pylist()
    settings = {r[0].text: r for r in page.tables_of("settings")[0].rows[1:]}
    assert set(settings) == {"loss.name=clip", "loss.name=siglip"}
    for label, cells in settings.items():
        values = [r["value"] for r in rows if f"loss.name={r['loss.name']}" == label]
        assert cells[2].text == f"{np.mean(values):.4f}" and cells[3].text == f"{min(values):.4f}"
        for r in rows:
            if f"loss.name={r['loss.name']}" == label:
                assert f"{r['run']} (seed {r['seed']}: {r['value']:.4f})" in cells[1].text
    # report.md's tables, cell for cell (code spans and emphasis are markup, not text)
    md = [line for line in (tiny_study / "report.md").read_text().splitlines() if line.startswith("| ")]
    shown = [[c.text for c in r] for t in page.tables_of("md") for r in t.rows]
    for line in md:
        cells = [re.sub(r"[`*]", "", c.strip()) for c in line.strip().strip("|").split("|")]
        assert cells in shown, cells
    assert any(row[0] == "loss.name=siglip  vs  loss.name=clip" for row in shown)
    for name in ("forest.png", "curves.png"):
        img = next(i for i in page.images if i["src"].endswith(name))
        assert (index.parent / img["src"]).read_bytes() == (tiny_study / name).read_bytes()
    assert any(i["alt"].startswith("redrawn from the runs' metrics.jsonl") for i in page.images)
    # one page per run, with the study's evaluation in the study split's column
    for r in rows:
        sub = Page(index.parent / f"run-{r['run']}.html")
        check_assets(sub)
        flat = json.loads((tiny_study / "runs" / r["run"] / "eval_metrics.json").read_text())
        table = next(t for t in sub.tables_of("metrics") if t.attrs["data-family"] == "zeroshot")
        assert [c.text for c in table.rows[0]] == ["zeroshot", "test"]
        assert table.row("zeroshot/shape+color/top1")[1].text == f"{flat['zeroshot/shape+color/top1']:.4f}"
        assert flat["zeroshot/shape+color/top1"] == pytest.approx(r["value"], rel=1e-6)  # float32 mean
        assert "index.html" in sub.urls


def test_bad_input_is_one_clear_line(tiny_run, tiny_study, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"is neither a contrastkit run nor a study: expected a run folder"):
        build_report(empty, tmp_path / "out")
    with pytest.raises(InputError, match=r"does not exist: expected a run folder \(with config.yaml\)"):
        build_report(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(InputError, match="--compare compares two runs; .* is a study folder"):
        build_report(tiny_study, tmp_path / "out", compare=tiny_run)
    with pytest.raises(InputError, match="is not a run folder"):
        build_report(tiny_run, tmp_path / "out", compare=tiny_study)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--out .*file is a file, not a folder"):
        build_report(tiny_run, tmp_path / "file")
    assert main(["report", str(empty), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "study folder (with results.parquet" in err


def test_existing_out_keeps_other_files(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "index.html").write_text("old")
    assert main(["report", str(tiny_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'index.html'}"
    assert (out / "notes.txt").read_text() == "mine" and (out / "index.html").read_text() != "old"


def test_templates_are_package_data():
    import importlib.resources
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = importlib.resources.files("contrastkit.report") / "templates"
    names = sorted(p.name for p in shipped.iterdir() if p.name.endswith(".html.j2"))
    assert names == ["_macros.html.j2", "base.html.j2", "run.html.j2", "study.html.j2"]
    assert data["contrastkit.report"] == ["templates/*.html.j2"]
    assert format_value(3) == "3" and format_value(float("nan")) == "—" and format_value(0.12345) == "0.1235"
