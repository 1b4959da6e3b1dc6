"""Batch samplers selectable by name (``data.sampler``): which examples meet in a training batch.

```yaml
data:
  label_task: shape                  # labels in every batch, for SupCon
  sampler: {name: class_mix, params: {per_class: 4}}
```

* ``random`` (default): shuffled epochs, one random caption per image; a mixture as ``data.mix`` says.
* ``class_mix``: ``classes_per_batch × per_class`` examples of a class task (one source);
  ``batch_binding: true`` appends one fixed example per class.
* ``batch_binding``: a shuffled-epoch batch plus the binding set, one fixed example per class
  (one source, one process).
* ``single_source``: all rows of a batch from one of ``data.sources``, drawn ∝ source size;
  optional coin-flip mixup of images or texts (ZeroVL).
* ``source_mix``: ``B·pₛ`` rows of every source of ``data.sources`` (largest remainder).
* ``b3``: batches filled from communities of a teacher's k-NN similarity graph (hard negatives,
  S-B3, :mod:`contrastkit.data.b3`); one source.
* ``unpaired_labels``: images of an image-only set × captions of a text-only set (halves of one
  source, or two ``data.sources``), per-sample label vectors for the ``medclip`` loss's soft
  targets (:mod:`contrastkit.data.unpaired`).
* ``mcl``: every global batch from one group (MCL's cluster-restricted negatives, D-MCL): the
  groups of a ``.npy`` label file (``groups``) or of a class task (``task``); one source.
* ``rehearsal``: a continual stage's classes plus rows of a rehearsal memory, flagged
  ``rehearsal`` (:mod:`contrastkit.data.rehearsal`, written by ``continual``); one source.

Every sampler is a function of ``(seed, step)``: the loader passes ``start`` (batches already
consumed) and a resumed run sees exactly the batches an uninterrupted one would. With
``shard=(rank, world)`` each process takes its contiguous slice of every global batch, as
:class:`~contrastkit.data.pairs.PairBatchSampler` does. Batches are
:class:`~contrastkit.data.pairs.SampledBatch` lists of ``(image, caption)`` keys (or
``(source, image, caption)`` for a mixture). A sampler may carry a ``transform`` (``single_source``
with mixup) that the loader applies to every loaded batch.

From Python: ``SAMPLERS.build("class_mix", context=SamplerContext.single(n_caps, 32, seed=0,
tasks=pairs.tasks), task="shape", per_class=4)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch.utils.data import Sampler

from contrastkit.core.errors import ConfigError
from contrastkit.core.registry import NonNegative, Positive, PositiveInt, Probability, Registry, check_params
from contrastkit.data.b3 import b3_sampler
from contrastkit.data.batching import SamplerContext
from contrastkit.data.class_mix import BatchBindingSampler, ClassMixSampler
from contrastkit.data.config import DataConfig, SamplerConfig
from contrastkit.data.mcl import MCLBatchSampler, read_groups
from contrastkit.data.mix import MixBatchSampler
from contrastkit.data.pairs import ClassTask, PairBatchSampler
from contrastkit.data.rehearsal import rehearsal_sampler
from contrastkit.data.unpaired import unpaired_sampler
from contrastkit.data.zerovl import MIX_FIELDS, CoinFlipMixup, SingleSourceSampler

__all__ = [
    "SAMPLERS",
    "SamplerContext",
    "batch_binding",
    "build_sampler",
    "check_sampler",
    "class_mix",
    "context_of",
    "mcl",
    "random_batches",
    "sampler_fields",
    "single_source",
    "source_mix",
]

SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.register("b3")(b3_sampler)  # S-B3, contrastkit.data.b3
SAMPLERS.register("unpaired_labels")(unpaired_sampler)  # D-MEDCLIP-SAMPLER, contrastkit.data.unpaired
SAMPLERS.register("rehearsal")(rehearsal_sampler)  # D-REHEARSAL, contrastkit.data.rehearsal (continual)

_NEEDS_SOURCES = ("single_source", "source_mix")
_ONE_SOURCE = ("class_mix", "batch_binding", "mcl", "b3", "rehearsal")


@SAMPLERS.register("random")
def random_batches(context: SamplerContext) -> Sampler:
    """Shuffled epochs, one random caption per image — today's batches, the default.

    One source: :class:`~contrastkit.data.pairs.PairBatchSampler` (epoch ``e`` is a permutation
    from ``default_rng([seed, e])``, the last incomplete batch dropped). A ``data.sources``
    mixture: :class:`~contrastkit.data.mix.MixBatchSampler` with ``data.mix`` (``rows``: every
    batch in proportion to the weights; ``batch``: one source per batch drawn by weight).
    """
    c = context
    if c.weights is None:
        return PairBatchSampler(c.n_captions[0], c.batch_size, c.seed, c.start, c.shard)
    mode = "batch" if c.mix == "batch" else "rows"
    return MixBatchSampler(c.n_captions, c.weights, c.batch_size, c.seed, c.start, c.shard, mode)


def _task(context: SamplerContext, task: str | None, who: str) -> ClassTask:
    if context.weights is not None:
        raise ConfigError(f"sampler {who!r} draws from one source; it does not take data.sources")
    name = task if task is not None else context.label_task
    if name is None:
        raise ConfigError(
            f"sampler {who!r} needs a class task: set data.label_task or the sampler's task "
            f"parameter (this data has {sorted(context.tasks) or 'no tasks'})"
        )
    if name not in context.tasks:
        raise ConfigError(f"sampler {who!r}: no class task {name!r}; this data has {sorted(context.tasks)}")
    return context.tasks[name]


@SAMPLERS.register("class_mix")
def class_mix(
    context: SamplerContext,
    per_class: PositiveInt = 2,
    classes_per_batch: PositiveInt | None = None,
    task: str | None = None,
    batch_binding: bool = False,
    rebind_each_epoch: bool = False,
) -> Sampler:
    """A fixed number of classes and examples per class in every batch ("m per class"), D-BATCH-BINDING.

    Every global batch holds ``classes_per_batch × per_class = B`` rows (default
    ``classes_per_batch = B / per_class``) of the class task ``task`` (default
    ``data.label_task``); items the task does not cover are never drawn. Classes come in rounds
    (a permutation of the classes per round), so each is drawn equally often; the examples of a
    class walk its own epochs, ``per_class`` distinct ones a draw; rows are shuffled so every
    process gets a mix of classes. ``batch_binding``: append the binding set (one fixed example
    per class, redrawn each epoch with ``rebind_each_epoch``; Kini et al. 2024, "Symmetric
    Neural-Collapse Representations with Supervised Contrastive Loss: The Impact of ReLU and
    Batching"); batches then have ``B + C − |S ∩ batch|`` rows (one process only).
    Classes without items are left out. Errors: a class with some but fewer than ``per_class``
    items, numbers that do not multiply to B.
    """
    t = _task(context, task, "class_mix")
    c = context
    shard = (0, 1) if batch_binding else c.shard
    base = ClassMixSampler(
        c.n_captions[0], t.labels, len(t.classnames), c.batch_size, c.seed, c.start, shard,
        per_class, classes_per_batch, t.classnames,
    )  # fmt: skip
    if not batch_binding:
        return base
    labelled = int((t.labels >= 0).sum())
    return BatchBindingSampler(
        base, c.n_captions[0], t.labels, len(t.classnames), c.seed, labelled // c.batch_size,
        rebind_each_epoch, c.shard,
    )  # fmt: skip


@SAMPLERS.register("batch_binding")
def batch_binding(
    context: SamplerContext, task: str | None = None, rebind_each_epoch: bool = False
) -> Sampler:
    """Shuffled batches bound together by one fixed example per class, D-BATCH-BINDING.

    Kini, Vakilian, Behnia, Gill, Thrampoulidis 2024, "Symmetric Neural-Collapse Representations
    with Supervised Contrastive Loss: The Impact of ReLU and Batching", Sec. 5.2. The binding set
    ``S`` (one example per class of ``task``, default ``data.label_task``, uniform within the
    class) is drawn once (``rebind_each_epoch``: every epoch); every epoch all ``n`` items
    (``S`` included) are shuffled into batches of ``B`` (``random``'s batches) and ``S`` is
    appended to each, without repeating an element already there: ``B + C − |S ∩ batch|`` rows.
    One process only (batch sizes vary). Use with SupCon (``data.label_task``).
    """
    t = _task(context, task, "batch_binding")
    c = context
    base = PairBatchSampler(c.n_captions[0], c.batch_size, c.seed, c.start, (0, 1))
    return BatchBindingSampler(
        base, c.n_captions[0], t.labels, len(t.classnames), c.seed, base.batches_per_epoch,
        rebind_each_epoch, c.shard,
    )  # fmt: skip


@SAMPLERS.register("single_source")
def single_source(
    context: SamplerContext,
    mixup: Probability = 0.0,
    mixup_alpha: Positive = 0.1,
    image_prob: Probability = 0.5,
) -> Sampler:
    """Each batch from one source, drawn with probability ∝ its size; coin-flip mixup, D-ZEROVL.

    Cui et al. 2022, "Contrastive Vision-Language Pre-training with Limited Resources" (ZeroVL).
    Step ``k`` draws source ``s`` with ``pₛ = |Dₛ| / Σ|D|`` (the same on every process) and takes
    that source's next batch; each source walks its own epochs (last incomplete batch dropped;
    a source smaller than one batch is left out with a warning). ``mixup``: probability that a
    step is mixed (ZeroVL: 0 in its baseline, 1 in its DGA recipe): ``λ ~ Beta(α, α)``
    (``mixup_alpha`` = 0.1), a coin mixes the images (probability ``image_prob``) — pixels,
    ``x̃ᵢ = λxᵢ + (1−λ)x_{b−1−i}`` in each process's batch — or else the text embeddings; train
    it with the ``mixup_nce`` loss, which mixes the texts and uses the soft targets.
    """
    if context.weights is None:
        raise ConfigError("sampler 'single_source' draws among data.sources; this data has one source")
    mix = CoinFlipMixup(mixup, mixup_alpha, image_prob) if mixup > 0 else None
    c = context
    return SingleSourceSampler(c.n_captions, c.batch_size, c.seed, c.start, c.shard, mix)


@SAMPLERS.register("source_mix")
def source_mix(context: SamplerContext, proportions: tuple[NonNegative, ...] | None = None) -> Sampler:
    """Fixed proportions of every source in each batch.

    Source ``s`` gets ``B·pₛ`` rows of every global batch, rounded by largest remainder (ties to
    the earlier source), so the mixture is exact in every batch. ``proportions`` (one per source,
    normalised; default: the ``data.sources`` weights). Each source walks its own epochs
    (:class:`~contrastkit.data.mix.MixBatchSampler`, ``rows`` mode).
    """
    c = context
    if c.weights is None:
        raise ConfigError("sampler 'source_mix' mixes data.sources; this data has one source")
    p = c.weights if proportions is None else tuple(float(x) for x in proportions)
    if len(p) != len(c.n_captions):
        raise ConfigError(f"sampler 'source_mix': {len(p)} proportions for {len(c.n_captions)} sources")
    return MixBatchSampler(c.n_captions, p, c.batch_size, c.seed, c.start, c.shard, "rows")


@SAMPLERS.register("mcl")
def mcl(context: SamplerContext, groups: str | None = None, task: str | None = None) -> Sampler:
    """Group-pure batches: every global batch from one group, D-MCL (:mod:`contrastkit.data.mcl`).

    Zhang et al. 2024, "Learning the Unlearned: Mitigating Feature Suppression in Contrastive
    Learning". ``groups``: a ``.npy`` file of one integer label per training item (``−1``: never
    drawn) — what ``curation.mcl`` writes for each stage; or ``task``: a class task's labels as the
    groups. Groups take turns; each is truncated to whole global batches per epoch (a group
    smaller than one batch sits out). One source; resumable; ranks share every batch's group.
    """
    if (groups is None) == (task is None):
        raise ConfigError("sampler 'mcl' takes exactly one of groups (a .npy label file) or task")
    c = context
    if groups is not None:
        if c.weights is not None:
            raise ConfigError("sampler 'mcl' draws from one source; it does not take data.sources")
        labels = read_groups(groups, len(c.n_captions[0]))
    else:
        labels = _task(context, task, "mcl").labels
    return MCLBatchSampler(c.n_captions[0], labels, c.batch_size, c.seed, c.start, c.shard)


def build_sampler(cfg: SamplerConfig, context: SamplerContext) -> Sampler:
    """The sampler ``cfg`` names, built on ``context`` (parameters checked against its builder)."""
    return SAMPLERS.build(cfg.name, context=context, **cfg.params)


def check_sampler(cfg: DataConfig) -> None:
    """Refuse, before any data is read, a sampler ``cfg`` gets wrong: an unknown name or parameter,
    or a sampler that needs ``data.sources`` (or one source) without it."""
    name = cfg.sampler.name
    check_params(SAMPLERS.get(name), {"context": None, **cfg.sampler.params}, f"data.sampler {name!r}")
    if name in _NEEDS_SOURCES and not cfg.sources:
        raise ConfigError(f"data.sampler {name!r} draws among data.sources; set data.sources")
    if name in _ONE_SOURCE and cfg.sources:
        raise ConfigError(f"data.sampler {name!r} draws from one source; it does not take data.sources")
    if name == "unpaired_labels" and len(cfg.sources) not in (0, 2):
        raise ConfigError(
            f"data.sampler 'unpaired_labels' takes one source or exactly two data.sources (an image "
            f"set and a text set), got {len(cfg.sources)}"
        )


def sampler_fields(cfg: SamplerConfig) -> tuple[str, ...]:
    """Batch fields the sampler adds that the loss must use (mixup: ``mix_lambda`` …)."""
    if cfg.name == "single_source" and float(cfg.params.get("mixup", 0.0)) > 0:
        return MIX_FIELDS
    return ()


def context_of(
    n_captions: Sequence[Sequence[int]],
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    start: int,
    shard: tuple[int, int],
    weights: Sequence[float] | None,
    tasks: dict[str, ClassTask],
    captions: Sequence[Sequence[Sequence[str]]] = (),
    source_tasks: Sequence[Mapping[str, ClassTask]] = (),
) -> SamplerContext:
    """The :class:`SamplerContext` of a loader over ``cfg``'s training data."""
    return SamplerContext(
        tuple(np.asarray(n, dtype=np.int64) for n in n_captions),
        batch_size,
        seed,
        start,
        shard,
        None if weights is None else tuple(float(w) for w in weights),
        tasks,
        cfg.label_task,
        cfg.mix,
        tuple(captions),
        tuple(source_tasks),
    )
