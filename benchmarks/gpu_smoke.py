"""GPU smoke check: the CUDA path of a training step, and the tiled losses against the dense ones.

What runs on a CUDA device (``--device cuda``, the default):

1. **Tiled = dense on the device**: CLIP, SigLIP and NT-Xent at ``--n`` rows (float32, D = 512,
   tile 1024): loss values and the embeddings' gradients of the tiled form against the dense form,
   reported as the largest relative difference (float32 rounding: ~1e-6), plus the peak device
   memory of each (``torch.cuda.max_memory_allocated``).
2. **The demo's training step**: ``contrastkit.demo.demo_config`` (ResNet + BERT towers, CLIP,
   batch 256) trained for ``--steps`` steps through the real trainer (``train.device=cuda``,
   pinned host batches, non-blocking copies, NCCL when launched by torchrun) in fp32 and in bf16
   autocast; samples/s is the median of the trainer's own ``samples_per_s`` log after the first
   logged interval (start-up and cuDNN autotuning excluded).

It writes ``--out`` (JSON: device name, torch/CUDA versions, every figure) and prints a markdown
table for docs/distributed.md. Without a CUDA device it says so and exits with status 2 — nothing
is measured. ``--device cpu --tiny`` runs the same code at toy sizes (the test suite does, so the
script cannot rot between GPU loans)::

    .venv/bin/python benchmarks/gpu_smoke.py                 # on a machine with a GPU
    .venv/bin/python benchmarks/gpu_smoke.py --device cpu --tiny --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from contrastkit.demo import demo_config
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.infonce import ntxent_loss
from contrastkit.losses.siglip import siglip_loss
from contrastkit.scale.tiled import tiled_clip_loss, tiled_siglip_loss
from contrastkit.scale.tiled_zoo import tiled_ntxent_loss
from contrastkit.train import train

ROOT = Path(__file__).resolve().parents[1]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _peak(device: torch.device) -> int:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def tiled_vs_dense(device: torch.device, n: int, dim: int, tile: int) -> list[dict]:
    """Each loss's tiled and dense forms on the same embeddings: value, gradient, peak memory."""
    g = torch.Generator().manual_seed(0)
    x0 = F.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
    y0 = F.normalize(x0.cpu() + 0.5 * torch.randn(n, dim, generator=g), dim=1).to(device)
    s, t, b = (
        torch.tensor(14.3, device=device),
        torch.tensor(10.0, device=device),
        torch.tensor(-10.0, device=device),
    )
    forms = {
        "clip": (lambda x, y: clip_loss(x, y, s), lambda x, y: tiled_clip_loss(x, y, s, tile_size=tile)),
        "siglip": (
            lambda x, y: siglip_loss(x, y, t, b),
            lambda x, y: tiled_siglip_loss(x, y, t, b, tile_size=tile),
        ),
        "ntxent": (
            lambda x, y: ntxent_loss(x, y, 0.1),
            lambda x, y: tiled_ntxent_loss(x, y, 0.1, tile_size=tile),
        ),
    }
    rows = []
    for name, (dense, tiled) in forms.items():
        out = {}
        for kind, fn in (("dense", dense), ("tiled", tiled)):
            x, y = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
            _reset(device)
            loss = fn(x, y)
            loss.backward()
            out[kind] = (loss.detach(), x.grad, y.grad, _peak(device))
        d, tl = out["dense"], out["tiled"]
        rows.append(
            {
                "loss": name,
                "n": n,
                "value_rel_diff": _rel(tl[0], d[0]),
                "grad_rel_diff": max(_rel(tl[1], d[1]), _rel(tl[2], d[2])),
                "dense_peak_mib": d[3] / 2**20,
                "tiled_peak_mib": tl[3] / 2**20,
            }
        )
    return rows


def train_rate(device: torch.device, precision: str, steps: int, tiny: bool, out_dir: Path) -> dict:
    """Samples/s of the demo's run on ``device`` (median of the trainer's logs after the first)."""
    cfg = demo_config(str(out_dir), name=f"smoke-{precision}", steps=steps)
    train_cfg = dataclasses.replace(
        cfg.train,
        device=str(device),
        precision=precision,
        progress=False,
        tensorboard=False,
        log_every=max(1, steps // 10),
        ckpt_every=steps,
    )
    cfg = dataclasses.replace(cfg, train=train_cfg)
    if tiny:  # toy sizes: a few hundred images, batch 16
        splits = {k: {**v, "n": min(v.get("n", 256), 256)} for k, v in cfg.data.splits.items()}
        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, splits=splits),
            train=dataclasses.replace(cfg.train, batch_size=16),
        )
    result = train(cfg, overwrite=True)
    logs = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in logs if "samples_per_s" in r][1:]
    return {
        "precision": precision,
        "steps": result.step,
        "batch_size": cfg.train.batch_size,
        "samples_per_s": statistics.median(rates) if rates else float("nan"),
        "last_loss": result.last_loss,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--n", type=int, default=32768, help="rows of the tiled-vs-dense check")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200, help="training steps per precision")
    p.add_argument("--tiny", action="store_true", help="toy sizes (the test suite's CPU run)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_smoke.json")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device on this machine: nothing measured (docs/distributed.md says so)")
        return 2
    if a.tiny:
        a.n, a.dim, a.tile, a.steps = 96, 16, 32, 4
    losses = tiled_vs_dense(device, a.n, a.dim, a.tile)
    with tempfile.TemporaryDirectory() as tmp:
        rates = [train_rate(device, prec, a.steps, a.tiny, Path(tmp)) for prec in ("fp32", "bf16")]
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "losses": losses,
        "training": rates,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(info, indent=1) + "\n")
    print(f"{info['device']}, torch {info['torch']}, CUDA {info['cuda']}")
    print("| loss | N | value rel. diff | grad rel. diff | dense peak MiB | tiled peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in losses:
        print(
            f"| {r['loss']} | {r['n']} | {r['value_rel_diff']:.1e} | {r['grad_rel_diff']:.1e} | "
            f"{r['dense_peak_mib']:.0f} | {r['tiled_peak_mib']:.0f} |"
        )
    print("| demo step | precision | batch | samples/s |")
    print("|---|---|---:|---:|")
    for r in rates:
        print(f"| train | {r['precision']} | {r['batch_size']} | {r['samples_per_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
