"""The protocol recorded beside every evaluation number (``eval.json``'s ``protocol``): the metric
definitions (each task's docstring, or the fixed texts of the two defaults), the model record (run
folder, checkpoint, weight SHA-256, preprocessing), listed prompts with their SHA-256, and the
library versions. Used by :mod:`contrastkit.evaluation.report`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contrastkit.evaluation.external import file_sha256
from contrastkit.evaluation.tasks import EVAL_TASKS

__all__ = ["DEFINITIONS", "library_versions", "listed", "metric_definitions", "run_record"]

DEFINITIONS = {
    "zeroshot": "class = norm(mean_m norm(enc_text(template_m(name)))); prediction = argmax cosine; "
    "top1, top5 (NaN if C < 5), balanced accuracy = mean per-class recall; label -1 = not in the task",
    "retrieval": "CLIP_benchmark recall@K: text->image hit if its image is in the top K; image->text hit "
    "if any own caption is in the top K; ties broken by lower index; median rank 1-based; "
    "R@K_random_ties = exact expectation under uniformly random tie-breaking (per query "
    "1 - C(t, j)/C(t+m, j), j = K - #strictly better, t other and m own items tied with its best own "
    "score); tied_queries = queries whose best own score is shared by another item",
}


def listed(values: Sequence[str], limit: int = 200) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(values).encode()).hexdigest()
    out: dict[str, Any] = {"n": len(values), "sha256": digest}
    if len(values) <= limit:
        out["values"] = list(values)
    return out


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a number depends on."""
    out = {"python": platform.python_version()}
    for lib in ("contrastkit", "torch", "transformers", "timm", "numpy", "faiss-cpu", "tokenizers"):
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def metric_definitions(tasks: Sequence[str]) -> dict[str, str]:
    out = {}
    for name in tasks:
        doc = (EVAL_TASKS.get(name).__doc__ or "").strip().split("\n\n")[0]
        out[name] = DEFINITIONS.get(name, " ".join(doc.split()))
    return out


def run_record(run_dir: Path, model: Any, ckpt: Path) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": "contrastkit-run", "path": str(run_dir.resolve()), "checkpoint": ckpt.name}
    weights = ckpt / "model.safetensors"
    if weights.is_file():
        rec["weights_sha256"] = {weights.name: file_sha256(weights)}
    image = model.towers["image"] if "image" in model.towers else None
    if image is not None and hasattr(image, "mean"):
        rec["image_preprocessing"] = {
            "resize": None,
            "normalise": "(x - 255·mean) / (255·std) on uint8 inside the image tower",
            "mean": [round(float(v) / 255, 8) for v in image.mean.flatten()],
            "std": [round(float(v) / 255, 8) for v in image.std.flatten()],
        }
    text = model.towers["text"] if "text" in model.towers else None
    if text is not None and hasattr(text, "max_length"):
        rec["text"] = {"max_length": int(text.max_length), "pooling": str(getattr(text, "pooling", ""))}
    return rec
