"""`contrastkit data shards` and `contrastkit data inspect` on tiny CSV and ImageFolder sources."""

import csv
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from contrastkit.cli import main
from contrastkit.data import ImageConfig, make_shapes
from contrastkit.data.convert import encode_image
from contrastkit.data.inspect import resolve_source
from contrastkit.data.shards import ShardSource, make_webdataset
from contrastkit.data.table import PairTable

N = 64


@pytest.fixture(scope="module")
def shapes():
    return make_shapes("train", n=N, image_size=32)


def write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption", "caption2"])
        w.writerows(rows)


@pytest.fixture(scope="module")
def csv_source(tmp_path_factory, shapes):
    root = tmp_path_factory.mktemp("csv")
    (root / "img").mkdir()
    rows = []
    for i in range(N):
        (root / "img" / f"{i}.png").write_bytes(encode_image(shapes.images[i]))
        rows.append((f"img/{i}.png", shapes.captions[i][0], shapes.captions[i][-1]))
    write_csv(root / "pairs.csv", rows)
    return root / "pairs.csv", rows


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shapes):
    """An ImageFolder of the Shapes images that have a single shape, by shape name."""
    root = tmp_path_factory.mktemp("folder") / "photos"
    task = shapes.tasks["shape"]
    for i in np.flatnonzero(task.labels >= 0):
        d = root / task.classnames[task.labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.png").write_bytes(encode_image(shapes.images[i]))
    return root


def test_shards_from_csv_match_the_rows(tmp_path, csv_source, capsys):
    path, rows = csv_source
    out = tmp_path / "shards"
    args = ["data", "shards", str(path), "--out", str(out), "--shard-size", "20", "--no-progress"]
    assert main([*args, "--param", "caption_columns=[caption, caption2]"]) == 0
    summary = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == N and manifest["skipped"] == {}
    assert [s["samples"] for s in manifest["shards"]] == [20, 20, 20, 4]
    for s in manifest["shards"]:
        data = (out / s["name"]).read_bytes()
        assert s["bytes"] == len(data) and s["sha256"] == hashlib.sha256(data).hexdigest()
    assert "4 shard(s) with 64 samples" in summary and "shard-{000000..000003}.tar" in summary
    source = make_webdataset("train", str(out / manifest["urls"]))
    pairs, skips = source.pairset(ImageConfig(size=32))
    assert not skips and len(pairs) == N
    assert [c[0] for c in pairs.captions] == [r[1] for r in rows]
    table = resolve_source(str(path), params={"caption_columns": ["caption", "caption2"]})
    assert isinstance(table, PairTable) and len(table) == N and table.captions[5] == rows[5][1:]
    direct, _ = table.pairset(ImageConfig(size=32))
    assert np.array_equal(direct.images.numpy(), pairs.images.numpy())  # PNG bytes copied exactly


def test_shards_from_imagefolder_keep_the_classes(tmp_path, folder, shapes):
    out = tmp_path / "shards"
    assert (
        main(["data", "shards", str(folder), "--out", str(out), "--shard-size", "16", "--no-progress"]) == 0
    )
    task = shapes.tasks["shape"]
    labelled = int((task.labels >= 0).sum())
    manifest = json.loads((out / "manifest.json").read_text())
    present = sorted({task.classnames[y] for y in task.labels if y >= 0})
    assert manifest["samples"] == labelled and manifest["classes"] == present
    assert sum(s["samples"] for s in manifest["shards"]) == labelled
    source = resolve_source(str(out))  # a folder of shards: label_key from the manifest's classes
    assert isinstance(source, ShardSource) and source.label_key == "cls"
    pairs, _ = source.pairset(ImageConfig(size=32))
    table = resolve_source(str(folder))
    assert len(pairs) == len(table) == labelled
    assert np.array_equal(pairs.tasks["class"].labels, table.tasks["class"].labels)
    expect = [f"a photo of a {present[y]}." for y in table.tasks["class"].labels]
    assert [c[0] for c in pairs.captions] == expect


def test_inspect_counts_every_problem_exactly(tmp_path, shapes, capsys):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(8):
        (tmp_path / "img" / f"{i}.png").write_bytes(encode_image(shapes.images[i]))
        rows.append((f"img/{i}.png", f"picture number {i} of a thing", f"second caption {i}"))
    (tmp_path / "img" / "copy.png").write_bytes((tmp_path / "img" / "3.png").read_bytes())
    (tmp_path / "img" / "bad.png").write_bytes(np.random.default_rng(0).bytes(300))
    rows.append(("img/copy.png", "a duplicate image", "with its own captions"))
    rows.append(("img/nowhere.png", "a missing file", "still two captions"))
    rows.append(("img/bad.png", "random bytes", "not an image at all"))
    rows.append(("img/7.png", "", "only the second caption"))  # one empty caption (and a dup image)
    rows.append(("img/0.png", "picture number 1 of a thing", "x"))  # duplicate image and caption
    write_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "report"
    args = ["data", "inspect", str(tmp_path / "pairs.csv"), "--out", str(out), "--samples", "6"]
    assert main([*args, "--param", "caption_columns=[caption,caption2]", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "inspect.json").read_text())
    assert report["rows"] == 13 and report["captions"] == 26
    assert report["missing_files"] == 1 and report["bad_images"] == 1
    assert report["empty_captions"] == 1
    assert report["duplicate_images"] == 3  # copy.png = 3.png, 7.png twice, 0.png twice
    assert report["duplicate_captions"] == 1
    assert report["decoded_images"] == 11
    assert sum(report["image_short_side"]["histogram"]["counts"]) == 11
    assert report["image_short_side"]["min"] == report["image_short_side"]["max"] == 32
    words = report["caption_words"]
    assert sum(words["histogram"]["counts"]) == 25 and words["min"] == 1 and words["max"] == 6
    assert report["labels"] == {}
    for line in ("missing files       1", "undecodable images  1", "empty captions      1"):
        assert line in printed
    for name in ("histograms.png", "samples.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and min(img.size) > 100


def test_inspect_imagefolder_labels_and_default_out_dir(folder, shapes, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", str(folder), "--no-progress"]) == 0
    report = json.loads((tmp_path / "inspect-photos" / "inspect.json").read_text())
    task = shapes.tasks["shape"]
    counts = {task.classnames[y]: int((task.labels == y).sum()) for y in range(len(task.classnames))}
    assert report["labels"]["class"] == {k: v for k, v in sorted(counts.items()) if v}
    assert report["rows"] == sum(counts.values()) and report["duplicate_images"] == 0
    assert (tmp_path / "inspect-photos" / "samples.png").is_file()


def test_builtin_source_and_errors(tmp_path, capsys):
    assert main(["data", "inspect", "shapes:test", "--param", "n=20", "--out", str(tmp_path / "s")]) == 0
    report = json.loads((tmp_path / "s" / "inspect.json").read_text())
    assert report["rows"] == 20 and report["kind"] == "PairSet" and report["bad_images"] == 0
    assert sum(report["labels"]["shape"].values()) + sum(report["labels"]["color"].values()) > 0
    assert main(["data", "inspect", str(tmp_path / "nothing.csv")]) == 2
    assert "no file, folder" in capsys.readouterr().err
    assert main(["data", "shards", "shapes:test", "--out", str(tmp_path / "x"), "--param", "nn=3"]) == 2
    assert "unknown parameter" in capsys.readouterr().err
