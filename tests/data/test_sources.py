"""Every file source reproduces the in-memory data it was written from, with real data.

A slice of Fashion-MNIST (96 test images, 28 px grey → RGB, four captions and a class each) and
of the emoji pairs (the 67 emoji of a small test split, 64 px, one caption each) is written as
PNG files + CSV, TSV, Parquet (paths, and bytes in the column), an ImageFolder (Fashion-MNIST),
a Hugging Face ``save_to_disk`` folder and WebDataset shards. Images keep their native size
and the training crop is full-area and square, so both transforms are the identity and every
comparison is exact: ``load_split`` decodes the source's pixels, captions and labels;
``train_loader`` yields the batches ``make_loader`` yields from memory (the same
``PairBatchSampler``); and three training steps from the files log the same losses as three
steps in memory. Skipped with the reason when a data set is not installed.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.data import (
    DataConfig,
    build,
    english_articles,
    load_split,
    make_loader,
    make_shapes,
    open_split,
    source_captions,
    train_loader,
)
from contrastkit.data.convert import write_shards
from contrastkit.data.emoji import emoji_records, split_groups
from contrastkit.data.fashion import CLASSES, TRAIN_TEMPLATES
from contrastkit.data.pairs import ClassTask, PairSet
from contrastkit.data.shards import ShardStream
from contrastkit.data.table import PairTable
from contrastkit.models.tokenizer import encode, train_word_tokenizer
from contrastkit.train import train
from tests.data._write import (
    all_finite,
    exact,
    logged_losses,
    needs_emoji,
    needs_fashion,
    run_config,
    source_config,
    take,
    write_pngs,
    write_table,
)

BATCH = 32
FASHION = {"n": 96, "seed": 0}  # 3 batches of 32 per epoch
EMOJI = {"test_fraction": 0.035}  # the 67 emoji of this test split: 2 batches of 32 per epoch
SIZES = {"fashion": 28, "emoji": 64}
# rows in the source's order with the source's captions: batches and losses equal the in-memory ones
SAME_ORDER = ("csv", "tsv", "parquet", "parquet_bytes", "hf", "csv_npm")
FORMATS = {
    "fashion": ("csv", "tsv", "parquet", "parquet_bytes", "imagefolder", "hf", "webdataset"),
    "emoji": ("csv", "csv_npm", "tsv", "parquet", "parquet_bytes", "hf", "webdataset"),
}
NEEDS = {"fashion": needs_fashion, "emoji": needs_emoji}


def cases(formats=None):
    return [
        pytest.param(ds, fmt, marks=NEEDS[ds], id=f"{ds}-{fmt}")
        for ds, fmts in FORMATS.items()
        for fmt in fmts
        if formats is None or fmt in formats
    ]


@dataclasses.dataclass
class Written:
    source: PairSet  # the slice in memory
    memory: DataConfig  # the data config that builds that slice in memory
    configs: dict[str, DataConfig]  # each format's data config
    refs: dict[str, PairSet]  # what each format must decode to


def _memory_config(ds: str) -> DataConfig:
    name, params = ("fashion_mnist", FASHION) if ds == "fashion" else ("emoji", EMOJI)
    return DataConfig(name=name, params=dict(params), splits={"test": {}}, train_split="test", eval_splits=())


def _write(ds: str, folder: Path) -> Written:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    memory = _memory_config(ds)
    src = build(memory.name, "test", **memory.params)
    img = exact(SIZES[ds])
    names = write_pngs(src, folder / "png")
    png_paths = [folder / "png" / n for n in names]
    caps = [list(c) for c in src.captions]
    n_caps = len(caps[0])
    labelled = "class" in src.tasks
    y = src.tasks["class"].labels if labelled else None
    label_col = [CLASSES[k] for k in y] if labelled else None
    labels = {"label_columns": ["label"]} if labelled else {}
    cfgs: dict[str, DataConfig] = {}
    refs: dict[str, PairSet] = {}

    # (1) PNG files + CSV beside them, one column per caption, class names as strings
    cap_cols = [f"caption{k}" for k in range(n_caps)]
    header = ["image", *cap_cols, *(["label"] if labelled else [])]
    rows = [[n, *c, *([label_col[i]] if labelled else [])] for i, (n, c) in enumerate(zip(names, caps))]
    path = write_table(folder / "png" / "pairs.csv", header, rows)
    cfgs["csv"] = source_config("csv", {"path": str(path), "caption_columns": cap_cols, **labels}, img)

    # (2) TSV one folder up (paths relative to it), captions in one column split on "|"
    rows = [
        [f"png/{n}", "|".join(c), *([label_col[i]] if labelled else [])]
        for i, (n, c) in enumerate(zip(names, caps))
    ]
    path = write_table(
        folder / "pairs.tsv", ["image", "captions", *(["label"] if labelled else [])], rows, "\t"
    )
    params = {"path": str(path), "caption_columns": ["captions"], "caption_sep": "|", **labels}
    cfgs["tsv"] = source_config("tsv", params, img)

    # (3) Parquet: file names resolved against image_root, captions as a list column; and the bytes
    extra = {"label": label_col} if labelled else {}
    (folder / "parquet").mkdir()
    pq.write_table(
        pa.table({"image": names, "captions": caps, **extra}), folder / "parquet" / "paths.parquet"
    )
    params = {"path": str(folder / "parquet" / "paths.parquet"), "caption_columns": ["captions"], **labels}
    cfgs["parquet"] = source_config("parquet", {**params, "image_root": str(folder / "png")}, img)
    data = [p.read_bytes() for p in png_paths]
    pq.write_table(pa.table({"image": data, "captions": caps, **extra}), folder / "parquet" / "bytes.parquet")
    params = {**params, "path": str(folder / "parquet" / "bytes.parquet")}
    cfgs["parquet_bytes"] = source_config("parquet", params, img)

    # (5) a Hugging Face datasets folder: Image column, a list-of-strings caption column, ClassLabel
    features = {"image": datasets.Value("string"), "caption": datasets.Sequence(datasets.Value("string"))}
    columns = {"image": [str(p) for p in png_paths], "caption": caps}
    if labelled:
        features["label"] = datasets.ClassLabel(names=list(CLASSES))
        columns["label"] = y.tolist()
    ds_ = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    ds_.cast_column("image", datasets.Image()).save_to_disk(str(folder / "hf"))
    cfgs["hf"] = source_config("hf", {"path": str(folder / "hf"), **labels}, img)

    # (6) WebDataset shards of 32 samples (first caption as .txt, all in .json, class as .cls)
    manifest = write_shards(src, folder / "wds", shard_size=32)
    params = {"urls": str(folder / "wds" / manifest["urls"]), "shuffle_buffer": 16}
    cfgs["webdataset"] = source_config(
        "webdataset", {**params, **({"label_key": "cls"} if labelled else {})}, img
    )
    refs["webdataset"] = src  # evaluation reads every caption back from KEY.json

    if ds == "fashion":  # (4) an ImageFolder: c0 … c9 named by classnames, captions from templates
        for i, p in enumerate(png_paths):
            (folder / "imagefolder" / f"c{y[i]}").mkdir(parents=True, exist_ok=True)
            (folder / "imagefolder" / f"c{y[i]}" / p.name).write_bytes(data[i])
        mapping = {f"c{k}": c for k, c in enumerate(CLASSES)}
        params = {
            "root": str(folder / "imagefolder"),
            "templates": list(TRAIN_TEMPLATES),
            "classnames": mapping,
        }
        cfgs["imagefolder"] = source_config("imagefolder", params, img)
        order = np.argsort(y, kind="stable")  # class folder, then file name
        captions = tuple(tuple(t.format(CLASSES[k]) for t in TRAIN_TEMPLATES) for k in y[order])
        task = ClassTask(CLASSES, TRAIN_TEMPLATES, y[order])
        refs["imagefolder"] = PairSet(src.images[torch.from_numpy(order)], captions, {"class": task})
    else:  # the CSV points at the npm package's own RGBA PNGs (composited on white when decoded)
        records = emoji_records()
        idx = split_groups([c for c, _ in records], 0, EMOJI["test_fraction"], 0.0)["test"]
        assert [records[i][0] for i in idx] == [c[0] for c in caps]
        rows = [[str(records[i][1]), records[i][0]] for i in idx]
        path = write_table(folder / "npm.csv", ["image", "caption"], rows)
        cfgs["csv_npm"] = source_config("csv", {"path": str(path)}, img)
    for fmt in cfgs:
        refs.setdefault(fmt, src)
    return Written(src, memory, cfgs, refs)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Each data set written in every format once per module (on first use)."""
    cache: dict[str, Written] = {}

    def get(ds: str) -> Written:
        if ds not in cache:
            cache[ds] = _write(ds, tmp_path_factory.mktemp(ds))
        return cache[ds]

    return get


