"""Setting up a run before its first step: pre-flight checks of the config (before any data is read or
a run folder made), what the step optimises (the loss, tiled or across ranks), and where initial
weights come from besides a fresh init (``train.init_from`` runs, or single towers of one with
``train.init_towers``; ``model.from`` logit scales).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from contrastkit.core.config import from_dict, load_yaml
from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.core.io import atomic_write_text
from contrastkit.core.registry import check_params
from contrastkit.data import check_data
from contrastkit.data.long_captions import check_long_caption_run
from contrastkit.data.samplers import sampler_fields
from contrastkit.losses.base import LOSSES, LossTerm, MultiLoss, PairLoss, declared_fields
from contrastkit.losses.prompt_views import check_text_view_loss
from contrastkit.models.aux import chunking_refusal
from contrastkit.models.dual_encoder import DualEncoder, build_model
from contrastkit.models.towers import TOWERS
from contrastkit.scale import TILED_MULTI, TiledLoss
from contrastkit.train.checkpoint import latest_checkpoint
from contrastkit.train.class_prompts import check_class_prompts
from contrastkit.train.config import RunConfig
from contrastkit.train.distill import check_distill
from contrastkit.train.distributed import DistContext, wrap_loss
from contrastkit.train.jest import check_jest
from contrastkit.train.jigsaw import check_jigsaw
from contrastkit.train.noisy import check_noisy_pairs
from contrastkit.train.previous import check_previous
from contrastkit.train.teacher import check_samplers

__all__ = [
    "check_batch_split",
    "check_config",
    "check_init_from",
    "init_from",
    "init_towers_from",
    "load_run_config",
    "objective",
    "pretrained_scale",
]


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MissingFileError(f"{run_dir} is not a contrastkit run (no config.yaml)")
    return from_dict(RunConfig, load_yaml(path))


def objective(cfg: RunConfig, loss: PairLoss, ctx: DistContext) -> PairLoss:
    """What the step computes: ``loss`` in tiles if ``scale.tile_size`` is set, across ranks if
    several processes run. The wrappers share ``loss``'s parameters. A :class:`MultiLoss` runs
    unchunked, and untiled unless its per-pair function ``fn`` has a tiled form
    (:data:`~contrastkit.scale.TILED_MULTI`: MoCo v2), which it then calls (``tiled_fn``; a clear
    error otherwise); across processes on the gathered batch."""
    if isinstance(loss, MultiLoss):
        _check_multiloss(cfg, loss)
        if cfg.scale.tile_size is not None and not ctx.active:  # several processes: refused below
            tiled = TILED_MULTI[loss.fn]  # type: ignore[attr-defined]  # checked above
            loss.tiled_fn = functools.partial(tiled, tile_size=cfg.scale.tile_size)  # type: ignore[attr-defined]
        return wrap_loss(loss, cfg.scale, ctx)  # several processes: GatherAllLoss
    if ctx.active:
        return wrap_loss(loss, cfg.scale, ctx)
    return loss if cfg.scale.tile_size is None else TiledLoss(loss, cfg.scale.tile_size)


def _check_multiloss(cfg: RunConfig, loss: MultiLoss) -> None:
    tileable = getattr(loss, "fn", None) in TILED_MULTI
    # class_prompts: the images are chunked, the class prompts run once beside them (forward.py)
    chunkable = getattr(loss, "reads_class_prompts", False)
    if (cfg.scale.tile_size is not None and not tileable) or (cfg.scale.chunk_size and not chunkable):
        raise ConfigError(
            f"{type(loss).__name__} is a MultiLoss (several embedding sets): scale.tile_size and "
            "scale.chunk_size (gradient caching) work with pair losses only (scale.tile_size also "
            "with moco2, scale.chunk_size with class_prompts); unset them"
        )


def check_config(cfg: RunConfig) -> None:
    """Refuse what the config alone gets wrong before a run folder is made or any data is read
    (generating or decoding a data set can take minutes): the names and parameters of the loss
    (terms) and towers; the data set or sources with every split the run trains or evaluates on,
    their parameters and files. (What needs the built loss is checked first thing in the session.)"""
    terms = cfg.loss.terms or {cfg.loss.name: LossTerm(params=cfg.loss.params)}
    for name, term in terms.items():
        params = term.params if isinstance(term, LossTerm) else {}
        check_params(LOSSES.get(name), params, f"loss {name!r}")
    for modality, tower in cfg.model.towers.items():
        fn = TOWERS.get(tower.name)
        check_params(fn, {"context": None, **tower.params}, f"tower {tower.name!r} (model.towers.{modality})")
        _check_tower_scale(cfg, modality, tower.name, tower.params)
    _check_fsdp_graphs(cfg)
    check_data(cfg.data, (cfg.data.train_split, *cfg.data.eval_splits))
    check_noisy_pairs(cfg)
    check_jest(cfg)
    check_samplers(cfg)  # b3's teacher; unpaired_labels' loss
    check_distill(cfg)  # model.teacher and a loss that reads it
    check_previous(cfg)  # model.previous and sycon, which reads it
    check_jigsaw(cfg)  # data.jigsaw and the jigsaw loss
    check_text_view_loss(cfg.loss, cfg.data.text_views is not None)  # data.text_views ↔ its loss
    check_class_prompts(cfg)  # loss class_prompts: labels, image and text towers, no chunks
    fields = sampler_fields(cfg.data.sampler)  # mixup batches are wrong targets for other losses
    if fields and (cfg.loss.terms or not set(fields) <= declared_fields(cfg.loss.name)):
        raise ConfigError(
            f"data.sampler {cfg.data.sampler.name!r} with mixup adds {list(fields)} to batches; train it "
            f"with a loss that uses them (mixup_nce), not {cfg.loss.name!r}"
        )
    if cfg.data.text_negatives is not None:
        _check_negatives(cfg)
    if cfg.data.relations:
        _check_relations(cfg)
    loss_cls = None if cfg.loss.terms else LOSSES.get(cfg.loss.name)
    check_long_caption_run(  # data.long_captions: a pair loss, no gradient caching, no mixup
        cfg.data.long_captions,
        cfg.loss.name,
        _declared(loss_cls),
        loss_cls is None or (isinstance(loss_cls, type) and issubclass(loss_cls, MultiLoss)),
        cfg.scale.chunk_size,
        cfg.data.label_task,
        fields,
    )


def _check_tower_scale(cfg: RunConfig, modality: str, name: str, params: dict) -> None:
    """Towers whose outputs or auxiliary losses couple the examples of a batch (LIMoE's expert
    capacity, FuseLIP's masked modelling) refuse gradient caching, which could not be exact; a tower
    running another's shared weights refuses FSDP, which shards those weights inside the owner's
    wrapper only (:mod:`contrastkit.models.aux`)."""
    fn = TOWERS.get(name)
    why = chunking_refusal(fn, params)
    if why and cfg.scale.chunk_size is not None:
        raise ConfigError(
            f"scale.chunk_size (gradient caching) cannot be exact with tower {name!r} "
            f"(model.towers.{modality}): {why}. Unset scale.chunk_size"
        )
    if getattr(fn, "shares_weights", False) and getattr(cfg.train, "dist_wrapper", None) == "fsdp":
        raise ConfigError(
            f"tower {name!r} (model.towers.{modality}) runs another tower's weights, which FSDP shards "
            "inside that tower's wrapper only: use train.dist_wrapper ddp or allreduce"
        )


def _check_fsdp_graphs(cfg: RunConfig) -> None:
    """FSDP all-gathers in every forward, so every rank must re-run the same chunks: a plan each rank
    measures (``scale.graph_memory``) may differ, and partial graphs cannot replay the gathers."""
    if getattr(cfg.train, "dist_wrapper", None) != "fsdp":
        return
    for key in ("graph_memory", "partial_chunks"):
        if getattr(cfg.scale, key) is not None:
            raise ConfigError(
                f"scale.{key} does not work with train.dist_wrapper: fsdp (every rank must re-run the "
                "same chunks, and partial graphs cannot replay FSDP's all-gathers): give "
                "scale.keep_chunks, or use train.dist_wrapper ddp"
            )


def _check_relations(cfg: RunConfig) -> None:
    """``data.relations`` are texts the text tower embeds in the plain forward (not the chunked one)."""
    if "text" not in cfg.model.towers:
        raise ConfigError("data.relations needs a text tower (model.towers.text) to embed the relations")
    if cfg.scale.chunk_size is not None:
        raise ConfigError("data.relations does not work with scale.chunk_size (gradient caching)")


def _check_negatives(cfg: RunConfig) -> None:
    """``data.text_negatives`` needs a pair loss that takes ``negatives`` (they would be silently
    unused otherwise), a text tower to encode them, and no gradient caching (its chunked forward
    does not encode them)."""
    takes = sorted(n for n in LOSSES.names() if "negatives" in _declared(LOSSES.get(n)))
    names = list(cfg.loss.terms) or [cfg.loss.name]  # a composite passes them to the terms that take them
    if not any("negatives" in _declared(LOSSES.get(n)) for n in names):
        what = f"loss terms {names}" if cfg.loss.terms else f"loss {cfg.loss.name!r}"
        raise ConfigError(
            f"data.text_negatives is set but {what} does not use negative captions; losses that do: {takes}"
        )
    if "text" not in cfg.model.towers:
        raise ConfigError("data.text_negatives needs a text tower (model.towers.text) to encode them")
    if cfg.scale.chunk_size is not None:
        raise ConfigError("data.text_negatives does not work with scale.chunk_size (gradient caching)")


def check_present(cfg: RunConfig, loss: PairLoss, present: Mapping[str, torch.Tensor], world: int) -> None:
    """A training set whose samples may lack a modality (``data.missing``, a source with empty
    entries) trains a pair loss on the rows where both modalities are present (the trainer cuts
    the batch) or a multi-modality loss that takes the masks (``accepts`` ``present``:
    pairwise_clip, gram, mmp), densely on one process: the tiled, gradient-cached and cross-rank
    paths do not carry the masks, and a loss that ignored them would train on blanked inputs."""
    lacking = sorted(m for m, mask in present.items() if not bool(mask.all()) and m in cfg.data.modalities)
    if not lacking:
        return
    if isinstance(loss, MultiLoss) and "present" not in loss.accepts:
        raise ConfigError(
            f"training samples lack {lacking} (data.missing or empty entries) but loss {cfg.loss.name!r} "
            "takes several modalities but no presence masks; use pairwise_clip, gram or mmp"
        )
    tricks = [
        k
        for k, on in (("scale.tile_size", cfg.scale.tile_size), ("scale.chunk_size", cfg.scale.chunk_size))
        if on
    ]
    if tricks or world > 1:
        where = ", ".join(tricks) or f"{world} processes"
        raise ConfigError(
            f"training with missing modalities runs the dense loss on one process, not with {where}"
        )


def _declared(cls: object) -> frozenset[str]:
    """The batch fields a loss class declares it accepts (a property, computed per instance, is
    not a declaration: none)."""
    accepts = getattr(cls, "accepts", frozenset())
    return frozenset(accepts) if isinstance(accepts, (set, frozenset, tuple, list)) else frozenset()


def pretrained_scale(loss: PairLoss, cfg: RunConfig) -> None:
    """Start the loss's logit scale (and SigLIP bias) at the pretrained model's (``model.from``),
    unless the loss config sets them."""
    from contrastkit.models import pretrained_logit_scale

    given = set(cfg.loss.params)
    scale, bias = pretrained_logit_scale(cfg.model.from_)  # type: ignore[arg-type]
    with torch.no_grad():
        log_scale = getattr(loss, "log_scale", None)
        if isinstance(log_scale, torch.Tensor) and not given & {"init_temperature", "init_scale"}:
            log_scale.fill_(math.log(scale))
        own_bias = getattr(loss, "bias", None)
        if bias is not None and isinstance(own_bias, torch.Tensor) and "init_bias" not in given:
            own_bias.fill_(bias)


def init_from(cfg: RunConfig, source: Path, loss: PairLoss, run_dir: Path | None) -> DualEncoder:
    """The model (and, for the same loss config, the loss state) of ``source``'s newest checkpoint,
    built with its assets; records which checkpoint in ``run_dir/init_from.json`` (θ₀ of WiSE-FT)."""
    ckpt = check_init_from(source)
    model = build_model(cfg.model, assets_dir=source / "assets")
    same_loss = load_run_config(source).loss == cfg.loss
    _load_with_new_prompts(ckpt, model, loss if same_loss else None)
    if run_dir is not None:
        model.save_assets(run_dir / "assets")
        record = {"run": str(source.resolve()), "checkpoint": str(ckpt.resolve()), "loss_state": same_loss}
        atomic_write_text(run_dir / "init_from.json", json.dumps(record, indent=1))
    return model


def _load_with_new_prompts(ckpt: Path, model: DualEncoder, loss: PairLoss | None) -> None:
    """Load ``ckpt``; a source without this model's prompt contexts (CoOp on a trained run) loads
    without them, and each context is then initialised from the loaded token embeddings."""
    from torch import nn

    from contrastkit.train.checkpoint import load_weights

    try:
        load_weights(ckpt, model, loss)
        return
    except InputError:
        if not len(model.prompts):
            raise
    held, model.prompts = model.prompts, nn.ModuleDict()
    try:
        load_weights(ckpt, model, loss)
    finally:
        model.prompts = held
    for m, prompt in held.items():
        prompt.initialize(model.towers[m])  # type: ignore[operator]


def init_towers_from(cfg: RunConfig, model: DualEncoder, source: Path, run_dir: Path | None) -> None:
    """``train.init_towers``: load those towers and their projections from ``source``'s newest
    checkpoint into the freshly built ``model`` (the other weights keep the fresh init of this seed,
    the same as a run from scratch; the loss state is not loaded); a momentum copy of a loaded tower
    restarts as a copy of it. Records the checkpoint and the towers in ``run_dir/init_from.json``."""
    from contrastkit.train.checkpoint import load_tower_weights

    ckpt = check_init_from(source, cfg)
    towers = tuple(cfg.train.init_towers)
    load_tower_weights(ckpt, model, towers)
    if run_dir is not None:
        record = {"run": str(source.resolve()), "checkpoint": str(ckpt.resolve()), "loss_state": False}
        atomic_write_text(
            run_dir / "init_from.json", json.dumps({**record, "towers": list(towers)}, indent=1)
        )


def check_init_from(source: Path, cfg: RunConfig | None = None) -> Path:
    """The checkpoint ``train.init_from`` starts from; a one-line error for anything else (checked
    before any data is generated or read). With ``cfg``, also that each of its ``train.init_towers``
    is configured in ``source`` as in ``cfg`` and has no assets (a tokenizer fitted to the source's
    captions would not fit this run's)."""
    _check_source_folder(source)
    ckpt = latest_checkpoint(source, fallback=False)
    theirs = load_run_config(source).model.towers if cfg is not None and cfg.train.init_towers else {}
    for m in cfg.train.init_towers if theirs else ():
        if m not in theirs:
            raise ConfigError(f"train.init_towers: run {source} has no {m!r} tower; it has {list(theirs)}")
        if (theirs[m].name, theirs[m].params) != (cfg.model.towers[m].name, cfg.model.towers[m].params):
            raise ConfigError(
                f"train.init_towers: tower {m!r} of run {source} is configured differently "
                f"({theirs[m].name} {theirs[m].params} there, {cfg.model.towers[m].name} "
                f"{cfg.model.towers[m].params} here)"
            )
        if any(p.is_file() for p in (source / "assets" / m).rglob("*")):
            raise ConfigError(
                f"train.init_towers: tower {m!r} of run {source} has assets (e.g. a tokenizer), which "
                "loading single towers does not carry over; start from the whole run (no init_towers)"
            )
    return ckpt


def _check_source_folder(source: Path) -> None:
    if not source.is_dir():
        raise MissingFileError(f"train.init_from: no contrastkit run folder at {source} (no such folder)")
    if not (source / "config.yaml").is_file():
        kind = "a Hugging Face model folder" if (source / "config.json").is_file() else "not a run folder"
        raise ConfigError(
            f"train.init_from: {source} is {kind}; it takes a contrastkit run folder (with config.yaml "
            "and checkpoints). Pretrained Hugging Face text models load as towers: model.towers.text: "
            "{name: hf_pretrained, params: {path: ...}} (docs/real-data.md)"
        )


def check_batch_split(cfg: RunConfig, world: int) -> None:
    """Every tower call sees at least 2 examples: a contrastive batch needs negatives, and a
    batch-norm layer fails on one example (also in the last gradient-cache chunk)."""
    per_rank, chunk = cfg.train.batch_size // world, cfg.scale.chunk_size
    if per_rank < 2:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} gives {per_rank} example(s) per process on "
            f"{world}: a contrastive batch needs at least 2 per process (negatives; batch norm)"
        )
    if chunk is not None and chunk < per_rank and min(chunk, per_rank % chunk or chunk) < 2:
        raise ConfigError(
            f"scale.chunk_size={chunk} splits the {per_rank} examples per process into chunks of which "
            f"one has {min(chunk, per_rank % chunk or chunk)}: every chunk needs at least 2 (batch norm)"
        )
    check_noisy_pairs(cfg, world)  # what several processes cannot do, before any data is read
