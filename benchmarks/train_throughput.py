"""Training-step throughput and peak memory, every configuration interleaved in ONE process.

1. ``gradcache``: the Shapes demo model (ResNet-18 + BERT towers, CLIP loss) with a plain batch of
   256 vs a contrastive batch of 4096 embedded in chunks of 256 with gradient caching (+ tiled
   loss), keeping the first pass's graphs of 0 / 8 / 16 of the 16 chunks per modality
   (``scale.keep_chunks``); ``keep 0, two-pass`` also re-runs the last chunk (the old algorithm).
   The ``model`` row times one chunk's forward with and without a graph and its backward, the
   inputs of the bound ``(F + B) / (F + B + F₀·(n − k)/n)`` for k of n chunks kept.
2. ``reference``: a reference shape — ViT on 32 px images, patch 8, width 128, 2 layers; text
   transformer, context 32, width 128, 2 layers; embedding 128; batch 256; AdamW — as a contrastkit
   model (timm ViT + transformers BERT) and as an open_clip ``CLIP`` model with ``ClipLoss``
   (only if open_clip is installed: ``make bench``).

Each round runs every configuration of a case once, on the same number of samples, in one process
(order reversed every other round to cancel drift); a configuration's ratio is its samples/s over
the first configuration's *in the same round*. Reported: median ratio with min–max over rounds,
median samples/s, peak memory (kernel peak RSS after a reset, minus the RSS before, in an untimed
pass after the rounds with large blocks mmap'd) and the 1-minute load average before and after.

    flock /tmp/ck-bench.lock .venv/bin/python benchmarks/train_throughput.py --threads 1
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
from collections.abc import Callable

from _measure import peak_bytes, reset_peak, rss_bytes  # sets OMP_WAIT_POLICY before torch starts

Step = Callable[[], None]
CHUNK, BIG, SMALL = 256, 4096, 256


def _mmap_large_blocks() -> None:
    """In-process MALLOC_MMAP_THRESHOLD_=64KiB, for the memory pass only: freed tensors leave the
    resident set, so peak RSS tracks live tensors (timing runs with glibc's default, as training
    does: a fixed low threshold costs a page-fault storm that would slow the larger configurations)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _vit_ref_config():
    from contrastkit.models import ModelConfig, TowerConfig

    vit = {"img_size": 32, "patch_size": 8, "embed_dim": 128, "depth": 2, "num_heads": 4}
    return ModelConfig(
        towers={
            "image": TowerConfig("timm", {"arch": "vit_tiny_patch16_224", "kwargs": vit}),
            "text": TowerConfig(
                "hf_text",
                {"hidden_size": 128, "layers": 2, "heads": 4, "intermediate_size": 512, "max_length": 32},
            ),
        },
        embed_dim=128,
    )


def _ck_model(cfg, n: int):
    """A contrastkit model, its AdamW and CLIP loss, and a batch of n Shapes pairs (text padded to
    the full context of 32, as open_clip always runs)."""
    import torch

    from contrastkit.data import make_shapes
    from contrastkit.losses import CLIPLoss
    from contrastkit.models import build_model

    pairs = make_shapes("train", n)
    model = build_model(cfg, texts=pairs.flat_captions()[0]).train()
    loss = CLIPLoss()
    opt = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=1e-4)
    ids = model.tokenize([c[0] for c in pairs.captions[:n]])
    ids = torch.nn.functional.pad(ids, (0, 32 - ids.shape[1]), value=model.text_tower().pad_id)
    return model, loss, opt, {"image": pairs.images[:n], "text": ids}


