"""Looking at data before training on it: ``contrastkit data inspect`` and ``contrastkit data shards``.

:func:`resolve_source` turns what a user types into a source: ``NAME:SPLIT`` (a built-in set), a
``.csv``/``.tsv``/``.parquet`` file, a folder written by ``datasets.save_to_disk``, WebDataset
shards (a ``.tar``, a brace pattern, or a folder of shards) or an ImageFolder tree.
:func:`inspect_source` reads and decodes every image once and counts what a loader would skip
(missing files, undecodable images, empty captions), exact duplicates (SHA-256 of the image bytes;
identical captions), the caption-length and image-size distributions and the labels of every class
task; it writes ``inspect.json``, ``histograms.png`` and ``samples.png`` (images with captions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, DataError, MissingFileError
from contrastkit.core.io import atomic_write_json, save_png
from contrastkit.core.progress import progress_bar
from contrastkit.core.registry import check_kwargs
from contrastkit.data.images import SkipSample, decode_image
from contrastkit.data.loading import SOURCES
from contrastkit.data.pairs import PairSet
from contrastkit.data.shards import ShardSource, iter_shard
from contrastkit.data.table import PairTable
from contrastkit.data.tabular import make_table

__all__ = ["Source", "format_inspect", "inspect_source", "resolve_source", "shards_summary", "source_label"]

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")

Source = PairSet | PairTable | ShardSource  # what a path or NAME:SPLIT resolves to (no mixtures)


def _builtin(src: str) -> tuple[str, str] | None:
    from contrastkit.data import DATASETS

    name, sep, split = src.partition(":")
    if sep and name in DATASETS and not Path(src).expanduser().exists():
        return name, split
    return None


def source_label(src: str) -> str:
    """A short name for ``src`` (``shapes-train``, ``pairs``, ``photos``), e.g. for an output folder."""
    builtin = _builtin(src)
    if builtin is not None:
        return "-".join(p for p in builtin if p)
    path = Path(src.split("{")[0] if "{" in src else src).expanduser()
    if "{" in src or path.suffix == ".tar":
        path = path.parent
    return (path.stem if path.is_file() else path.name) or "data"


def resolve_source(src: str, split: str = "train", params: dict[str, Any] | None = None) -> Source:
    """The source ``src`` names (module docstring); ``params`` go to its builder, ``split`` selects
    rows (``split_column``), a split sub-folder, a ``DatasetDict`` entry or a built-in split
    (``NAME:SPLIT`` overrides ``split``)."""
    params = dict(params or {})
    builtin = _builtin(src)
    if builtin is not None:
        from contrastkit.data import DATASETS

        return DATASETS.build(builtin[0], split=builtin[1] or split, **params)
    path = Path(src).expanduser()
    if "{" in src or path.suffix == ".tar":
        return _shards(src, split, params)
    if path.is_file():
        fmt = TABLE_SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise ConfigError(f"{path}: unknown table format; expected one of {sorted(TABLE_SUFFIXES)}")
        check_kwargs(make_table, {"fmt": fmt, **params}, f"{fmt} source")
        return SOURCES.build(fmt, split=split, path=str(path), **params)
    if path.is_dir():
        tars = sorted(str(p) for p in path.glob("*.tar") if not p.name.startswith("."))
        if tars:
            return _shards(tars, split, params)
        if any((path / m).is_file() for m in HF_MARKERS):
            return SOURCES.build("hf", split=split, path=str(path), **params)
        return SOURCES.build("imagefolder", split=split, root=str(path), **params)
    raise MissingFileError(
        f"{src!r} is no file, folder, shard pattern or built-in set (NAME:SPLIT, e.g. shapes:train)"
    )


def _shards(urls: str | list[str], split: str, params: dict[str, Any]) -> ShardSource:
    source = SOURCES.build("webdataset", split=split, urls=urls, **params)
    assert isinstance(source, ShardSource)
    if "label_key" not in params and source.classnames:  # written by `data shards` with a class task
        source = dataclasses.replace(source, label_key="cls")
    return source


@dataclass
class _Row:
    data: bytes | torch.Tensor | None  # None: no image (``reason``)
    captions: tuple[str, ...]
    labels: dict[str, int]
    reason: str = "missing file"


def _rows(source: Source, broken: Counter[str]) -> Iterator[_Row]:
    if isinstance(source, ShardSource):
        for url in source.urls:
            for raw in iter_shard(url, broken):
                ext = next((e for e in source.image_keys if e in raw), None)
                try:
                    meta = json.loads(raw["json"]) if "json" in raw else {}
                except ValueError:
                    meta = {}
                caps = meta.get("captions") if isinstance(meta, dict) else None
                caps = caps or [raw.get(source.text_key, b"").decode("utf-8", "replace")]
                label = raw.get(source.label_key, b"").decode().strip() if source.label_key else ""
                labels = {"class": int(label)} if label.lstrip("-").isdigit() else {}
                yield _Row(raw[ext] if ext else None, tuple(str(c) for c in caps), labels, "missing key")
        return
    for i in range(len(source)):
        labels = {t: int(task.labels[i]) for t, task in source.tasks.items()}
        if isinstance(source, PairSet):
            yield _Row(source.images[i], source.captions[i], labels)
            continue
        ref = source.images[i]
        try:
            data = ref if ref is None or isinstance(ref, bytes) else Path(ref).read_bytes()
        except OSError:
            data = None
        yield _Row(data, source.captions[i], labels)


def _classnames(source: Source) -> dict[str, tuple[str, ...]]:
    if isinstance(source, ShardSource):
        return {"class": source.classnames} if source.label_key else {}
    return {t: task.classnames for t, task in source.tasks.items()}


def _summary(values: list[int], max_bins: int = 30) -> dict[str, Any] | None:
    """min/median/mean/max and a histogram with integer-aligned bins ``[edge_k, edge_k+1)``."""
    if not values:
        return None
    v = np.asarray(values)
    lo, hi = int(v.min()), int(v.max())
    width = max(1, -(-(hi - lo + 1) // max_bins))
    edges = np.arange(lo, hi + width + 1, width)
    counts, _ = np.histogram(v, edges)
    return {
        "min": lo,
        "median": float(np.median(v)),
        "mean": float(v.mean()),
        "max": hi,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def _thumb(img: torch.Tensor, side: int = 128) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(img, [side], antialias=True) if min(img.shape[-2:]) > side else img


@dataclass
class _Tally:
    """What :func:`inspect_source` counts while it reads the rows once."""

    labels: dict[str, Counter[int]]
    counts: Counter[str] = dataclasses.field(default_factory=Counter)  # skips by reason
    n_caps: list[int] = dataclasses.field(default_factory=list)
    words: list[int] = dataclasses.field(default_factory=list)
    sides: list[int] = dataclasses.field(default_factory=list)
    seen_img: set[bytes] = dataclasses.field(default_factory=set)
    seen_cap: set[str] = dataclasses.field(default_factory=set)
    dup_img: int = 0
    dup_cap: int = 0

    def add(self, row: _Row) -> tuple[torch.Tensor | None, str]:
        """Count one row; its decoded image (``None`` if skipped) and a caption for its tile."""
        self.n_caps.append(len(row.captions))
        first = ""
        for cap in (c.strip() for c in row.captions):
            if not cap:
                self.counts["empty caption"] += 1
                continue
            first = first or cap
            self.words.append(len(cap.split()))
            self.dup_cap += cap in self.seen_cap
            self.seen_cap.add(cap)
        img, why = None, row.reason
        if row.data is not None:
            raw = row.data if isinstance(row.data, bytes) else row.data.numpy().tobytes()
            digest = hashlib.sha256(raw).digest()
            self.dup_img += digest in self.seen_img
            self.seen_img.add(digest)
            try:
                img = row.data if isinstance(row.data, torch.Tensor) else decode_image(row.data)
                self.sides.append(int(min(img.shape[-2:])))
            except SkipSample as err:
                why = err.reason
        if img is None:
            self.counts[why] += 1
        for task, y in row.labels.items():
            if y >= 0 and task in self.labels:
                self.labels[task][y] += 1
        return img, first if img is not None else f"[{why}]"

    def report(self, source: Source, broken: Counter[str]) -> dict[str, Any]:
        names, n_caps, counts = _classnames(source), self.n_caps, self.counts
        return {
            "source": source.name,
            "kind": type(source).__name__,
            "rows": len(n_caps),
            "captions": int(sum(n_caps)),
            "captions_per_image": {"min": min(n_caps), "mean": float(np.mean(n_caps)), "max": max(n_caps)},
            "empty_captions": counts["empty caption"],
            "missing_files": counts["missing file"],
            "missing_keys": counts["missing key"],
            "bad_images": counts["bad image"],
            "bad_shards": broken["bad shard"],
            "decoded_images": len(self.sides),
            "duplicate_images": self.dup_img,
            "duplicate_captions": self.dup_cap,
            "caption_words": _summary(self.words),
            "image_short_side": _summary(self.sides),
            "labels": {
                t: {_name(names[t], y): c[y] for y in sorted(set(range(len(names[t]))) | set(c))}
                for t, c in self.labels.items()
            },
        }


def inspect_source(
    source: Source, out_dir: str | Path | None = None, samples: int = 16, progress: bool = False
) -> dict[str, Any]:
    """Decode every image of ``source`` once and return the counts (module docstring); with
    ``out_dir``, also write ``inspect.json``, ``histograms.png`` and ``samples.png`` there."""
    broken: Counter[str] = Counter()
    tally = _Tally({t: Counter() for t in _classnames(source)})
    total = None if isinstance(source, ShardSource) else len(source)
    if isinstance(source, ShardSource) and source.counts:
        total = sum(source.counts)
    picks = set(np.linspace(0, total - 1, min(samples, total)).round().astype(int)) if total else None
    tiles: list[tuple[torch.Tensor | None, str]] = []
    bar = progress_bar(_rows(source, broken), f"inspect {source.name}", progress, total=total, unit="img")
    for i, row in enumerate(bar):
        img, caption = tally.add(row)
        if len(tiles) < samples and (picks is None or i in picks):
            tiles.append((None if img is None else _thumb(img), caption))
    if not tally.n_caps:
        raise DataError(f"{source.name}: no samples")
    report = tally.report(source, broken)
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "inspect.json", report)
        _plot_histograms(report, out / "histograms.png")
        _plot_samples(tiles, out / "samples.png", source.name)
        report["outputs"] = [str(out / f) for f in ("inspect.json", "histograms.png", "samples.png")]
    return report


def _name(names: tuple[str, ...], y: int) -> str:
    return names[y] if 0 <= y < len(names) else str(y)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def _plot_histograms(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label, unit in zip(
        axes,
        ("caption_words", "image_short_side"),
        ("caption length (words)", "image shorter side (px)"),
        ("captions", "images"),
    ):
        s = report[key]
        if s is None:
            ax.text(0.5, 0.5, "no data", ha="center", va="center")
        else:
            edges, counts = s["histogram"]["edges"], s["histogram"]["counts"]
            ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="white")
            ax.set_title(f"median {s['median']:g}, range {s['min']}–{s['max']}", fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel(f"number of {unit}")
    fig.suptitle(f"{report['source']}: {report['rows']} rows", fontsize=10)
    _save(fig, path)


def _plot_samples(tiles: list[tuple[torch.Tensor | None, str]], path: Path, title: str) -> None:
    plt = _pyplot()
    cols = max(1, min(4, len(tiles)))
    rows = max(1, -(-len(tiles) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.2 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= len(tiles):
            continue
        img, caption = tiles[k]
        if img is not None:
            ax.imshow(img.permute(1, 2, 0).numpy())
        lines = textwrap.wrap(caption, 28) or [""]
        text = "\n".join(lines[:3]) + ("…" if len(lines) > 3 else "")
        ax.text(0.5, -0.04, text, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def format_inspect(report: dict[str, Any]) -> str:
    """A short plain-text table of an :func:`inspect_source` report."""
    cpi = report["captions_per_image"]
    rows = [
        ("rows", report["rows"]),
        ("captions", f"{report['captions']} ({cpi['min']}–{cpi['max']} per image, mean {cpi['mean']:.2f})"),
        ("empty captions", report["empty_captions"]),
        ("missing files", report["missing_files"]),
        ("undecodable images", report["bad_images"]),
        ("duplicate images", report["duplicate_images"]),
        ("duplicate captions", report["duplicate_captions"]),
    ]
    rows += [(k.replace("_", " "), report[k]) for k in ("missing_keys", "bad_shards") if report[k]]
    for key, label in (("caption_words", "caption words"), ("image_short_side", "image shorter side")):
        s = report[key]
        rows.append((label, "—" if s is None else f"median {s['median']:g} (min {s['min']}, max {s['max']})"))
    for task, dist in report["labels"].items():
        shown = ", ".join(f"{k}: {v}" for k, v in list(dist.items())[:8])
        rows.append((f"labels {task}", shown + (f", … ({len(dist)} classes)" if len(dist) > 8 else "")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def shards_summary(manifest: dict[str, Any], out_dir: str | Path) -> str:
    """One paragraph on shards written by :func:`~contrastkit.data.convert.write_shards`."""
    shards = manifest["shards"]
    size = sum(s["bytes"] for s in shards) / 2**20
    skipped = manifest["skipped"]
    skips = ", ".join(f"{v} {k}" for k, v in sorted(skipped.items())) if skipped else "none"
    urls = str(Path(out_dir) / manifest["urls"])
    label = ", label_key: cls" if manifest["classes"] else ""
    return (
        f"Wrote {len(shards)} shard(s) with {manifest['samples']} samples ({size:.1f} MiB) from "
        f"{manifest['source']} to {out_dir} (manifest.json lists samples, bytes and sha256 per shard); "
        f"skipped: {skips}. Train on them with "
        f'data: {{name: webdataset, params: {{urls: "{urls}"{label}}}}}.'
    )