@pytest.fixture(scope="module")
def run_losses(tmp_path_factory, written):
    """The logged losses of 3 training steps on ``(ds, fmt)`` (``fmt="memory"``: the in-memory
    slice), each run once per module."""
    cache: dict[tuple[str, str], dict[int, float]] = {}
    out = tmp_path_factory.mktemp("runs")

    def get(ds: str, fmt: str) -> dict[int, float]:
        if (ds, fmt) not in cache:
            w = written(ds)
            data = w.memory if fmt == "memory" else w.configs[fmt]
            result = train(run_config(out, f"{ds}-{fmt}", data, steps=3))
            losses = logged_losses(result.run_dir)
            assert result.step == 3 and result.last_loss == losses[3]
            cache[ds, fmt] = losses
        return cache[ds, fmt]

    return get


def _named_labels(pairs: PairSet) -> list[str] | None:
    """Each image's class name (None for a set without a class task)."""
    if not pairs.tasks:
        return None
    (task,) = pairs.tasks.values()
    return [task.classnames[k] for k in task.labels]


@pytest.mark.parametrize(("ds", "fmt"), cases())
def test_load_split_decodes_the_source_exactly(written, ds, fmt):
    w = written(ds)
    ref = w.refs[fmt]
    with warnings.catch_warnings():  # nothing is skipped, so nothing is reported
        warnings.filterwarnings("error", message=r".*skipped")
        pairs = load_split(w.configs[fmt], "train")
    n, s = len(w.source), SIZES[ds]
    assert pairs.images.dtype == torch.uint8 and pairs.images.shape == (n, 3, s, s)
    assert torch.equal(pairs.images, ref.images)
    assert pairs.captions == ref.captions
    assert _named_labels(pairs) == _named_labels(ref)
    if ds == "fashion":
        assert n == 96 and len(pairs.captions[0]) == 4
        assert torch.equal(pairs.images[:, 0], pairs.images[:, 2])  # grey → RGB survives the files
        if fmt in ("hf", "imagefolder", "webdataset"):  # ClassLabel names / folder names / manifest
            assert pairs.tasks["class" if fmt != "hf" else "label"].classnames == CLASSES
    else:
        assert n == 67 and int(pairs.images[:, :, 0, 0].min()) == 255  # transparent corners on white
    if fmt == "imagefolder":  # the templates filled with the class name; the source fixes articles
        assert [tuple(map(english_articles, c)) for c in pairs.captions] == [
            w.source.captions[i] for i in np.argsort(w.source.tasks["class"].labels, kind="stable")
        ]


