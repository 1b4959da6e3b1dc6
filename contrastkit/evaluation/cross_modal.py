"""Evaluation over every modality of a pair set: retrieval between each pair of modalities and
zero-shot classification of each non-text modality by class prompts (task ``cross_modal``).

Protocol. The modalities evaluated are those the pair set has and the encoders can embed
(``Encoders.modality``; the image and text encoders for ``image``/``text``): ``text`` is each
sample's **first** caption, a signal its variant 0 (the first voice of spoken captions). For every
ordered pair ``a → b`` of them, each sample present in both is a query and the gallery is the
other modality of those samples. Two samples with the same first caption show the same content
(templated captions repeat: "a red circle", "a person walking"), so every such gallery item is a
positive: a query's rank is the number of non-positive items scoring above its best positive
(ties with a non-positive go to the lower index, as in ``retrieval``). ``R@K`` = share of queries
ranked < K; per-example 0/1 arrays under the same keys (Multi-Bootstrap). Metrics:
``cross_modal/<a>_to_<b>_R@{1,5,10}`` and, for every modality other than ``text`` and every class
task of the set, ``cross_modal/zeroshot/<m>/<task>/{top1,top5,balanced_accuracy}``: samples of
modality m classified by the prompt-ensemble classifier of E-ZEROSHOT (``zeroshot``), over the
samples that have m. With ``options["cross_modal"]["speech"]`` (a run trained with
``data.speech`` gets its own) the prompts are also **spoken** (first voice) and embedded by the
audio tower: ``cross_modal/spoken_zeroshot/<m>/<task>/...`` for every other modality m.
``options["cross_modal"]["modalities"]`` restricts the modalities.
Related: ``retrieval`` (image ↔ all captions), ``zeroshot`` (images), docs/modalities.md.
"""

from __future__ import annotations

from itertools import permutations
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.config import from_dict
from contrastkit.core.errors import InputError
from contrastkit.data.pairs import PairSet
from contrastkit.data.speech import SpeechConfig, speech_features
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult
from contrastkit.evaluation.zeroshot import zero_shot_classifier, zero_shot_metrics

__all__ = ["cross_modal_task", "group_ranks", "missing_modality_task", "modality_embeddings"]


def group_ranks(scores: torch.Tensor, groups: np.ndarray) -> np.ndarray:
    """0-based rank of each query's best positive among non-positives: ``scores [Q, G]`` over a
    gallery where query i's positives are the items with ``groups[j] == groups[i]`` (Q = G, the
    same samples). Non-positives tied with the best positive count when their index is lower."""
    q, g = scores.shape
    if q != g or len(groups) != q:
        raise InputError(f"group_ranks needs square scores and one group per row, got {tuple(scores.shape)}")
    grp = torch.as_tensor(groups)
    pos = grp[:, None] == grp[None, :]
    best = scores.masked_fill(~pos, float("-inf"))
    top, where = best.max(dim=1)
    above = (scores > top[:, None]) & ~pos
    tied = (scores == top[:, None]) & ~pos & (torch.arange(g)[None, :] < where[:, None])
    return (above.sum(1) + tied.sum(1)).numpy()


def modality_embeddings(ctx: EvalContext) -> dict[str, torch.Tensor]:
    """L2-normalised ``[N, d]`` embeddings of every evaluated modality of ``ctx.pairs`` (cached on
    the context: ``zeroshot``/``retrieval`` share the image ones)."""
    cached = ctx.__dict__.get("_modality_emb")
    if cached is not None:
        return cached
    pairs, enc = ctx.pairs, ctx.enc
    wanted = ctx.options.get("cross_modal", {}).get("modalities")
    out: dict[str, torch.Tensor] = {}
    for m in pairs.modalities:
        if wanted is not None and m not in wanted:
            continue
        if m == "image":
            out[m] = ctx.image_emb
        elif m == "text":
            out[m] = F.normalize(enc.texts([c[0] for c in pairs.captions]).float(), dim=-1)
        elif enc.modality is not None and m in enc.encodes:
            inputs = pairs.attributes if m == "attributes" else pairs.signal(m)
            out[m] = F.normalize(enc.modality(m, inputs).float(), dim=-1)
    if len(out) < 2 and not (out.keys() - {"text"}):
        raise InputError(
            f"cross_modal needs a modality besides text that the model embeds; the set has "
            f"{list(pairs.modalities)}, embedded: {sorted(out)}"
        )
    ctx.__dict__["_modality_emb"] = out
    return out


def _present(pairs: PairSet, m: str) -> torch.Tensor:
    mask = pairs.present.get(m)
    return torch.ones(len(pairs), dtype=torch.bool) if mask is None else mask


