"""``contrastkit curate`` end to end on a tiny exported Shapes CSV, and the Python API: the kept rows
read back through the csv source, the report's counts, removed rows and their reasons, the plots."""

import csv
import dataclasses
import json
import shutil

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from contrastkit.cli import main
from contrastkit.curation import curate, load_curation_model
from contrastkit.curation.output import plot_scores
from contrastkit.data import SOURCES, ImageConfig, make_shapes
from contrastkit.evaluation import Encoders


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from contrastkit.train import RunConfig, train

    cfg = RunConfig.tiny(out_dir=str(tmp_path_factory.mktemp("runs")))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, ckpt_every=2))
    return train(cfg).run_dir


@pytest.fixture
def shapes_csv(tmp_path):
    """40 Shapes rows exported as pairs.csv + images/, then rows 0-3 appended again (exact duplicates)."""
    assert main(["data", "export", "shapes:train", "--param", "n=40", "--out", str(tmp_path / "src")]) == 0
    path = tmp_path / "src" / "pairs.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    with open(path, "a", newline="") as f:
        csv.writer(f).writerows(rows[1:5])
    return path


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_end_to_end(tmp_path, shapes_csv, tiny_run, capsys):
    out = tmp_path / "curated"
    args = ["curate", str(shapes_csv), "--filter", "near_duplicates", "--param", "threshold=1.0"]
    args += ["--filter", "clip_score", "--param", "keep=0.5", "--filter", "complexity"]
    args += ["--model", str(tiny_run), "--out", str(out), "--no-progress"]
    args += ["--data-param", "caption_columns=[caption, caption_1]", "--data-param", "label_columns=[color]"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{shapes_csv} (train): 44 rows, ")
    report = json.loads((out / "curation.json").read_text())
    dup, clip, cx = report["steps"]
    # near duplicates: exactly the 4 appended copies, each pointing at its original
    assert (dup["rows_in"], dup["removed"]) == (44, 4)
    removed = _read(out / "removed.csv")
    twins = {r["source_row"]: r["duplicate_of"] for r in removed if r["filter"] == "near_duplicates"}
    assert twins == {"40": "0", "41": "1", "42": "2", "43": "3"}
    # clip_score: ⌊40·0.5⌋ + 1 = 21 rows (no ties), then complexity ≥ 3 on the max caption
    assert (clip["rows_in"], clip["kept"], clip["params"]["keep"]) == (40, 21, 0.5)
    assert clip["reasons"] == {f"clip_score < {clip['threshold']:.4f}": 19}
    assert cx["rows_in"] == 21 and report["kept"] == cx["kept"] == 21 - cx["removed"]
    assert report["removed"] == 44 - report["kept"]
    assert sum(report["removed_by_reason"].values()) == report["removed"] == len(removed)
    assert report["model"]["kind"] == "contrastkit-run" and report["model"]["checkpoint"] == "step_00000002"
    assert {
        f"scores-{k}-{n}.png" for k, n in [(1, "near_duplicates"), (2, "clip_score"), (3, "complexity")]
    } <= {p.name for p in out.iterdir()}
    assert "| 2 | clip_score | keep=0.5" in (out / "curation.md").read_text()
    # the kept rows read back through the csv source, with the source's captions and labels
    kept = _read(out / "pairs.csv")
    table = SOURCES.build("csv", split="train", **report["data_config"]["params"])
    assert len(table) == len(kept) == report["kept"]
    original = _read(shapes_csv)
    for k, row in enumerate(kept):
        src = original[int(row["source_row"])]
        assert table.captions[k] == (src["caption"], src["caption_1"])
        color, label = table.tasks["color"], table.tasks["color"].labels[k]
        assert (color.classnames[label] if label >= 0 else "") == src["color"]  # "": two objects
        assert row["image"] == str((shapes_csv.parent / src["image"]).resolve())  # the original file
    scores = np.array([float(r["score_clip_score"]) for r in kept])
    assert (scores >= clip["threshold"] - 1e-6).all()
    assert table.read(0, ImageConfig(size=32)).shape == (3, 32, 32)


def test_cli_errors_are_one_line(tmp_path, shapes_csv, capsys):
    base = ["curate", str(shapes_csv), "--out", str(tmp_path / "o")]
    assert main([*base, "--filter", "clip_score"]) == 2
    assert capsys.readouterr().err == (
        "error: filter clip_score needs a model: a contrastkit run or a Hugging Face CLIP/SigLIP folder\n"
    )
    assert main([*base, "--filter", "dedup"]) == 2
    assert (
        "unknown filter 'dedup'; available: clip_score, complexity, near_duplicates"
        in capsys.readouterr().err
    )
    assert main([*base, "--filter", "clip_score", "--param", "keep=2"]) == 2
    assert "parameter keep must be in [0, 1], got 2" in capsys.readouterr().err
    assert main([*base, "--filter", "complexity", "--model", str(tmp_path)]) == 0  # no model needed
    capsys.readouterr()
    assert main([*base, "--filter", "complexity"]) == 2
    assert "already holds a curation (pairs.csv)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--param", "keep=0.3", "--filter", "clip_score"])
    assert "--param keep=0.3 comes before any --filter" in capsys.readouterr().err