def _plain(model, loss, opt, batch, n: int) -> Step:
    """Plain steps of n samples over the whole batch (as many samples as one cached step)."""
    parts = [{m: x[i : i + n] for m, x in batch.items()} for i in range(0, len(batch["image"]), n)]

    def step() -> None:
        for b in parts:
            emb = model(b)
            loss(emb["image"], emb["text"]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def _cached(model, loss, opt, batch, keep: int, keep_last: bool) -> Step:
    from contrastkit.scale import TiledLoss, backward_through_chunks, embed_in_chunks

    objective = TiledLoss(loss, 1024)

    def step() -> None:
        c = embed_in_chunks(model, batch, CHUNK, keep, keep_last)
        objective(c.reps["image"], c.reps["text"]).backward()
        backward_through_chunks(model, batch, c)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _parts(model, batch) -> dict[str, Step]:
    """One chunk's forward with a graph (F), without (F₀), and backward (B, after an untimed F)."""
    import torch

    chunk = {m: x[:CHUNK] for m, x in batch.items()}
    held: list[torch.Tensor] = []

    def fwd() -> None:
        emb = model(chunk)
        held[:] = [sum(e.float().pow(2).sum() for e in emb.values())]

    def fwd0() -> None:
        with torch.no_grad():
            model(chunk)

    def bwd() -> None:
        held.pop().backward()
        model.zero_grad(set_to_none=True)

    return {"F": fwd, "F0": fwd0, "B": bwd}


def gradcache_case() -> tuple[dict[str, tuple[Step, int]], dict[str, Step], str]:
    from contrastkit.models import ModelConfig

    model, loss, opt, batch = _ck_model(ModelConfig(), BIG)
    n = BIG // CHUNK
    configs = {
        f"plain {SMALL}": (_plain(model, loss, opt, batch, SMALL), BIG),
        f"cached {BIG}, keep 0, two-pass": (_cached(model, loss, opt, batch, 0, False), BIG),
        f"cached {BIG}, keep 0 (+last)": (_cached(model, loss, opt, batch, 0, True), BIG),
        f"cached {BIG}, keep {n // 2}/{n}": (_cached(model, loss, opt, batch, n // 2, True), BIG),
        f"cached {BIG}, keep {n}/{n}": (_cached(model, loss, opt, batch, n, True), BIG),
    }
    from contrastkit.scale import graph_bytes

    note = f"{sum(graph_bytes(model, batch, CHUNK).values()) / 2**20:.0f} MiB (graph_bytes)"
    return configs, _parts(model, batch), note


def reference_case() -> tuple[dict[str, tuple[Step, int]], dict[str, Step], str]:
    import torch

    model, loss, opt, batch = _ck_model(_vit_ref_config(), SMALL)
    configs = {"contrastkit ViT-ref 256": (_plain(model, loss, opt, batch, SMALL), SMALL)}
    try:
        from open_clip.loss import ClipLoss
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    except ImportError:
        print("open_clip not installed (make bench installs it): contrastkit row only")
        return configs, {}, ""
    oc = CLIP(
        embed_dim=128,
        vision_cfg=CLIPVisionCfg(layers=2, width=128, head_width=32, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=32, vocab_size=1000, width=128, heads=4, layers=2),
    ).train()
    oc_loss, oc_opt = ClipLoss(), torch.optim.AdamW(oc.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    images, texts = (
        torch.randn(SMALL, 3, 32, 32, generator=g),
        torch.randint(1, 1000, (SMALL, 32), generator=g),
    )

    def oc_step() -> None:
        img, txt, scale = oc(images, texts)
        oc_loss(img, txt, scale).backward()
        oc_opt.step()
        oc_opt.zero_grad(set_to_none=True)

    configs["open_clip ViT-ref 256"] = (oc_step, SMALL)
    return configs, {}, ""


def _time(fn: Step) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_case(name: str, rounds: int, repeat: int) -> None:
    configs, parts, note = {"gradcache": gradcache_case, "reference": reference_case}[name]()
    names = list(configs)
    for step, _ in configs.values():
        step()  # warm-up: allocator pools, lazy kernels
    rates: dict[str, list[float]] = {k: [] for k in names}
    ratios: dict[str, list[float]] = {k: [] for k in names}
    peaks: dict[str, float] = {}
    part_t: dict[str, list[float]] = {k: [] for k in parts}
    load0 = os.getloadavg()[0]
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            step, samples = configs[k]
            dt = sum(_time(step) for _ in range(repeat)) / repeat
            rates[k].append(samples / dt)
        for k in names:
            ratios[k].append(rates[k][-1] / rates[names[0]][-1])
        for _ in range(3):
            for k in ("F", "F0", "B") if parts else ():
                if k == "B":
                    parts["F"]()
                part_t[k].append(_time(parts[k]))
    load1 = os.getloadavg()[0]
    _mmap_large_blocks()
    for k, (step, _) in configs.items():  # memory pass, after the timed rounds
        step()
        reset_peak()
        base = rss_bytes()
        step()
        peaks[k] = (peak_bytes() - base) / 2**20
    med = statistics.median
    print(f"\n[{name}]  {rounds} rounds, load {load0:.2f} before / {load1:.2f} after")
    print(f"  {'configuration':<34} {'samples/s':>10} {'ratio (median, min–max)':>24} {'peak MiB':>9}")
    for k in names:
        spread = f"{med(ratios[k]):.3f} ({min(ratios[k]):.3f}–{max(ratios[k]):.3f})"
        print(f"  {k:<34} {med(rates[k]):>10.0f} {spread:>24} {peaks[k]:>9.0f}")
    if parts:
        f, f0, b = (med(part_t[k]) for k in ("F", "F0", "B"))
        ms = f"F {f * 1e3:.0f} ms, F0 (no graph) {f0 * 1e3:.0f} ms, B {b * 1e3:.0f} ms"
        print(f"  model, one chunk of {CHUNK}: {ms}; graphs kept per chunk (all towers): {note}")
        print(f"  B/F = {b / f:.2f}, F0/F = {f0 / f:.2f}; bound (F+B)/(F+B+F0·(n−k)/n):")
        n = BIG // CHUNK
        for k in (0, 1, n // 2, n):
            print(f"    k = {k:>2}/{n}: {(f + b) / (f + b + f0 * (n - k) / n):.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="gradcache,reference")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each configuration per round")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(
        f"{args.threads} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, torch {torch.__version__}"
    )
    for case in args.cases.split(","):
        run_case(case, args.rounds, args.repeat)


if __name__ == "__main__":
    main()
