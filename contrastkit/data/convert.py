"""Writing any source as WebDataset shards (``contrastkit data shards``).

Each sample becomes ``KEY.<ext>`` (the image), ``KEY.txt`` (its first caption), ``KEY.json``
(every caption, the labels and the extra columns) and, when the source has a class task,
``KEY.cls`` (the class index). Files of a table are copied byte for byte unless ``image_size`` asks
for a resize (shorter side to ``image_size``, then re-encoded as JPEG quality 95, or PNG for
in-memory sets). Shards are written through ``webdataset.TarWriter`` to a temporary name and
renamed when complete; ``manifest.json`` lists every shard's samples, bytes and sha256 and the
class names, and is what :func:`~contrastkit.data.shards.make_webdataset` reads class names from.
Unusable rows (missing file, undecodable image, no caption) are skipped and counted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from contrastkit.core.errors import ConfigError
from contrastkit.core.io import atomic_write_text
from contrastkit.core.progress import progress_bar
from contrastkit.data.images import SkipSample, decode_image
from contrastkit.data.pairs import PairSet
from contrastkit.data.table import PairTable

__all__ = ["encode_image", "write_csv", "write_shards"]


def encode_image(img: torch.Tensor, fmt: str = "png", quality: int = 95) -> bytes:
    """``uint8 [3, H, W]`` → encoded bytes (PNG or JPEG)."""
    buf = io.BytesIO()
    pil = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())
    pil.save(buf, format="JPEG" if fmt in ("jpg", "jpeg") else "PNG", quality=quality)
    return buf.getvalue()


def _resized(data: bytes | str, size: int) -> bytes:
    from torchvision.transforms.v2 import functional as TF

    img = TF.resize(decode_image(data), [size], antialias=True)
    return encode_image(img, "jpg")


def _samples(
    src: PairSet | PairTable, image_size: int | None, skips: Counter[str]
) -> Iterator[dict[str, Any]]:
    for i in range(len(src)):
        caps = [c for c in src.captions[i] if c.strip()]
        if not caps:
            skips["empty caption"] += 1
            continue
        meta: dict[str, Any] = {"captions": caps}
        meta.update({t: int(task.labels[i]) for t, task in src.tasks.items()})
        if isinstance(src, PairSet):
            img = src.images[i]
            if image_size is not None:
                from torchvision.transforms.v2 import functional as TF

                img = TF.resize(img, [image_size], antialias=True)
            ext, data = "png", encode_image(img, "png")
        else:
            meta.update({k: col.values[i] for k, col in src.extras.items()})
            ref = src.images[i]
            try:
                if ref is None:
                    raise SkipSample("missing file", f"row {i}")
                if image_size is not None:
                    ext, data = "jpg", _resized(ref, image_size)
                else:
                    data = ref if isinstance(ref, bytes) else Path(ref).read_bytes()
                    decode_image(data)  # never ship an image the reader would reject
                    ext = _ext(ref, data)
            except FileNotFoundError:
                skips["missing file"] += 1
                continue
            except SkipSample as err:
                skips[err.reason] += 1
                continue
        sample = {"__key__": f"{i:09d}", ext: data, "txt": caps[0], "json": json.dumps(meta).encode()}
        if "class" in src.tasks and src.tasks["class"].labels[i] >= 0:
            sample["cls"] = str(int(src.tasks["class"].labels[i])).encode()
        yield sample


def _ext(ref: str | bytes, data: bytes) -> str:
    if isinstance(ref, str):
        suffix = Path(ref).suffix.lower().lstrip(".")
        if suffix in ("jpg", "jpeg", "png", "webp"):
            return suffix
    with Image.open(io.BytesIO(data)) as img:
        return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(img.format or "", "png")


def write_shards(
    src: PairSet | PairTable,
    out_dir: str | Path,
    shard_size: int = 1000,
    image_size: int | None = None,
    prefix: str = "shard",
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``src`` as ``out_dir/{prefix}-000000.tar …`` with a ``manifest.json``; returns the manifest."""
    import webdataset as wds

    if shard_size < 1:
        raise ConfigError(f"--shard-size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skips: Counter[str] = Counter()
    shards: list[dict[str, Any]] = []
    writer, n, tmp = None, 0, Path()

    def close() -> None:
        assert writer is not None
        writer.close()
        final = tmp.with_name(tmp.name.removeprefix(".tmp-"))
        os.replace(tmp, final)
        digest = hashlib.sha256(final.read_bytes()).hexdigest()
        shards.append({"name": final.name, "samples": n, "bytes": final.stat().st_size, "sha256": digest})

    bar = progress_bar(None, f"shards {out}", progress, total=len(src), unit="sample")
    for sample in _samples(src, image_size, skips):
        if writer is None or n == shard_size:
            if writer is not None:
                close()
            tmp, n = out / f".tmp-{prefix}-{len(shards):06d}.tar", 0
            writer = wds.TarWriter(str(tmp))
        writer.write(sample)
        n += 1
        bar.update(1)
    bar.close()
    if writer is not None:
        close()
    classes = list(src.tasks["class"].classnames) if "class" in src.tasks else []
    manifest = {
        "source": src.name,
        "samples": sum(s["samples"] for s in shards),
        "shards": shards,
        "classes": classes,
        "skipped": dict(skips),
        "urls": f"{prefix}-{{000000..{max(len(shards) - 1, 0):06d}}}.tar",
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


def write_csv(
    src: PairSet | PairTable, out_dir: str | Path, split: str = "train", progress: bool = False
) -> Path:
    """Write ``src`` as ``out_dir/images/*.png`` (files of a table: copied) and ``out_dir/pairs.csv``
    with columns ``image`` (relative path), ``caption`` and ``caption_<k>`` (further captions),
    one column per class task, and ``split``; appends to an existing ``pairs.csv`` of that folder, so
    several splits can share one file (``split_column: split``). Returns the CSV's path."""
    import csv

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    width = max(len(c) for c in src.captions)
    header = ["image", "caption", *[f"caption_{k}" for k in range(1, width)], *src.tasks, "split"]
    path = out / "pairs.csv"
    if path.is_file():
        with open(path, newline="") as f:
            old = next(csv.reader(f), [])
        if old != header:
            raise ConfigError(f"{path} has columns {old}; this source needs {header}: use another folder")
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(header)
        for i in progress_bar(range(len(src)), f"csv {out}", progress, unit="img"):
            name = f"images/{split}-{i:07d}"
            if isinstance(src, PairSet):
                name += ".png"
                (out / name).write_bytes(encode_image(src.images[i]))
            else:
                ref = src.images[i]
                if ref is None or (isinstance(ref, str) and not Path(ref).is_file()):
                    continue  # nothing to copy; counted when the original is read
                data = ref if isinstance(ref, bytes) else Path(ref).read_bytes()
                name += "." + _ext(ref, data)
                (out / name).write_bytes(data)
            caps = list(src.captions[i]) + [""] * (width - len(src.captions[i]))
            labels = [t.classnames[t.labels[i]] if t.labels[i] >= 0 else "" for t in src.tasks.values()]
            w.writerow([name, *caps, *labels, split])
    return path
