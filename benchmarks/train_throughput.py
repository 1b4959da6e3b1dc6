"""Training-step throughput and peak memory, every configuration interleaved in ONE process.

1. ``gradcache``: the Shapes demo model (ResNet-18 + BERT towers, CLIP loss; the image tower
   channels-last, as the trainer runs it by default) with a plain batch of 256 vs a contrastive
   batch of 4096 embedded in chunks of 256 with gradient caching (+ tiled loss), keeping the first
   pass's graphs of 0 / 8 / 16 of the 16 chunks per modality (``scale.keep_chunks``); ``keep 0,
   two-pass`` also re-runs the last chunk (the old algorithm); and a budget of 8 chunks' graphs
   spent by ``scale.graph_plan`` (full graphs where they save the most time per byte, partial
   graphs — ``scale.partial_graph`` — where those do). The last lines time one chunk's forward
   with (F) and without (F₀) a graph, its backward (B), AdamW's step (O) and the loss on one
   chunk's pairs (l) and on the whole batch's (L): the bound
   ``n(F + B + O + l) / (n(F + B) + O + L + F₀·(n − k))`` for k of n chunks kept, and the plan's.
2. ``reference``: a reference shape — ViT on 32 px images, patch 8, width 128, 2 layers; text
   transformer, context 32, width 128, 2 layers; embedding 128; batch 256; AdamW — as a contrastkit
   model (timm ViT + transformers BERT) and as an open_clip ``CLIP`` model with ``ClipLoss``
   (only if open_clip is installed: ``make bench``).

Each case runs in one process: every configuration once per round, on the same number of samples
(order reversed every other round to cancel drift); a configuration's ratio is its samples/s over
the first configuration's *in the same round*. Reported: median ratio with min–max over rounds,
median samples/s, peak memory (kernel peak RSS after a reset minus the RSS before, in an untimed
pass on a fresh heap before the rounds, large blocks mmap'd) and the 1-minute load average before
and after the rounds.

    .venv/bin/python benchmarks/train_throughput.py --threads 2 --rounds 5
    .venv/bin/python benchmarks/train_throughput.py --cases gradcache --device cuda   # a GPU
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from _measure import peak_bytes, reset_peak, rss_bytes  # sets OMP_WAIT_POLICY before torch starts

Step = Callable[[], None]
CHUNK, BIG, SMALL = 256, 4096, 256


def _malloc(mmap_threshold: int) -> None:
    """glibc: blocks of at least ``mmap_threshold`` bytes are mmap'd (returned to the OS on free).
    64 KiB for the memory pass, so peak RSS tracks live tensors; 32 MiB (the ceiling glibc's own
    adaptive threshold reaches after warm-up, as in training) for timing, since a low fixed
    threshold costs page faults on every large tensor and slows the larger configurations most."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2 * mmap_threshold)  # M_TRIM_THRESHOLD, as glibc's adaptive rule sets it
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


def _ck_model(cfg, n: int, device: str):
    """A contrastkit model, its AdamW and CLIP loss, and a batch of n Shapes pairs (text padded to
    the full context of 32, as open_clip always runs), on ``device``."""
    import torch

    from contrastkit.data import make_shapes
    from contrastkit.losses import CLIPLoss
    from contrastkit.models import build_model

    pairs = make_shapes("train", n)
    model = build_model(cfg, texts=pairs.flat_captions()[0]).train().to(device)
    loss = CLIPLoss().to(device)
    opt = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=1e-4)
    ids = model.tokenize([c[0] for c in pairs.captions[:n]])
    ids = torch.nn.functional.pad(ids, (0, 32 - ids.shape[1]), value=model.text_tower().pad_id)
    return model, loss, opt, {"image": pairs.images[:n].to(device), "text": ids.to(device)}


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


def _cached(model, loss, opt, batch, keep, keep_last: bool, partial=0) -> Step:
    from contrastkit.scale import TiledLoss, backward_through_chunks, embed_in_chunks

    objective = TiledLoss(loss, 1024)

    def step() -> None:
        c = embed_in_chunks(model, batch, CHUNK, keep, keep_last, partial=partial)
        objective(c.reps["image"], c.reps["text"]).backward()
        backward_through_chunks(model, batch, c)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _parts(model, loss, opt, batch) -> dict[str, Step]:
    """One chunk's forward with a graph (F), without (F₀), its backward (B) and AdamW's step (O);
    the loss's forward and backward on one chunk's embeddings (l: plain's, 1 of n) and on the whole
    batch's (L: the cached step's tiled loss over all of them)."""
    import torch

    from contrastkit.scale import TiledLoss

    chunk = {m: x[:CHUNK] for m, x in batch.items()}
    held: list[torch.Tensor] = []
    with torch.no_grad():
        dim = model(chunk)["image"].shape[1]
    dev = batch["image"].device
    reps = [torch.randn(BIG, dim, device=dev, requires_grad=True) for _ in range(2)]
    small = [r[:CHUNK].detach().requires_grad_() for r in reps]
    tiled = TiledLoss(loss, 1024)

    def loss_small() -> None:
        loss(*small).backward()

    def loss_big() -> None:
        tiled(*reps).backward()

    def fwd() -> None:
        emb = model(chunk)
        held[:] = [sum(e.float().pow(2).sum() for e in emb.values())]

    def fwd0() -> None:
        with torch.no_grad():
            model(chunk)

    def bwd() -> None:
        held.pop().backward()

    def opt_step() -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"F": fwd, "F0": fwd0, "B": bwd, "O": opt_step, "l": loss_small, "L": loss_big}


