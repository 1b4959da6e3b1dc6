"""D-MCL cross-stage integration: one encoder pair from all stages of a multistage run.

Paper: Zhang et al. 2024 (ECCV), "Learning the Unlearned: Mitigating Feature Suppression in
Contrastive Learning" (MCL); reference ``MMVP.ipynb``. A multistage run (``curation.mcl``,
:mod:`contrastkit.train.multistage`) holds one model per stage, ``f_0 … f_T`` (images) and
``g_0 … g_T`` (texts). Evaluation and deployment use their concatenation::

    F(x) = norm(concat_t f_t(x)),   G(y) = norm(concat_t g_t(y))

of the RAW (un-normalised) tower outputs, then one L2 normalisation (the reference); so a stage
whose outputs have larger norms weighs more. ``per_stage_normalize=True`` (the run's
``curation.mcl.per_stage_normalize``) normalises each ``f_t`` first: then every stage weighs the
same and ``cos(F(x), G(y)) = (1/(T+1)) Σ_t cos(f_t(x), g_t(y))``. With one stage (``T = 0``) ``F``
is the single model's normalised embedding. Inference cost: ``T+1`` forward passes.

:func:`run_encoders` is how ``contrastkit eval RUN_DIR`` and studies turn any run folder into
:class:`~contrastkit.evaluation.encoders.Encoders`: an ordinary run gives its model's encoders, a
multistage run the concatenation of all its stages (every stage must be trained).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.evaluation.encoders import Encoders, model_encoders
from contrastkit.models.dual_encoder import DualEncoder

__all__ = ["concat_embeddings", "multistage_encoders", "run_encoders"]


def concat_embeddings(parts: Sequence[torch.Tensor], per_stage_normalize: bool = False) -> torch.Tensor:
    """``norm(concat_t e_t)`` of the stages' raw embeddings ``parts[t]`` (``[B, d_t]`` each); with
    ``per_stage_normalize`` each ``e_t`` is L2-normalised before the concatenation."""
    if not parts:
        raise InputError("concat_embeddings needs at least one stage's embeddings")
    if len({len(p) for p in parts}) != 1:
        raise InputError(f"every stage must embed the same rows, got {[len(p) for p in parts]}")
    parts = [p.float() for p in parts]
    if per_stage_normalize:
        parts = [F.normalize(p, dim=-1) for p in parts]
    return F.normalize(torch.cat(parts, dim=-1), dim=-1)


def multistage_encoders(
    models: Sequence[DualEncoder], batch_size: int = 256, per_stage_normalize: bool = False
) -> Encoders:
    """Encoders of the concatenated stages ``models`` (module docstring; eval mode, no grad)."""
    if not models:
        raise InputError("multistage_encoders needs at least one model")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")

    def raw(key: str, inputs: Any) -> list[torch.Tensor]:
        out = []
        for m in models:
            m.eval()
            dev = next(m.parameters()).device
            x = m.tokenize(list(inputs)) if key == "text" else inputs
            out.append(m.encode(key, x.to(dev)).float().cpu())
        return out

    @torch.no_grad()
    def images(x: torch.Tensor) -> torch.Tensor:
        chunks = [raw("image", x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return concat_embeddings([torch.cat(c) for c in zip(*chunks)], per_stage_normalize)

    @torch.no_grad()
    def texts(t: list[str]) -> torch.Tensor:
        chunks = [raw("text", t[i : i + batch_size]) for i in range(0, len(t), batch_size)]
        return concat_embeddings([torch.cat(c) for c in zip(*chunks)], per_stage_normalize)

    return Encoders(images, texts)


def run_encoders(run_dir: str | Path, batch_size: int = 256) -> tuple[Any, DualEncoder, Path, Encoders, dict]:
    """``(config, model, checkpoint, encoders, record)`` of a run folder: an ordinary run's model
    and its encoders (``record`` empty); for a multistage run its config, the LAST stage's model and
    checkpoint, the concatenated encoders of all stages and ``record = {"stages": [...]}``; for a
    continual run (``continual``) its config and its last stage's model (``record = {"stage": path}``)."""
    from contrastkit.train import load_run, load_run_config  # evaluation sits above train
    from contrastkit.train.multistage import stage_dirs
    from contrastkit.train.rundir import has_checkpoint

    cfg = load_run_config(run_dir)
    mcl = cfg.curation.mcl
    cont = getattr(cfg, "continual", None)
    if cont is not None and cont.stage is None:  # a continual run: its LAST stage's model
        from contrastkit.train.continual import stage_dirs as continual_stages

        last = continual_stages(run_dir, cont)[-1]
        if not has_checkpoint(last):
            raise ConfigError(f"continual run {run_dir}: its last stage {last} has no checkpoint yet")
        _, model, _, ckpt = load_run(last)
        return cfg, model, ckpt, model_encoders(model, batch_size=batch_size), {"stage": str(last.resolve())}
    if mcl is None:
        cfg, model, _, ckpt = load_run(run_dir)
        return cfg, model, ckpt, model_encoders(model, batch_size=batch_size), {}
    dirs = stage_dirs(run_dir, mcl)
    missing = [str(d) for d in dirs if not has_checkpoint(d)]
    if missing:
        raise ConfigError(
            f"multistage run {run_dir}: stage folder(s) {missing} have no checkpoint yet; finish the run "
            f"(contrastkit train --resume {run_dir}) before evaluating it"
        )
    loaded = [load_run(d) for d in dirs]
    models = [m for _, m, _, _ in loaded]
    record = {
        "stages": [{"path": str(d.resolve()), "checkpoint": c.name} for d, (_, _, _, c) in zip(dirs, loaded)],
        "concatenation": "norm(concat_t f_t(x))"
        + (" of per-stage L2-normalised outputs" if mcl.per_stage_normalize else " of raw outputs"),
    }
    enc = multistage_encoders(models, batch_size, mcl.per_stage_normalize)
    return cfg, models[-1], loaded[-1][3], enc, record