@pytest.mark.parametrize(("ds", "fmt"), cases())
def test_train_loader_batches_equal_the_in_memory_batches(written, ds, fmt):
    w = written(ds)
    cfg, ref = w.configs[fmt], w.refs[fmt]
    source = open_split(cfg, "train")
    tokenizer = train_word_tokenizer(source_captions(source))

    def tokenize(texts):
        return encode(tokenizer, texts, 32)

    if fmt == "webdataset":  # a stream: one epoch holds every sample once, in shuffled order
        n = len(ref)
        (epoch,) = ShardStream(source, cfg.image, n, seed=3, keys=True, epochs=1)
        rows = [int(k) for k in epoch["__key__"]]
        assert sorted(rows) == list(range(n)) and rows != list(range(n))
        assert torch.equal(epoch["image"], ref.images[rows])
        assert epoch["text"] == [ref.captions[i][0] for i in rows]
        assert epoch["_skips"] == {}
        (batch,) = take(train_loader(source, cfg, tokenize, n, seed=3), 1)  # the same epoch, tokenised
        assert torch.equal(batch["image"], epoch["image"])
        assert torch.equal(batch["text"], tokenize(epoch["text"]))
        assert batch["_skips"] == {} and batch["_pos"] == {0: [0, n, 1]}
        return
    assert isinstance(source, PairTable)
    got = take(train_loader(source, cfg, tokenize, BATCH, seed=3), 4)  # crosses an epoch boundary
    want = take(make_loader(ref, tokenize, BATCH, seed=3), 4)
    for g, m in zip(got, want, strict=True):
        assert g.pop("_skips") == {}
        assert set(g) == set(m) == {"image", "text"}
        assert g["image"].shape == (BATCH, 3, SIZES[ds], SIZES[ds])
        assert torch.equal(g["image"], m["image"])
        assert torch.equal(g["text"], m["text"])