@EVAL_TASKS.register("cross_modal")
def cross_modal_task(ctx: EvalContext) -> TaskResult:
    """Retrieval between every ordered pair of the set's modalities (positives: samples with the
    same first caption) and zero-shot classification of every non-text modality (module docs)."""
    emb = modality_embeddings(ctx)
    pairs = ctx.pairs
    _, groups = np.unique(np.array([c[0] for c in pairs.captions], dtype=object), return_inverse=True)
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    for a, b in permutations(sorted(emb), 2):
        rows = torch.nonzero(_present(pairs, a) & _present(pairs, b)).flatten()
        if len(rows) < 2:
            continue
        ranks = group_ranks(emb[a][rows] @ emb[b][rows].T, groups[rows.numpy()])
        for k in (1, 5, 10):
            hits = examples[f"cross_modal/{a}_to_{b}_R@{k}"] = (ranks < k).astype(np.float64)
            out[f"cross_modal/{a}_to_{b}_R@{k}"] = float(hits.mean())
    for m in sorted(set(emb) - {"text"}):
        keep = _present(pairs, m).numpy()
        for name, task in pairs.tasks.items():
            labels = np.where(keep, task.labels, -1)
            if not (labels >= 0).any():
                continue
            res = zero_shot_metrics(emb[m], zero_shot_classifier(ctx.enc.texts, task.prompts()), labels)
            for key in ("top1", "top5", "balanced_accuracy"):
                out[f"cross_modal/zeroshot/{m}/{name}/{key}"] = float(res[key])
            examples[f"cross_modal/zeroshot/{m}/{name}/top1"] = np.asarray(res["correct"])
    speech = ctx.options.get("cross_modal", {}).get("speech")
    if speech is not None and "audio" in emb and ctx.enc.modality is not None:
        _spoken_zero_shot(ctx, emb, from_dict(SpeechConfig, speech), out, examples)
    return out, examples


def _spoken_zero_shot(
    ctx: EvalContext,
    emb: dict[str, torch.Tensor],
    speech: SpeechConfig,
    out: dict[str, float],
    examples: dict[str, np.ndarray],
) -> None:
    """Zero-shot with **spoken** class prompts: each prompt synthesised in the first voice of
    ``speech`` and embedded by the audio tower; every other modality classified against them."""
    encode = ctx.enc.modality
    assert encode is not None

    def spoken(texts: list[str]) -> torch.Tensor:
        return encode("audio", speech_features(texts, speech, variants=speech.variants()[:1])[:, 0])

    for name, task in ctx.pairs.tasks.items():
        if not (task.labels >= 0).any():
            continue
        classifier = zero_shot_classifier(spoken, task.prompts())
        for m in sorted(set(emb) - {"audio"}):
            labels = np.where(_present(ctx.pairs, m).numpy(), task.labels, -1)
            res = zero_shot_metrics(emb[m], classifier, labels)
            for key in ("top1", "top5", "balanced_accuracy"):
                out[f"cross_modal/spoken_zeroshot/{m}/{name}/{key}"] = float(res[key])
            examples[f"cross_modal/spoken_zeroshot/{m}/{name}/top1"] = np.asarray(res["correct"])


_MISSING_DEFAULTS: dict[str, Any] = {
    "task": None,  # the class task (default: the set's first labelled one)
    "heads": ("mean", "mmp", "prompts", "multimodn"),
    "seeds": (0, 1, 2),
    "max_train": 5000,  # training rows (seeded subsample)
    "epochs": 30,
}


def _labelled_rows(pairs: PairSet, task: str, limit: int, seed: int) -> np.ndarray:
    rows = np.flatnonzero(pairs.tasks[task].labels >= 0)
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return rows


@EVAL_TASKS.register("missing_modality")
def missing_modality_task(ctx: EvalContext) -> TaskResult:
    """Fusion heads (mean, MMP, missing-aware prompts, MultiModN) trained on the frozen embeddings
    of every modality of the training split, then tested with each set of modalities removed
    (:func:`contrastkit.evaluation.missing.missing_modality_table`): ``missing_modality/<task>/
    <head>/missing_<k>`` = top-1 accuracy with k modalities removed (mean over the patterns and
    seeds), ``.../without_<a+b>`` per pattern. Without a training split: a seeded half of the set."""
    from contrastkit.evaluation.missing import missing_modality_table

    opts = {**_MISSING_DEFAULTS, **ctx.options.get("missing_modality", {})}
    unknown = sorted(set(opts) - set(_MISSING_DEFAULTS))
    if unknown:
        raise InputError(f"missing_modality options {unknown} unknown; known: {sorted(_MISSING_DEFAULTS)}")
    labelled = [t for t, task in ctx.pairs.tasks.items() if (task.labels >= 0).any()]
    task = opts["task"] or (labelled[0] if labelled else None)
    if task not in labelled:
        raise InputError(f"missing_modality needs a labelled class task; the set has {labelled}")
    train, test = ctx.train_pairs, ctx.pairs
    if train is None:  # fit on a seeded half, test on the other
        perm = np.random.default_rng(0).permutation(len(test))
        train, test = (
            test.subset(np.sort(perm[: len(perm) // 2])),
            test.subset(np.sort(perm[len(perm) // 2 :])),
        )
    fit = train.subset(_labelled_rows(train, task, int(opts["max_train"]), 0))
    held = test.subset(np.flatnonzero(test.tasks[task].labels >= 0))
    emb_tr = modality_embeddings(EvalContext(ctx.enc, fit, options=ctx.options))
    emb_te = modality_embeddings(EvalContext(ctx.enc, held, options=ctx.options))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # heads over a few thousand rows: more threads only add overhead (~10x)
    try:
        rows = missing_modality_table(
            emb_tr,
            fit.tasks[task].labels,
            emb_te,
            held.tasks[task].labels,
            heads=tuple(opts["heads"]),
            seeds=tuple(opts["seeds"]),
            train_present={m: v for m, v in fit.present.items() if m in emb_tr},
            epochs=int(opts["epochs"]),
        )
    finally:
        torch.set_num_threads(threads)
    out: dict[str, float] = {}
    for r in rows:
        where = (
            f"missing_{r['n_missing']}" if r["kind"] == "n_missing" else f"without_{r['removed'] or 'none'}"
        )
        out[f"missing_modality/{task}/{r['head']}/{where}"] = r["accuracy"]
    return out, {}