def test_list_and_explain_filters(capsys):
    assert main(["list", "filters"]) == 0
    assert capsys.readouterr().out.split() == ["clip_score", "complexity", "near_duplicates"]
    assert main(["explain", "clip_score"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("clip_score — filter (contrastkit.curation.filters.ClipScore)")
    assert "spec id: D-CLIPSCORE-FILTER" in out and "Gadre et al. 2023" in out


def _colour_encoders() -> Encoders:
    """Images → their mean RGB; captions → the RGB of the Shapes colour they name (an oracle)."""
    from contrastkit.data.shapes import COLORS

    def images(x):
        return torch.nn.functional.normalize(x.float().mean(dim=(2, 3)), dim=-1)

    def texts(t):
        rgb = [next((v for c, v in COLORS.items() if c in s.split()), (1, 1, 1)) for s in t]
        return torch.nn.functional.normalize(torch.tensor(rgb, dtype=torch.float32), dim=-1)

    return Encoders(images, texts)


def test_python_api_on_a_pair_set_with_swapped_captions(tmp_path):
    pairs = make_shapes("train", n=60, seed=3)
    swapped = list(pairs.captions)
    for i in range(0, 60, 5):  # every 5th row gets the captions of the row 2 after it
        swapped[i] = pairs.captions[(i + 2) % 60]
    noisy = dataclasses.replace(pairs, captions=tuple(swapped))
    enc = _colour_encoders()
    report = curate(noisy, [("clip_score", {"keep": 0.8, "exact_count": True})], tmp_path / "c", model=enc)
    assert report["kept"] == 48 and report["model"] == {"kind": "callables"}
    # the same scores computed directly: mean over captions of cos(image, caption)
    img = enc.images(pairs.images)
    s = np.array(
        [float(torch.stack([img[i] @ t for t in enc.texts(list(c))]).mean()) for i, c in enumerate(swapped)]
    )
    want = np.sort(np.argsort(-s, kind="stable")[:48])
    kept = [int(r["source_row"]) for r in _read(tmp_path / "c" / "pairs.csv")]
    assert kept == want.tolist()
    table = SOURCES.build("csv", split="train", **report["data_config"]["params"])  # images written here
    assert torch.equal(table.read(0, ImageConfig(size=32)), pairs.images[kept[0]])


def test_unreadable_rows_and_byte_images(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from contrastkit.data.convert import encode_image

    pairs = make_shapes("train", n=6)
    cells = [encode_image(pairs.images[i]) for i in range(6)]
    cells[2] = b"not an image"
    table = pa.table({"image": cells, "caption": [c[0] for c in pairs.captions]})
    table = table.set_column(
        1, "caption", pa.array(["a red circle", "", *[c[0] for c in pairs.captions[2:]]])
    )
    pq.write_table(table, tmp_path / "p.parquet")
    report = curate(
        str(tmp_path / "p.parquet"),
        [("near_duplicates", {"threshold": 1.0})],
        tmp_path / "c",
        model=_colour_encoders(),
    )
    assert [(s["filter"], s["reasons"]) for s in report["steps"][:2]] == [
        ("read", {"empty caption": 1}),
        ("read", {"bad image": 1}),
    ]
    kept = _read(tmp_path / "c" / "pairs.csv")
    assert [r["image"] for r in kept] == [f"images/{i:07d}.png" for i in (0, 3, 4, 5)]
    assert report["removed_by_reason"] == {"empty caption": 1, "bad image": 1}
    assert (tmp_path / "c" / "images" / "0000000.png").read_bytes() == cells[0]


def test_copy_images_and_model_errors(tmp_path, shapes_csv):
    report = curate(
        str(shapes_csv), [("complexity", {"min_complexity": 5})], tmp_path / "c", copy_images=True
    )
    kept = _read(tmp_path / "c" / "pairs.csv")
    assert len(kept) == report["kept"] and all(r["image"].startswith("images/") for r in kept)
    shutil.rmtree(shapes_csv.parent / "images")  # the copies do not need the originals
    table = SOURCES.build("csv", split="train", **report["data_config"]["params"])
    assert table.read(0, ImageConfig(size=32)).shape == (3, 32, 32)
    again = curate(
        report["data_config"]["params"]["path"], [("complexity", {"min_complexity": 5})], tmp_path / "d"
    )
    assert again["kept"] == again["rows"] == report["kept"]  # filtering twice = filtering once
    with pytest.raises(FileNotFoundError, match="not a contrastkit run \\(no config.yaml\\)"):
        load_curation_model(tmp_path)


def test_score_histogram_is_labelled(tmp_path, monkeypatch):
    figs = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figs.append(self), original(self, *a, **k)))
    scores = np.linspace(-0.2, 0.6, 50)
    plot_scores(
        scores, scores >= 0.3, 0.3, tmp_path / "h.png", "clip_score: 19 of 50 kept", "cosine", "τ = 0.3"
    )
    assert (tmp_path / "h.png").stat().st_size > 3000
    ax = figs[0].axes[0]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
        "clip_score: 19 of 50 kept",
        "cosine",
        "number of rows",
    )
    assert ax.get_legend_handles_labels()[1] == ["kept (19)", "removed (31)", "τ = 0.3"]


def test_hugging_face_model_scores(tmp_path, shapes_csv):
    from contrastkit.evaluation import hf_encoders
    from tests.hf_checkpoints import save_clip

    folder = save_clip(tmp_path / "clip", ["a red circle", "a blue square", "there is a star"])
    report = curate(str(shapes_csv), [("clip_score", {"threshold": -1.0})], tmp_path / "c", model=folder)
    assert report["model"]["kind"] == "hf-clip" and report["kept"] == 44
    # decoded at the processor's shortest edge (40), then the model's own resize + 32×32 crop
    table = SOURCES.build("csv", split="train", path=str(shapes_csv))
    images = torch.stack([table.read(i, ImageConfig(size=40)) for i in range(44)])
    enc = hf_encoders(folder)
    want = (enc.images(images) * enc.texts([c[0] for c in table.captions])).sum(1).numpy()
    got = [float(r["score_clip_score"]) for r in _read(tmp_path / "c" / "pairs.csv")]
    assert got == pytest.approx(want, abs=1e-5)