@pytest.mark.parametrize(("ds", "fmt"), cases())
def test_three_training_steps_from_every_format(run_losses, ds, fmt):
    losses = run_losses(ds, fmt)
    assert sorted(losses) == [1, 2, 3] and all_finite(losses.values())
    if fmt in SAME_ORDER:  # the same batches as the CSV ⇒ the same losses
        csv = run_losses(ds, "csv")
        assert [losses[k] for k in (1, 2, 3)] == pytest.approx([csv[k] for k in (1, 2, 3)], abs=1e-6)


@pytest.mark.parametrize(
    "ds",
    [
        pytest.param("fashion", marks=needs_fashion),
        pytest.param(
            "emoji",
            marks=needs_emoji,
        ),
    ],
)
def test_csv_training_equals_in_memory_training(written, run_losses, ds):
    assert written(ds).source.images.is_contiguous()  # batches (and kernels) as from files
    memory, csv = run_losses(ds, "memory"), run_losses(ds, "csv")
    assert all_finite(memory.values()) and all_finite(csv.values())
    assert [csv[k] for k in (1, 2, 3)] == pytest.approx([memory[k] for k in (1, 2, 3)], abs=1e-6)


# --- table details (synthetic data, no installation needed) ------------------------------------


def _shapes_csv(folder: Path, captions, labels, n: int = 4) -> DataConfig:
    pairs = make_shapes("train", n=n, image_size=32)
    names = write_pngs(pairs, folder)
    path = write_table(folder / "pairs.csv", ["image", "caption", "label"], zip(names, captions, labels))
    return source_config("csv", {"path": str(path), "label_columns": ["label"]}, exact(32))


def test_load_split_of_a_clean_table_does_not_warn(tmp_path):
    cfg = _shapes_csv(tmp_path, ["a red circle", "a blue square", "a star", "a dot"], ["a", "b", "a", "b"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_split(cfg, "train")
    assert len(pairs) == 4
    assert [str(m.message) for m in caught if "skipped" in str(m.message)] == []


def test_csv_cells_that_look_like_numbers_stay_strings(tmp_path):
    cfg = _shapes_csv(tmp_path, ["1984", "007", "2001", "42"], ["007", "010", "3", "007"])
    table = open_split(cfg, "train")
    assert table.tasks["label"].classnames == ("007", "010", "3")
    assert table.tasks["label"].labels.tolist() == [0, 1, 2, 0]
    assert table.captions == (("1984",), ("007",), ("2001",), ("42",))
