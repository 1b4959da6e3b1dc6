"""Representational alignment: CKA and mutual k-NN between modalities, runs and checkpoints.

Task ``alignment`` (not E-ALIGNUNIF's ``geometry/alignment``, a distance between paired
embeddings): how similarly two representations of the same samples arrange them, with the pure
functions of :mod:`contrastkit.evaluation.similarity_analysis` — linear CKA, RBF CKA (σ =
``sigma`` × the median pairwise distance, default 0.8), both with the biased HSIC estimator unless
``unbiased``, and mutual k-NN alignment (Huh et al. 2024; cosine neighbours, ``k`` default 10).

Protocol. Samples: the evaluated split's rows, a seeded subsample of at most ``max_n`` (default
5000: CKA holds N × N float64 Gram matrices, ~200 MB each at 5000), the N used reported as ``n``.
Embeddings: L2-normalised, one vector per sample; ``text`` is each sample's first caption, other
modalities as in ``cross_modal`` (:func:`~contrastkit.evaluation.cross_modal.modality_embeddings`;
a pair uses the samples present in both).

* within the model, every pair ``a < b`` (sorted names) of its evaluated modalities:
  ``alignment/<a>-<b>/{linear_cka,rbf_cka,mutual_knn,n}``;
* ``compare: <run folder>``: the other run's encoders (built by
  :func:`~contrastkit.evaluation.multistage.run_encoders`, as ``contrastkit eval`` builds them) embed
  the same samples; per modality both models embed: ``alignment/compare/<m>/{...}``;
* ``along: <run folder>`` (usually the evaluated run itself): the image embeddings of the run's
  initial weights (step 0: :func:`~contrastkit.train.wise.initial_model`) and of every kept
  checkpoint (``checkpoints/step_*``; ``train.keep_checkpoints`` says how many are kept), each
  against its newest checkpoint's: ``alignment/along/step_<s>/{linear_cka,rbf_cka,mutual_knn}``
  and the plot ``alignment_along.png`` in the task's plot folder (``options["plot_dir"]``). Studies
  keep no checkpoints of their learning dynamics (``dynamics_every`` logs a metric): evaluate a
  study's run folders. A multistage run is refused (no single model per checkpoint).

Also ``alignment/k``, ``alignment/sigma`` and ``alignment/unbiased`` (0/1) record the settings.
Per-example arrays: each sample's mutual k-NN overlap under the ``mutual_knn`` keys (CKA is not a
mean over samples). Options (``ctx.options["alignment"]``): ``ALIGNMENT_DEFAULTS``; unknown keys
raise ConfigError. Evaluation only; TEST ORACLES in tests/evaluation/test_alignment.py.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.io import save_png
from contrastkit.evaluation.cross_modal import modality_embeddings
from contrastkit.evaluation.encoders import model_encoders
from contrastkit.evaluation.similarity_analysis import linear_cka, mutual_knn, rbf_cka, subsample_rows
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult

__all__ = [
    "ALIGNMENT_DEFAULTS",
    "alignment_task",
    "checkpoint_steps",
    "plot_along",
    "similarity_along_training",
    "similarity_metrics",
]

ALIGNMENT_DEFAULTS: dict[str, Any] = {
    "max_n": 5000,  # samples (seeded subsample beyond): Gram matrices are N × N
    "seed": 0,
    "k": 10,  # mutual k-NN
    "sigma": 0.8,  # RBF width as a fraction of the median pairwise distance (Kornblith et al.)
    "unbiased": False,  # HSIC estimator: biased (standard) or Song et al.'s unbiased one
    "compare": None,  # a second run folder: the same modality of both runs
    "along": None,  # a run folder: each checkpoint's image embeddings against its newest one
    "batch_size": 256,  # encoder batch size of the runs loaded for compare/along
    "chunk": 1024,  # rows per block of the k-NN search
}
_STEP = re.compile(r"step_(\d+)")


def _options(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(ALIGNMENT_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown alignment option(s) {unknown}; valid: {sorted(ALIGNMENT_DEFAULTS)}")
    o = {**ALIGNMENT_DEFAULTS, **raw}
    if int(o["max_n"]) < 4 or int(o["k"]) < 1 or not float(o["sigma"]) > 0 or int(o["chunk"]) < 1:
        raise ConfigError(f"alignment options out of range (max_n >= 4, k >= 1, sigma > 0): {o}")
    if int(o["k"]) >= int(o["max_n"]):
        raise ConfigError(f"alignment k = {o['k']} must be below max_n = {o['max_n']}")
    return o


def similarity_metrics(
    x: torch.Tensor, y: torch.Tensor, o: dict[str, Any]
) -> tuple[dict[str, float], np.ndarray]:
    """``({linear_cka, rbf_cka, mutual_knn, n}, per-sample overlaps)`` of two embeddings of the same
    rows, with the options ``o`` (``k`` capped at N − 1 for tiny sets)."""
    for name, z in (("x", x), ("y", y)):
        if z.ndim != 2:
            raise InputError(f"alignment needs one vector per sample; {name} has shape {tuple(z.shape)}")
    unbiased, k = bool(o["unbiased"]), min(int(o["k"]), len(x) - 1)
    overlap = mutual_knn(x, y, k, int(o["chunk"]))
    out = {
        "linear_cka": linear_cka(x, y, unbiased),
        "rbf_cka": rbf_cka(x, y, float(o["sigma"]), unbiased),
        "mutual_knn": float(overlap.mean()),
        "n": float(len(x)),
    }
    return out, overlap


def _present(ctx_pairs: Any, m: str, rows: np.ndarray) -> np.ndarray:
    mask = ctx_pairs.present.get(m)
    return rows if mask is None else rows[mask.numpy()[rows]]


def _add(prefix: str, res: tuple[dict[str, float], np.ndarray], out: dict, examples: dict) -> None:
    metrics, overlap = res
    out.update({f"{prefix}/{k}": v for k, v in metrics.items()})
    examples[f"{prefix}/mutual_knn"] = overlap


@EVAL_TASKS.register("alignment")
def alignment_task(ctx: EvalContext) -> TaskResult:
    """Representational alignment (Kornblith et al. 2019 CKA, linear and RBF σ = 0.8·median, biased
    HSIC by default; Huh et al. 2024 mutual k-NN, k = 10) on at most 5000 seeded samples: between
    every pair of the model's modalities, optionally the same modality of another run (``compare``)
    and each checkpoint of a run against its newest one (``along``)."""
    o = _options(dict(ctx.options.get("alignment", {})))
    rows = subsample_rows(len(ctx.pairs), int(o["max_n"]), int(o["seed"]))
    emb = modality_embeddings(ctx)
    out: dict[str, float] = {"alignment/k": float(o["k"]), "alignment/sigma": float(o["sigma"])}
    out["alignment/unbiased"] = float(bool(o["unbiased"]))
    examples: dict[str, np.ndarray] = {}
    for a, b in combinations(sorted(emb), 2):
        both = _present(ctx.pairs, b, _present(ctx.pairs, a, rows))
        if len(both) >= 4:
            _add(f"alignment/{a}-{b}", similarity_metrics(emb[a][both], emb[b][both], o), out, examples)
    if o["compare"] is not None:
        _compare(ctx, Path(o["compare"]), rows, emb, o, out, examples)
    if o["along"] is not None:
        images = ctx.pairs.image_tensor()[torch.from_numpy(rows)]
        steps = similarity_along_training(o["along"], images, o)
        for step, m in steps.items():
            out.update({f"alignment/along/step_{step}/{k}": v for k, v in m.items() if k != "n"})
        plot_dir = ctx.options.get("plot_dir")
        if plot_dir:
            plot_along(
                steps, Path(plot_dir) / "alignment_along.png", f"{Path(o['along']).name} on {ctx.pairs.name}"
            )
    return out, examples


def _compare(
    ctx: EvalContext,
    other_run: Path,
    rows: np.ndarray,
    emb: dict[str, torch.Tensor],
    o: dict[str, Any],
    out: dict[str, float],
    examples: dict[str, np.ndarray],
) -> None:
    """The same modality embedded by another run's encoders (the ones ``contrastkit eval`` builds)."""
    from contrastkit.evaluation.multistage import run_encoders

    if not (other_run / "config.yaml").is_file():
        raise InputError(f"alignment compare: {other_run} is not a run folder (no config.yaml)")
    other = run_encoders(other_run, int(o["batch_size"]))[3]
    sub = ctx.pairs.subset(rows)
    theirs = modality_embeddings(EvalContext(other, sub, options=ctx.options))
    shared = sorted(set(emb) & set(theirs))
    if not shared:
        raise InputError(
            f"alignment compare: the runs embed no common modality ({sorted(emb)} vs {sorted(theirs)})"
        )
    for m in shared:
        keep = _present(sub, m, np.arange(len(rows)))
        if len(keep) >= 4:
            res = similarity_metrics(emb[m][rows[keep]], theirs[m][keep], o)
            _add(f"alignment/compare/{m}", res, out, examples)