class Case(NamedTuple):
    """What one case compares (step, samples per step), the parts of one chunk's step (gradcache
    only), a note printed with them, and the plan's extra forward work per step in seconds."""

    configs: dict[str, tuple[Step, int]]
    parts: dict[str, Step]
    note: str = ""
    rerun_s: float = 0.0
    forward_s: float = 1.0  # the planner's time for one chunk's forward without a graph (all towers)


def gradcache_case(device: str) -> Case:
    import torch

    from contrastkit.models import ModelConfig
    from contrastkit.train.speed import apply_speed_options

    model, loss, opt, batch = _ck_model(ModelConfig(), BIG, device)
    # as the trainer runs it: train.channels_last is on by default (the ResNet's weights re-strided
    # in place, so the optimizer built above holds the same tensors)
    apply_speed_options(model, compile_towers=False, channels_last=True, device=torch.device(device))
    n = BIG // CHUNK
    configs = {
        f"plain {SMALL}": (_plain(model, loss, opt, batch, SMALL), BIG),
        f"cached {BIG}, keep 0, two-pass": (_cached(model, loss, opt, batch, 0, False), BIG),
        f"cached {BIG}, keep 0 (+last)": (_cached(model, loss, opt, batch, 0, True), BIG),
        f"cached {BIG}, keep {n // 2}/{n}": (_cached(model, loss, opt, batch, n // 2, True), BIG),
        f"cached {BIG}, keep {n}/{n}": (_cached(model, loss, opt, batch, n, True), BIG),
    }
    from contrastkit.scale import graph_bytes, measure_costs, plan_graphs

    full = sum(graph_bytes(model, batch, CHUNK).values())
    budget = n // 2 * full  # the memory of half of the chunks' full graphs
    costs = measure_costs(model, batch, CHUNK)  # as scale.graph_memory does on the first batch
    plan = plan_graphs(costs, {"image": n, "text": n}, budget)
    configs[f"cached {BIG}, graph_memory = {n // 2} chunks' graphs"] = (
        _cached(model, loss, opt, batch, plan.full, True, plan.partial),
        BIG,
    )
    lines = [f"{full / 2**20:.0f} MiB (graph_bytes)"]
    for m, c in costs.items():
        part = (
            "refused"
            if c.partial_bytes is None
            else f"{c.partial_bytes / 2**20:.0f} MiB, +{c.partial_s * 1e3:.0f} ms"
        )
        lines.append(
            f"{m}: full {c.full_bytes / 2**20:.0f} MiB, re-run {c.rerun_s * 1e3:.0f} ms, partial {part}"
        )
    lines.append(f"plan for {budget / 2**20:.0f} MiB: {plan.describe({'image': n, 'text': n})}")
    rerun = sum(
        c.rerun_s * (n - plan.full.get(m, 0) - p) + (c.partial_s or 0) * p
        for m, c in costs.items()
        for p in [plan.partial.get(m, 0)]
    )  # pass 2's extra forward work under the plan, from the planner's own measurements
    lines.append(f"plan's re-run work per step: {rerun * 1e3:.0f} ms (planner's units)")
    forward = sum(c.rerun_s for c in costs.values())
    return Case(configs, _parts(model, loss, opt, batch), "\n  ".join(lines), rerun, forward)


def reference_case(device: str) -> Case:
    import torch

    model, loss, opt, batch = _ck_model(_vit_ref_config(), SMALL, device)
    configs = {"contrastkit ViT-ref 256": (_plain(model, loss, opt, batch, SMALL), SMALL)}
    try:
        from open_clip.loss import ClipLoss
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    except ImportError:
        print("open_clip not installed (make bench installs it): contrastkit row only")
        return Case(configs, {})
    oc = (
        CLIP(
            embed_dim=128,
            vision_cfg=CLIPVisionCfg(layers=2, width=128, head_width=32, patch_size=8, image_size=32),
            text_cfg=CLIPTextCfg(context_length=32, vocab_size=1000, width=128, heads=4, layers=2),
        )
        .train()
        .to(device)
    )
    oc_loss, oc_opt = ClipLoss(), torch.optim.AdamW(oc.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    images, texts = (
        torch.randn(SMALL, 3, 32, 32, generator=g).to(device),
        torch.randint(1, 1000, (SMALL, 32), generator=g).to(device),
    )

    def oc_step() -> None:
        img, txt, scale = oc(images, texts)
        oc_loss(img, txt, scale).backward()
        oc_opt.step()
        oc_opt.zero_grad(set_to_none=True)

    configs["open_clip ViT-ref 256"] = (oc_step, SMALL)
    return Case(configs, {})


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time(fn: Step, device: str = "cpu") -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _peak_mib(step: Step, device: str) -> float:
    """Peak memory of one step beyond what was held before it: kernel peak RSS on the CPU, the
    allocator's peak on a GPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    reset_peak()
    base = rss_bytes()
    step()
    return (peak_bytes() - base) / 2**20


def run_case(name: str, rounds: int, repeat: int, device: str = "cpu") -> None:
    case = {"gradcache": gradcache_case, "reference": reference_case}[name](device)
    configs, parts = case.configs, case.parts
    names = list(configs)
    peaks: dict[str, float] = {}
    _malloc(64 * 2**10)
    for k, (step, _) in configs.items():  # memory pass on a fresh heap, before the timed rounds
        step()  # warm-up: lazy kernels, one-time buffers
        peaks[k] = _peak_mib(step, device)
    _malloc(32 * 2**20)
    for step, _ in configs.values():
        step()
    rates: dict[str, list[float]] = {k: [] for k in names}
    ratios: dict[str, list[float]] = {k: [] for k in names}
    part_t: dict[str, list[float]] = {k: [] for k in parts}
    load0 = os.getloadavg()[0]
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            step, samples = configs[k]
            dt = sum(_time(step, device) for _ in range(repeat)) / repeat
            rates[k].append(samples / dt)
        for k in names:
            ratios[k].append(rates[k][-1] / rates[names[0]][-1])
        for _ in range(3):
            for k in parts:
                part_t[k].append(_time(parts[k], device))
    load1 = os.getloadavg()[0]
    med = statistics.median
    print(f"\n[{name}]  {rounds} rounds, load {load0:.2f} before / {load1:.2f} after")
    print(f"  {'configuration':<42} {'samples/s':>10} {'ratio (median, min–max)':>24} {'peak MiB':>9}")
    for k in names:
        spread = f"{med(ratios[k]):.3f} ({min(ratios[k]):.3f}–{max(ratios[k]):.3f})"
        print(f"  {k:<42} {med(rates[k]):>10.0f} {spread:>24} {peaks[k]:>9.0f}")
    if parts:
        _print_bound({k: med(v) for k, v in part_t.items()}, case)


def _print_bound(t: dict[str, float], case: Case) -> None:
    """The ratio a configuration could reach if nothing but the measured parts cost time."""
    f, f0, b, o, small, big = (t[k] for k in ("F", "F0", "B", "O", "l", "L"))
    ms = f"F {f * 1e3:.0f}, F0 (no graph) {f0 * 1e3:.0f}, B {b * 1e3:.0f}, O (AdamW) {o * 1e3:.0f} ms"
    print(f"  one chunk of {CHUNK}: {ms}; its graphs (all towers): {case.note}")
    n = BIG // CHUNK
    loss = f"loss fwd+bwd {small * 1e3:.1f} ms on {CHUNK} (plain, per chunk)"
    loss += f", {big * 1e3:.0f} ms on {BIG} (tiled)"
    print(f"  B/F = {b / f:.2f}, F0/F = {f0 / f:.2f}; {loss}")
    plain = n * (f + b + o + small)
    print("  bound n(F+B+O+l) / (n(F+B) + O + L + re-run work), for k of n chunks kept:")
    for k in (0, 1, n // 2, n):
        print(f"    k = {k:>2}/{n}: {plain / (n * (f + b) + o + big + f0 * (n - k)):.3f}")
    # the planner times a CPU in process CPU time (all threads), the parts in wall time: its re-run
    # work in wall time is its share of a forward without a graph, times F0
    rerun = case.rerun_s / case.forward_s * f0
    bound = plain / (n * (f + b) + o + big + rerun)
    print(f"    graph_memory plan ({rerun * 1e3:.0f} ms re-run work): {bound:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="gradcache,reference")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each configuration per round")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the device)")
    p.add_argument("--tiny", action="store_true", help="toy sizes (chunks of 8, batch 64): a smoke run")
    args = p.parse_args()
    if args.tiny:
        global CHUNK, BIG, SMALL
        CHUNK, BIG, SMALL = 8, 64, 8
    cases = args.cases.split(",")
    if len(cases) == 1:
        import torch

        torch.set_num_threads(args.threads)
        policy = os.environ["OMP_WAIT_POLICY"]
        print(f"{args.threads} threads, OMP_WAIT_POLICY={policy}, torch {torch.__version__}", flush=True)
        run_case(cases[0], args.rounds, args.repeat, args.device)
        return
    for case in cases:  # one process per case: its memory pass needs a fresh heap
        argv = [sys.executable, __file__, "--cases", case, "--threads", str(args.threads)]
        more = ["--rounds", str(args.rounds), "--repeat", str(args.repeat), "--device", args.device]
        subprocess.run([*argv, *more, *(["--tiny"] if args.tiny else [])], check=True)


if __name__ == "__main__":
    main()
