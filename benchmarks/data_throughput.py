"""Training-data throughput: decoded + augmented samples/s of contrastkit's file pipelines vs
open_clip's own WebDataset pipeline on the same JPEG shards, measured side by side in one run.

Pipelines (batch 64, training transform = random resized crop, area 0.9–1.0, to S×S):

* ``ck-wds``: contrastkit's ``webdataset`` source (``open_split`` + ``train_loader``: tar shards,
  shuffle buffer 1000, ``uint8`` batches, JPEG draft decoding).
* ``ck-csv``: contrastkit's ``csv`` source on the same images as JPEG files + a CSV.
* ``open_clip``: ``open_clip_train.data.get_wds_dataset`` with ``open_clip.image_transform(S,
  is_train=True)`` (PIL decode, bicubic ``RandomResizedCrop``, ``ToTensor``, ``Normalize``) —
  the pipeline open_clip trains with (only if ``open_clip`` is installed: ``make bench``).

contrastkit runs with ``interpolation: bicubic`` (``--interpolation``) so both sides do the same
resampling; its default is bilinear. Both sides tokenise with the same trivial function (zeros),
so only image work is compared. Data: ``--samples`` synthetic photo-like JPEGs (smooth noise,
gradients, shapes, grain; shorter side 256, e.g. 256×320; quality 90), written once to ``--data``
as 4 tar shards (``KEY.jpg``, ``KEY.txt``) and as a folder of JPEG files + ``pairs.csv``.

Each measurement builds a fresh loader, discards ``--warmup`` batches (worker start-up, shuffle
buffer fill) and times the next ``--batches``. For each setting (image size × workers) the
pipelines alternate over ``--repeats`` rounds (A B C, C B A, …) because this 2-core machine is
shared and noisy; the table gives median samples/s, the median of the per-round ratios
contrastkit / open_clip with their min–max, CPU milliseconds per sample (main process + loader
workers, less sensitive to other load) and the 1-minute load average (``os.getloadavg``, which
includes this benchmark's own processes) seen at the start of the measurements.
``--threads``: torch threads of the main process (DataLoader workers always run 1), 1 by default
so every row is per-core work.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/data_throughput.py [--quick] [--samples 4000]
    OMP_WAIT_POLICY=PASSIVE python benchmarks/data_throughput.py --profile ck-wds --sizes 224
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _measure  # noqa: F401  (allocator and OpenMP settings shared by the benchmarks)

BATCH = 64
SHARDS = 4
PIPELINES = ("ck-wds", "ck-csv", "open_clip")
SIZES_WH = ((320, 256), (256, 320), (256, 256), (384, 256), (256, 384), (340, 256), (256, 340))
WORDS = {
    "colour": ("red", "green", "blue", "yellow", "purple", "orange", "grey", "white", "dark"),
    "thing": ("circle", "square", "triangle", "stripe", "blob", "ring", "star", "patch"),
    "scene": ("on a field", "against the sky", "on a wall", "in the water", "on sand", "at dusk"),
}


# ----------------------------------------------------------------------------------- data
def _image(rng, w: int, h: int):
    """A photo-like RGB image: smooth low-frequency colour field, a gradient, a few soft shapes and
    mid/high-frequency grain (so JPEG sizes and decode work resemble natural photos)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    def smooth(cells_w: int, cells_h: int, amp: float) -> np.ndarray:
        small = (rng.random((cells_h, cells_w, 3)) * 255).astype(np.uint8)
        big = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        return (np.asarray(big, dtype=np.float32) - 127.5) * amp

    base = rng.random(3) * 160 + 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.random() * 2 * np.pi
    grad = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)[..., None] * (rng.random(3) * 120 - 60)
    arr = base + grad + smooth(4, 4, 0.6) + smooth(int(w / 24), int(h / 24), 0.25)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    layer = img.copy()
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.integers(-w // 4, w), rng.integers(-h // 4, h)
        x1, y1 = x0 + rng.integers(w // 10, w // 2), y0 + rng.integers(h // 10, h // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            pts = [(int(rng.integers(x0, x1)), int(rng.integers(y0, y1))) for _ in range(5)]
            draw.polygon(pts, fill=colour)
    layer = layer.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    arr = np.asarray(Image.blend(img, layer, float(rng.uniform(0.6, 0.9))), dtype=np.float32)
    arr += rng.normal(0, rng.uniform(3, 9), arr.shape[:2])[..., None] + rng.normal(0, 2, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _caption(rng) -> str:
    pick = {k: v[int(rng.integers(len(v)))] for k, v in WORDS.items()}
    return f"a {pick['colour']} {pick['thing']} {pick['scene']}"


def make_data(root: Path, n: int) -> Path:
    """``root/n{n}``: shards ``shard-00000{0..3}.tar`` and ``images/*.jpg`` + ``pairs.csv`` (cached)."""
    import numpy as np

    out = root / f"n{n}"
    if (out / "done.json").is_file():
        return out
    tmp = root / f".n{n}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    t0, total = time.perf_counter(), 0
    per = -(-n // SHARDS)
    tars = [tarfile.open(tmp / f"shard-{s:06d}.tar", "w") for s in range(SHARDS)]
    with open(tmp / "pairs.csv", "w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["image", "caption"])
        for i in range(n):
            w, h = SIZES_WH[int(rng.integers(len(SIZES_WH)))]
            buf = io.BytesIO()
            _image(rng, w, h).save(buf, "JPEG", quality=90)
            jpg, txt = buf.getvalue(), _caption(rng).encode()
            total += len(jpg)
            key = f"{i:08d}"
            (tmp / "images" / f"{key}.jpg").write_bytes(jpg)
            rows.writerow([f"images/{key}.jpg", txt.decode()])
            for ext, data in (("jpg", jpg), ("txt", txt)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tars[i // per].addfile(info, io.BytesIO(data))
    for t in tars:
        t.close()
    meta = {"samples": n, "shards": SHARDS, "mean_jpeg_kib": round(total / n / 1024, 1)}
    (tmp / "done.json").write_text(json.dumps(meta))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"# wrote {n} samples to {out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------- loaders
def tokenize(texts):
    """The same trivial tokeniser on both sides (a string → 1 row, a list → one row each)."""
    import torch

    return torch.zeros(1 if isinstance(texts, str) else len(texts), 8, dtype=torch.long)


def _urls(data: Path) -> str:
    return str(data / f"shard-{{000000..{SHARDS - 1:06d}}}.tar")


def ck_loader(kind: str, data: Path, size: int, workers: int, interpolation: str):
    from contrastkit.data.config import DataConfig
    from contrastkit.data.images import ImageConfig
    from contrastkit.data.loading import open_split, train_loader

    if kind == "ck-wds":
        name, params = "webdataset", {"urls": _urls(data), "shuffle_buffer": 1000}
    else:
        name = "csv"
        params = {"path": str(data / "pairs.csv"), "image_column": "image", "caption_columns": ["caption"]}
    cfg = DataConfig(
        name=name,
        params=params,
        splits={"train": {}},
        eval_splits=(),
        num_workers=workers,
        image=ImageConfig(size=size, interpolation=interpolation),
    )
    return train_loader(open_split(cfg, "train"), cfg, tokenize, batch_size=BATCH, seed=0)


def open_clip_variant() -> str:
    """Which open_clip pipeline runs (raises ImportError without open_clip)."""
    import open_clip

    try:
        import open_clip_train.data  # noqa: F401
    except ImportError:
        return f"open_clip {open_clip.__version__}, equivalent wds pipeline (no open_clip_train)"
    return f"open_clip {open_clip.__version__}, open_clip_train.data.get_wds_dataset"


def oc_loader(data: Path, size: int, workers: int):
    import open_clip

    preprocess = open_clip.image_transform(size, is_train=True)
    args = argparse.Namespace(
        train_data=_urls(data),
        val_data=None,
        train_num_samples=10**8,  # the stream must not end while it is timed
        train_data_upsampling_factors=None,
        dataset_resampled=False,
        batch_size=BATCH,
        workers=workers,
        world_size=1,
        rank=0,
        seed=0,
    )
    try:
        from open_clip_train.data import get_wds_dataset
    except ImportError:
        return _oc_equivalent(args, preprocess)
    return get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenize).dataloader


def _oc_equivalent(args, preprocess):
    """open_clip_train's training pipeline rebuilt stage by stage (when open_clip_train is absent)."""
    import webdataset as wds

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(args.train_data),
        wds.detshuffle(bufsize=2000, initial=500, seed=args.seed),
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(bufsize=5000, initial=1000),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda text: tokenize(text)[0]),
        wds.to_tuple("image", "text"),
        wds.batched(args.batch_size, partial=False),
    ).with_epoch(10**6)
    return wds.WebLoader(
        pipeline,
        batch_size=None,
        shuffle=False,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )


def build(name: str, data: Path, size: int, workers: int, interpolation: str):
    if name == "open_clip":
        return oc_loader(data, size, workers)
    return ck_loader(name, data, size, workers, interpolation)


# ----------------------------------------------------------------------------------- measuring
def _children() -> list[int]:
    """Pids of this process's children (the loader workers)."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as fh:
                pids += [int(x) for x in fh.read().split()]
        except OSError:
            pass
    return pids


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of this process and ``pids`` (loader workers) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    own = os.times()
    total = own.user + own.system
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _rows(batch) -> int:
    return len(batch["image"]) if isinstance(batch, dict) else len(batch[0])


def measure(loader, warmup: int, batches: int, profiler=None) -> dict[str, float]:
    """Samples/s and CPU ms/sample over ``batches`` batches after ``warmup`` discarded ones."""
    it = iter(loader)
    try:
        for _ in range(warmup):
            next(it)
        pids = _children()
        cpu0, t0, n = _cpu_s(pids), time.perf_counter(), 0
        if profiler is not None:
            profiler.enable()
        for _ in range(batches):
            n += _rows(next(it))
        if profiler is not None:
            profiler.disable()
        dt, cpu = time.perf_counter() - t0, _cpu_s(pids) - cpu0
    finally:  # stop the workers before the next loader starts (WebLoader's iterator is a generator)
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        elif hasattr(it, "close"):
            it.close()
        del it
        gc.collect()
    return {"sps": n / dt, "cpu_ms": 1000 * cpu / n}


def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    return f"{med:.2f} ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else f"{med:.2f}"


def profile(args, data: Path) -> None:
    """cProfile of one 0-worker measurement of ``args.profile`` per image size (main process)."""
    import cProfile
    import pstats

    for size in args.sizes:
        prof = cProfile.Profile()
        loader = build(args.profile, data, size, 0, args.interpolation)
        r = measure(loader, args.warmup, args.batches, prof)
        print(f"\n## {args.profile}, {size} px, 0 workers: {r['sps']:.0f} samples/s (under cProfile)")
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(18)
        stats.sort_stats("cumulative").print_stats(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--data", default="/tmp/ck-bench-data", help="cache directory of the generated data")
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--pipelines", default=",".join(PIPELINES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--interpolation", choices=("bicubic", "bilinear"), default="bicubic")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 512 samples, 2 rounds of 2 + 6 batches (the data fits in the shuffle "
        "buffers, so no tar reading is timed: not representative)",
    )
    p.add_argument("--profile", choices=PIPELINES, help="cProfile a 0-worker run of this pipeline")
    args = p.parse_args()
    if args.quick:
        args.samples, args.repeats, args.warmup, args.batches = 512, 2, 2, 6
    args.sizes = [int(s) for s in args.sizes.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    if max(workers) > SHARDS:
        p.error(f"at most {SHARDS} workers: there are {SHARDS} shards")

    import PIL
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    data = make_data(Path(args.data), args.samples)
    meta = json.loads((data / "done.json").read_text())
    if args.profile:
        profile(args, data)
        return
    names = args.pipelines.split(",")
    unknown = [n for n in names if n not in PIPELINES]
    if unknown:
        p.error(f"unknown pipelines {unknown}; choose from {list(PIPELINES)}")
    try:
        variant = open_clip_variant()
    except ImportError:
        variant = None
        if "open_clip" in names:
            names.remove("open_clip")
            print(
                "open_clip is not installed: its rows are skipped "
                "(make bench, or pip install -c requirements.txt open-clip-torch==3.3.0)",
                file=sys.stderr,
            )
    start_load = os.getloadavg()
    print(
        f"{meta['samples']} JPEG samples (shorter side 256, q90, mean {meta['mean_jpeg_kib']} KiB), "
        f"{SHARDS} shards; batch {BATCH}; {args.warmup} warm-up + {args.batches} timed batches; "
        f"median of {args.repeats} interleaved rounds; {args.threads} main-process torch thread(s), "
        f"{os.cpu_count()} CPUs, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}; "
        f"contrastkit interpolation {args.interpolation}; {variant or 'open_clip not installed'}"
    )
    results = []
    for size in args.sizes:
        for w in workers:
            runs: dict[str, list[dict]] = {n: [] for n in names}
            loads = []
            for r in range(args.repeats):
                for name in names if r % 2 == 0 else names[::-1]:
                    loads.append(os.getloadavg()[0])
                    try:
                        out = measure(
                            build(name, data, size, w, args.interpolation), args.warmup, args.batches
                        )
                    except Exception as err:  # report and go on with the other pipelines
                        print(f"# {name} {size}px w{w}: failed: {type(err).__name__}: {err}", file=sys.stderr)
                        continue
                    out["round"] = r
                    runs[name].append(out)
                    print(
                        f"# {size}px w{w} round {r} {name:<9} {out['sps']:7.0f} samples/s "
                        f"{out['cpu_ms']:6.2f} CPU ms/sample  load {loads[-1]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
            results.append((size, w, runs, statistics.median(loads)))

    def med(runs: list[dict], key: str) -> str:
        return f"{statistics.median(x[key] for x in runs):.0f}" if runs else "—"

    def ratios(runs: dict[str, list[dict]], name: str) -> list[float]:
        oc = {x["round"]: x["sps"] for x in runs.get("open_clip", [])}
        return [x["sps"] / oc[x["round"]] for x in runs.get(name, []) if x["round"] in oc]

    def cpu(runs: list[dict]) -> str:
        return f"{statistics.median(x['cpu_ms'] for x in runs):.2f}" if runs else "—"

    print(
        "\n| image px | workers | ck-wds samples/s | ck-csv samples/s | open_clip samples/s "
        "| ck-wds / open_clip | ck-csv / open_clip "
        "| CPU ms/sample ck-wds · ck-csv · open_clip | load (1 min) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, w, runs, load in results:
        get = runs.get
        cells = [
            str(size),
            str(w),
            med(get("ck-wds", []), "sps"),
            med(get("ck-csv", []), "sps"),
            med(get("open_clip", []), "sps"),
            _spread(ratios(runs, "ck-wds")),
            _spread(ratios(runs, "ck-csv")),
            " · ".join(cpu(get(n, [])) for n in PIPELINES),
            f"{load:.2f}",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)
    end_load = os.getloadavg()
    print(
        f"\nRatios: median of per-round ratios (min–max over {args.repeats} rounds). Load average "
        f"(1/5/15 min) at start {start_load[0]:.2f}/{start_load[1]:.2f}/{start_load[2]:.2f}, "
        f"at end {end_load[0]:.2f}/{end_load[1]:.2f}/{end_load[2]:.2f} (includes this benchmark)."
    )


if __name__ == "__main__":
    main()