def checkpoint_steps(run_dir: str | Path) -> dict[int, Path]:
    """``{step: folder}`` of the run's ``checkpoints/step_*`` folders, by step."""
    folder = Path(run_dir) / "checkpoints"
    found = {}
    for p in folder.glob("step_*") if folder.is_dir() else []:
        match = _STEP.fullmatch(p.name)
        if match and p.is_dir():
            found[int(match.group(1))] = p
    return dict(sorted(found.items()))


def similarity_along_training(
    run_dir: str | Path, images: torch.Tensor, options: dict[str, Any] | None = None
) -> dict[int, dict[str, float]]:
    """``{step: {linear_cka, rbf_cka, mutual_knn, n}}``: the image embeddings of ``images`` by the
    run's initial weights (step 0) and by each kept checkpoint, against its newest checkpoint's
    (which scores 1). ``options``: as ``ALIGNMENT_DEFAULTS`` (k, sigma, unbiased, batch_size)."""
    from contrastkit.models.dual_encoder import build_model
    from contrastkit.train import load_run_config
    from contrastkit.train.checkpoint import latest_checkpoint, load_weights
    from contrastkit.train.wise import initial_model

    o = _options(dict(options or {}))
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise InputError(f"alignment along: {run_dir} is not a run folder (no config.yaml)")
    cfg = load_run_config(run_dir)
    if cfg.curation.mcl is not None:
        raise InputError(f"alignment along: {run_dir} is a multistage run; evaluate its stage folders")
    final = latest_checkpoint(run_dir, fallback=False)  # never other weights than the run's newest

    def embed(model: Any) -> torch.Tensor:
        return model_encoders(model.eval(), batch_size=int(o["batch_size"])).images(images)

    def load(folder: Path) -> Any:
        model = build_model(cfg.model, assets_dir=run_dir / "assets")
        load_weights(folder, model)
        return model

    ref = embed(load(final))
    last = int(_STEP.fullmatch(final.name).group(1))  # type: ignore[union-attr]
    out = {0: similarity_metrics(embed(initial_model(run_dir)), ref, o)[0]} if last > 0 else {}
    for step, folder in checkpoint_steps(run_dir).items():
        if step > last:
            continue  # newer than what latest.json names (a save in progress): not the run's weights
        z = ref if folder.resolve() == final.resolve() else embed(load(folder))
        out[step] = similarity_metrics(z, ref, o)[0]
    return dict(sorted(out.items()))


def plot_along(steps: dict[int, dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Linear CKA, RBF CKA and mutual k-NN of each checkpoint to the newest one against the step (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not steps:
        raise InputError("plot_along needs at least one checkpoint")
    xs = list(steps)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label in (("linear_cka", "linear CKA"), ("rbf_cka", "RBF CKA"), ("mutual_knn", "mutual k-NN")):
        ax.plot(xs, [steps[s][key] for s in xs], marker="o", label=label)
    ax.set_xlabel("training step (0 = initial weights)")
    ax.set_ylabel("similarity to the newest checkpoint (1 = same)")
    ax.set_ylim(-0.02, 1.02)
    what = "image embeddings along training"
    ax.set_title(f"{title}: {what}" if title else what, fontsize=9)
    ax.legend()
    fig.tight_layout()  # keeps the axis labels inside the fixed-size figure
    return save_png(fig, path)
