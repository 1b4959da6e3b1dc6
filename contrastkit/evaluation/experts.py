"""Expert usage per modality of a sparse mixture-of-experts model (LIMoE), with its plot.

Protocol (task ``experts``): the evaluated split's images and captions are embedded in eval mode
(the evaluation batch size, eval capacity) while every MoE layer counts, per modality, its tokens'
top-``k`` choices (``routed``) and the choices that found a slot (``kept``)
(:func:`contrastkit.models.moe.record_usage`). Per layer ``l`` and modality ``m``, with
``f_m[e] = routed_m[e] / Σ_e routed_m[e]`` the share of ``m``'s choices sent to expert ``e``:

* ``experts/<m>/layer<l>/entropy`` — ``H(f_m)`` in nats (``log E`` = every expert equally used);
* ``experts/<m>/layer<l>/used`` — experts receiving at least 1% of ``m``'s choices;
* ``experts/<m>/layer<l>/dropped`` — ``1 − Σ kept / Σ routed``: choices over capacity;
* ``experts/layer<l>/overlap`` — ``Σ_e min(f_image[e], f_text[e])`` (1: both modalities use the
  experts in the same proportions, 0: disjoint experts; image and text only).

Outputs: ``experts.png`` (one panel per MoE layer, a bar per expert and modality: ``f_m[e]``) and
``experts.json`` (the counts) in ``options["plot_dir"]`` (the report's ``plots/<split>/``).
A model without MoE layers is a :class:`ConfigError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from contrastkit.core.errors import ConfigError
from contrastkit.core.io import atomic_write_json, save_png
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult

__all__ = ["expert_fractions", "experts_task", "plot_expert_usage"]


def expert_fractions(usage: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{modality: [L, E]}`` shares of each layer's top-k choices sent to each expert."""
    return {m: r["routed"] / np.maximum(r["routed"].sum(1, keepdims=True), 1) for m, r in usage.items()}


def plot_expert_usage(usage: dict[str, dict[str, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """Bars of :func:`expert_fractions`: one panel per MoE layer, experts on the x axis, one bar
    colour per modality (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frac = expert_fractions(usage)
    mods = sorted(frac)
    layers, experts = next(iter(frac.values())).shape
    fig, axes = plt.subplots(1, layers, figsize=(3.2 * layers + 0.8, 3.0), squeeze=False)
    width = 0.8 / len(mods)
    for layer, ax in enumerate(axes[0]):
        for j, m in enumerate(mods):
            ax.bar(np.arange(experts) + (j - (len(mods) - 1) / 2) * width, frac[m][layer], width, label=m)
        ax.axhline(1 / experts, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(experts))
        ax.set_xlabel("expert")
        ax.set_title(f"MoE layer {layer}", fontsize=9)
    axes[0][0].set_ylabel("share of the modality's tokens")
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


@EVAL_TASKS.register("experts")
def experts_task(ctx: EvalContext) -> TaskResult:
    """Expert usage per modality and MoE layer of a sparse-MoE model (LIMoE): routing entropy,
    experts used, tokens dropped by capacity, image/text overlap; plots it."""
    if ctx.enc.expert_usage is None:
        raise ConfigError("task 'experts' needs a model with sparse mixture-of-experts layers (tower limoe)")
    usage = ctx.enc.expert_usage(ctx.pairs.images, ctx.captions[0])
    frac = expert_fractions(usage)
    out: dict[str, float] = {}
    for m, f in frac.items():
        routed, kept = usage[m]["routed"].sum(1), usage[m]["kept"].sum(1)
        for i, row in enumerate(f):
            p = row[row > 0]
            out[f"experts/{m}/layer{i}/entropy"] = float(-(p * np.log(p)).sum())
            out[f"experts/{m}/layer{i}/used"] = float((row >= 0.01).sum())
            out[f"experts/{m}/layer{i}/dropped"] = float(1 - kept[i] / max(routed[i], 1))
    if {"image", "text"} <= set(frac):
        for i, (fi, ft) in enumerate(zip(frac["image"], frac["text"])):
            out[f"experts/layer{i}/overlap"] = float(np.minimum(fi, ft).sum())
    plot_dir = ctx.options.get("plot_dir")
    if plot_dir is not None:
        name = ctx.pairs.name or "pairs"
        plot_expert_usage(usage, Path(plot_dir) / "experts.png", f"{name}: expert usage per modality")
        counts = {m: {k: v.tolist() for k, v in r.items()} for m, r in usage.items()}
        atomic_write_json(Path(plot_dir) / "experts.json", counts)
    return out, {}
