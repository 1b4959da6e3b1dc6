"""``contrastkit demo pretrained``: a Hugging Face CLIP in, fine-tuned on the user's pairs, and out.

No pretrained CLIP ships with any package, so the demo makes one the way a user would receive it:

1. a small CLIP (ViT 32 px / patch 8, 2 layers; text transformer, 2 layers), randomly initialised
   and saved by transformers as a ``CLIPModel`` folder with a tokenizer and an image processor;
2. trained on built-in Shapes with ``model.from: hf:DIR``, then exported with
   ``contrastkit export --format hf``: a "pretrained" CLIP folder that transformers loads;
3. that folder fine-tuned on Fashion-MNIST written as PNG files + a CSV (the user's pairs), with
   ``model.from`` again;
4. WiSE-FT between the pretrained CLIP (α = 0) and the fine-tuned one (α = 1): zero-shot on Fashion
   (its test rows, templates never trained) and on Shapes (what fine-tuning may forget).
"""

from __future__ import annotations

import time
from pathlib import Path

from contrastkit.data import DataConfig, build
from contrastkit.data.convert import write_csv
from contrastkit.data.fashion import EVAL_TEMPLATES
from contrastkit.evaluation.wise import format_wise, wise_sweep
from contrastkit.models import ModelConfig
from contrastkit.models.tokenizer import train_word_tokenizer
from contrastkit.train import OptimConfig, RunConfig, TrainConfig, train
from contrastkit.train.export import export_run

__all__ = ["make_tiny_clip", "pretrained_demo"]


def make_tiny_clip(folder: str | Path, texts: list[str], seed: int = 0) -> Path:
    """A randomly initialised small ``CLIPModel`` folder (weights, word tokenizer over ``texts``,
    image processor: shorter side 32, 32×32 centre crop)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(folder)
    torch.manual_seed(seed)
    tok = train_word_tokenizer(texts, 2000)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(
        text_config={
            **text,
            "vocab_size": len(tok),
            "max_position_embeddings": 32,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,
        },
        vision_config={**text, "image_size": 32, "patch_size": 8},
        projection_dim=64,
    )
    CLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def _run(
    name: str, out: str, source: Path, data: DataConfig, steps: int, threads: int, progress: bool
) -> RunConfig:
    return RunConfig(
        name=name,
        out_dir=out,
        data=data,
        model=ModelConfig(from_=f"hf:{source}"),
        optim=OptimConfig(lr=1e-3, warmup_steps=20),
        train=TrainConfig(
            steps=steps,
            batch_size=128,
            threads=threads,
            ckpt_every=steps,
            progress=progress,
            tensorboard=False,
            channels_last=False,  # the published numbers predate channels-last as the default
        ),
    )


def pretrained_demo(
    out: str = "runs",
    steps: tuple[int, int] = (400, 150),
    n_fashion: tuple[int, int] = (6000, 2000),
    threads: int = 0,
    progress: bool = True,
    n_eval: int = 1000,
) -> list[dict[str, float]]:
    """Run the four steps of the module docstring under ``out``; returns the WiSE-FT rows."""
    t0 = time.perf_counter()
    root = Path(out) / "pretrained-demo"
    fashion = {s: build("fashion_mnist", s, n=n) for s, n in zip(("train", "test"), n_fashion)}
    shapes = build("shapes", "train", n=4000)
    prompts = [t.format(c) for t in EVAL_TEMPLATES for c in fashion["test"].tasks["class"].classnames]
    texts = shapes.flat_captions()[0] + fashion["train"].flat_captions()[0] + prompts
    random_clip = make_tiny_clip(root / "clip-random", texts)

    shapes_data = DataConfig(
        params={"image_size": 32, "seed": 0},
        splits={"train": {"n": 20000}, "test": {"n": 1000}},
        eval_splits=("test",),
    )
    first = train(
        _run("shapes-from-hf", str(root), random_clip, shapes_data, steps[0], threads, progress),
        overwrite=True,
    )
    pretrained = export_run(first.run_dir, "hf", root / "clip-shapes-hf")

    csv_dir = root / "fashion-csv"
    if (csv_dir / "pairs.csv").exists():
        (csv_dir / "pairs.csv").unlink()
    for split, pairs in fashion.items():
        write_csv(pairs, csv_dir, split)
    fashion_data = DataConfig(
        name="csv",
        params={
            "path": str(csv_dir / "pairs.csv"),
            "caption_columns": [f"caption{s}" for s in ("", "_1", "_2", "_3")],
            "label_columns": ["class"],
            "templates": list(EVAL_TEMPLATES),
            "split_column": "split",
        },
        splits={"train": {}, "test": {}},
        eval_splits=("test",),
    )
    second = train(
        _run("fashion-from-hf", str(root), pretrained, fashion_data, steps[1], threads, progress),
        overwrite=True,
    )
    rows = wise_sweep(second.run_dir, [0.0, 0.25, 0.5, 0.75, 1.0], reference=("shapes", "test"), n=n_eval)
    print(format_wise(rows))
    print(f"wrote {second.run_dir}/wise.png; total {time.perf_counter() - t0:.0f} s")
    return rows
