"""Test-time matching (R-TTM): self-training rounds on a compositional test set's own pseudo-matches.

What: Zhu et al. 2025, "Test-Time Matching" (yinglunz/test-time-matching, ``main.py``, ``match.py``,
``utils.py``; read for this module). A model scores every 2×2 group of a Winoground-style set
(:func:`~contrastkit.data.swaps.make_swap_sets`: the set the ``winoground`` task evaluates on Shapes),
pseudo-matches the groups it is confident about, fine-tunes itself on them and repeats.

Protocol, per round r = 0 … R−1 (defaults of :class:`TTMConfig` = the reference ``ttm.sh``):

1. margins with the current model (eval mode), on its **logit scale**: ``m = s·(c00 + c11 − c01 − c10)``
   with ``c`` the cosines (:func:`~contrastkit.evaluation.compositional.ttm_margins`; a bias cancels)
   and ``s`` the loss's logit scale; 1×M groups: top-1 minus top-2 (:func:`ttm_margins_1xm`);
2. threshold ``τ_r = 2.0 + (0 − 2.0)·r/(R−1)`` (:func:`~contrastkit.evaluation.compositional.
   ttm_thresholds`); groups with ``m ≥ τ_r`` are pseudo-matched as the identity, ``m ≤ −τ_r`` as
   swapped (:func:`~contrastkit.evaluation.compositional.ttm_select`); no selection: no training;
3. fine-tune on the selected groups' pseudo-pairs with the run's own loss (CLIP, SigLIP, …): a batch
   is ``batch_size`` = 50 groups = 100 pairs, groups shuffled by a generator seeded ``seed + r``
   (seed 42), ``epochs`` = 30 per round, AdamW (betas 0.9, 0.999, weight decay 0.05 on every trainable
   parameter, the loss's scale included, as the reference's ``model.parameters()``), learning rate
   ``lr·0.95^r`` (``lr`` = 1e-5) with a cosine to ``min_lr_factor`` = 0.1 of it over the round's steps;
   the optimizer state is kept across rounds (``keep_opt_states``). The reference's ``lr_restart``
   reads ``lr · lr_restart ** iteration``: each round restarts the cosine at 0.95× the previous
   round's peak. After each step the loss's own constraint (CLIP's scale clamp) runs, as in training;
4. the Winoground text/image/group scores and group matching of every kind after each round.

Exactness: threshold ∞ selects nothing and leaves every weight bit for bit; the loss of a step is
``loss(model.encode(image), model.encode(text))`` of its batch (tested against a direct call).
Related: :mod:`contrastkit.evaluation.compositional` (E-TTM selection, E-WINOGROUND, E-GROUPMATCH).
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.io import atomic_write_json, save_png
from contrastkit.core.progress import progress_bar
from contrastkit.data.swaps import KINDS, SwapSet, make_swap_sets
from contrastkit.evaluation.compositional import (
    group_match_scores,
    swap_scores,
    ttm_margins,
    ttm_select,
    ttm_thresholds,
    winoground_scores,
)
from contrastkit.evaluation.encoders import model_encoders
from contrastkit.losses.base import MultiLoss, PairLoss
from contrastkit.models.dual_encoder import DualEncoder

__all__ = [
    "TTMConfig",
    "logit_scale_of",
    "plot_ttm",
    "pseudo_pairs",
    "round_lr_factor",
    "run_ttm",
    "ttm_batches",
    "ttm_margins_1xm",
    "ttm_on_run",
    "ttm_round",
]


@dataclass(frozen=True)
class TTMConfig:
    """R-TTM settings; defaults are the reference command's (``epochs`` 30 takes long on a CPU: use a
    few for a quick look). ``scale``: the logit scale of the margins (``None``: the loss's own).
    ``n``, ``kinds``, ``data_seed``, ``image_size``: the swap sets (as the ``winoground`` task).
    ``norm_eval``: keep batch-norm layers in eval mode while fine-tuning (their running statistics
    then stay those of training; not in the reference, whose ViTs have no batch norm)."""

    rounds: int = 10
    epochs: int = 30
    batch_size: int = 50
    lr: float = 1e-5
    min_lr_factor: float = 0.1
    lr_restart: float = 0.95
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 42
    threshold_start: float = 2.0
    threshold_end: float = 0.0
    scale: float | None = None
    n: int = 200
    kinds: tuple[str, ...] = KINDS
    data_seed: int = 0
    image_size: int | None = None
    device: str = "cpu"
    norm_eval: bool = False

    def __post_init__(self) -> None:
        for name in ("rounds", "epochs", "batch_size", "n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"ttm {name} must be an integer >= 1, got {v!r}")
        if not 0 < self.lr <= 1 or not 0 <= self.min_lr_factor <= 1 or not 0 < self.lr_restart <= 1:
            raise ConfigError("ttm: lr must be in (0, 1], min_lr_factor in [0, 1], lr_restart in (0, 1]")
        if not self.weight_decay >= 0 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("ttm: weight_decay must be >= 0 and betas in [0, 1)")
        if not (self.threshold_start >= 0 and self.threshold_end >= 0):  # rejects NaN too
            raise ConfigError("ttm thresholds must be >= 0 (a threshold is a margin size)")
        if self.scale is not None and not 0 < self.scale < math.inf:
            raise ConfigError(f"ttm scale must be > 0 and finite, got {self.scale}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"ttm kinds must be some of {list(KINDS)}, got {list(self.kinds)}")


def ttm_margins_1xm(s: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1×M groups ``s [G, 1, M]`` (M ≥ 2): (top-1 minus top-2 score, index of the top-1 caption).
    With :func:`~contrastkit.evaluation.compositional.ttm_select` every selected group has
    orientation +1: its pseudo-caption is the top-1."""
    a = s.detach().cpu().double().numpy() if isinstance(s, torch.Tensor) else np.asarray(s, np.float64)
    if a.ndim != 3 or a.shape[1] != 1 or a.shape[2] < 2 or a.shape[0] == 0:
        raise InputError(f"1×M groups must be [G, 1, M >= 2], got {a.shape}")
    top = np.sort(a[:, 0], axis=1)
    return top[:, -1] - top[:, -2], a[:, 0].argmax(1)


def logit_scale_of(loss: PairLoss) -> float:
    """The logit scale ``s`` of a CLIP-family loss (its ``pure()`` ``scale``, else ``exp(log_scale)``)."""
    try:
        scale = loss.pure()[1].get("scale")
    except NotImplementedError:
        scale = None
    if scale is None and isinstance(getattr(loss, "log_scale", None), torch.Tensor):
        scale = loss.log_scale.exp()  # type: ignore[union-attr]
    if scale is None:
        raise ConfigError(
            f"{type(loss).__name__} has no logit scale: the TTM thresholds are on the model's logit "
            "scale; give one (TTMConfig.scale, --scale)"
        )
    return float(torch.as_tensor(scale).detach())


def round_lr_factor(step: int, total: int, min_lr_factor: float) -> float:
    """The reference's per-round cosine: ``min + ½(1 − min)(1 + cos(π·min(step/total, 1)))``."""
    progress = min(step / max(total, 1), 1.0)
    return min_lr_factor + 0.5 * (1.0 - min_lr_factor) * (1 + math.cos(math.pi * progress))


def pseudo_pairs(swaps: SwapSet, idx: np.ndarray, orient: np.ndarray) -> tuple[torch.Tensor, list[str]]:
    """Images ``[2k, 3, H, W]`` and captions (2k) of the selected groups: group g gives (image 0,
    caption 0), (image 1, caption 1) as the identity (+1) or with the captions swapped (−1)."""
    images = swaps.images[torch.as_tensor(np.asarray(idx, np.int64))].reshape(-1, *swaps.images.shape[2:])
    caps: list[str] = []
    for g, o in zip(np.asarray(idx), np.asarray(orient)):
        c0, c1 = swaps.captions[int(g)]
        caps += [c0, c1] if o > 0 else [c1, c0]
    return images, caps


def ttm_batches(n_groups: int, batch_size: int, seed: int, epochs: int) -> list[np.ndarray]:
    """Group positions of every step of a round: per epoch a shuffle (one generator seeded ``seed``,
    as the reference's DataLoader), cut into batches of ``batch_size`` (the last may be smaller)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        perm = torch.randperm(n_groups, generator=gen).numpy()
        out += [perm[i : i + batch_size] for i in range(0, n_groups, batch_size)]
    return out


def _optimizer(model: DualEncoder, loss: PairLoss, cfg: TTMConfig) -> torch.optim.AdamW:
    params = [p for mod in (model, loss) for p in mod.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("ttm: the model has no trainable parameter (every tower locked)")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def ttm_round(
    model: DualEncoder,
    loss: PairLoss,
    images: torch.Tensor,
    captions: Sequence[str],
    optimizer: torch.optim.AdamW,
    cfg: TTMConfig,
    r: int,
) -> list[float]:
    """Fine-tune on the pseudo-pairs (``images[2g + j]`` ↔ ``captions[2g + j]`` for group position g)
    for ``cfg.epochs`` epochs of round ``r``; returns the loss of every step."""
    n_groups = len(captions) // 2
    steps = ttm_batches(n_groups, cfg.batch_size, cfg.seed + r, cfg.epochs)
    peak = cfg.lr * cfg.lr_restart**r
    for g in optimizer.param_groups:  # keep_opt_states: moments stay, the cosine restarts at peak
        g["lr"] = g["initial_lr"] = peak
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: round_lr_factor(s, len(steps), cfg.min_lr_factor)
    )
    dev = next(model.parameters()).device
    losses = []
    model.train()
    loss.train()
    if cfg.norm_eval:  # batch norm normalises with (and keeps) the trained running statistics
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eval()
    for groups in progress_bar(steps, f"ttm round {r}", unit="step", leave=False):
        rows = np.stack([2 * groups, 2 * groups + 1], 1).reshape(-1)
        x = model.encode("image", images[torch.as_tensor(rows)].to(dev))
        y = model.encode("text", model.tokenize([captions[i] for i in rows]).to(dev))
        value = loss(x.float(), y.float())
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        sched.step()
        loss.after_optimizer_step()
        losses.append(float(value.detach()))
    model.eval()
    loss.eval()
    return losses


def _scores(model: DualEncoder, sets: dict[str, SwapSet]) -> dict[str, torch.Tensor]:
    enc = model_encoders(model, batch_size=256)
    return {kind: swap_scores(enc, swaps) for kind, swaps in sets.items()}


def _metrics(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    out: dict[str, float] = {}
    per_kind = []
    for kind, s in scores.items():
        per = {**winoground_scores(s), "group_match": group_match_scores(s)}
        per_kind.append(per)
        out.update({f"winoground/{kind}/{k}": float(v.mean()) for k, v in per.items()})
    if len(scores) > 1:  # every group of every kind together
        for k in per_kind[0]:
            out[f"winoground/all/{k}"] = float(np.concatenate([p[k] for p in per_kind]).mean())
    return out


def run_ttm(model: DualEncoder, loss: PairLoss, sets: dict[str, SwapSet], cfg: TTMConfig) -> list[dict]:
    """R-TTM on the groups of ``sets`` (one pool, every kind); returns one row per round (round −1:
    before any training) with the threshold, selection counts, training losses and the scores."""
    if isinstance(loss, MultiLoss):
        raise ConfigError(f"ttm fine-tunes with a pair loss (CLIP, SigLIP…), not {type(loss).__name__}")
    model.eval()
    loss.eval()
    scores = _scores(model, sets)
    rows: list[dict[str, Any]] = [{"round": -1, **_metrics(scores)}]
    optimizer = _optimizer(model, loss, cfg)
    kinds = list(sets)
    same = cfg.threshold_start == cfg.threshold_end  # also ∞ → ∞ (linspace would give NaN)
    taus = (
        np.full(cfg.rounds, cfg.threshold_start)
        if same
        else ttm_thresholds(cfg.rounds, cfg.threshold_start, cfg.threshold_end)
    )
    for r, tau in enumerate(taus):
        scale = cfg.scale if cfg.scale is not None else logit_scale_of(loss)
        margins = np.concatenate([scale * ttm_margins(scores[k]) for k in kinds])
        idx, orient = ttm_select(margins, float(tau))
        row: dict[str, Any] = {"round": r, "threshold": float(tau), "lr_peak": cfg.lr * cfg.lr_restart**r}
        row.update(selected=len(idx), pseudo_correct=int((orient > 0).sum()), scale=scale)
        row["margin_mean"] = float(margins.mean())
        if len(idx):
            offsets = np.cumsum([0] + [len(sets[k]) for k in kinds])
            parts = [
                pseudo_pairs(sets[k], idx[(idx >= a) & (idx < b)] - a, orient[(idx >= a) & (idx < b)])
                for k, a, b in zip(kinds, offsets[:-1], offsets[1:])
            ]
            images = torch.cat([p[0] for p in parts])
            captions = [c for p in parts for c in p[1]]
            losses = ttm_round(model, loss, images, captions, optimizer, cfg, r)
            row.update(steps=len(losses), loss_first=losses[0], loss_last=losses[-1])
            scores = _scores(model, sets)
        rows.append({**row, **_metrics(scores)})
    return rows


def plot_ttm(rows: list[dict], path: str | Path) -> None:
    """Group score and group match (every kind together, else the one kind) against the round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        k for k in rows[0] if k.startswith("winoground/") and k.rsplit("/", 1)[-1] in ("group", "group_match")
    ]
    keys = [k for k in keys if "/all/" in k] or keys
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = [r["round"] + 1 for r in rows]  # 0 = before, r = after round r
    for k in keys:
        ax.plot(x, [r[k] for r in rows], marker="o", label=k.removeprefix("winoground/"))
    ax.set_xlabel("round (0 = before test-time matching)")
    ax.set_ylabel("score (fraction of groups)")
    ax.set_title("Test-time matching")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_png(fig, path, dpi=120, tight=True)


def _save_run(run_dir: Path, out: Path, model: DualEncoder, loss: PairLoss, step: int, extra: dict) -> Path:
    """``out`` as a run folder of the adapted model (``contrastkit eval OUT`` evaluates it): the source's
    config and assets, and one checkpoint (written atomically by the checkpoint code) at the
    source's step, so ``train --resume OUT`` finds it finished."""
    from contrastkit.core.io import atomic_write_text
    from contrastkit.train.checkpoint import save_checkpoint

    atomic_write_text(out / "config.yaml", (run_dir / "config.yaml").read_text())
    if (out / "assets").exists():
        shutil.rmtree(out / "assets")
    model.save_assets(out / "assets")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)  # no state worth resuming
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return save_checkpoint(out / "checkpoints", step, model, loss, opt, sched, {"ttm": extra}, keep=1)


def ttm_on_run(run_dir: str | Path, out: str | Path, cfg: TTMConfig | None = None) -> dict[str, Any]:
    """R-TTM on run ``run_dir``'s newest checkpoint: writes ``out/ttm.json`` (settings and one row per
    round), ``out/ttm.png`` and the adapted model as a run folder (``out/config.yaml``, ``assets/``,
    ``checkpoints/``); returns what ttm.json holds."""
    from contrastkit.core.io import check_writable_dir
    from contrastkit.core.runtime import resolve_device
    from contrastkit.train.trainer import load_run

    cfg = cfg or TTMConfig()
    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve():
        raise ConfigError(
            "ttm --out must be a new folder, not the run itself (it would replace its checkpoint)"
        )
    check_writable_dir(out, "--out")
    device = resolve_device(cfg.device, "ttm device")  # one line for a device this machine lacks
    run_cfg, model, loss, ckpt = load_run(run_dir)
    model.to(device)
    if not cfg.norm_eval and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        # measured (docs/recipes.md): a round with one selected group trains on batches of 2 images,
        # which drag the running statistics; the reference's ViTs have no batch norm
        warnings.warn(
            f"{run_dir} has batch-norm layers: test-time matching rounds with few selected groups move "
            "their running statistics; --norm-eval (TTMConfig.norm_eval) keeps them",
            stacklevel=2,
        )
    loss.to(device)
    size = cfg.image_size or int(run_cfg.data.params.get("image_size", 32))
    sets = {k: make_swap_sets(cfg.n, k, size, cfg.data_seed) for k in cfg.kinds}
    torch.manual_seed(cfg.seed)
    rows = run_ttm(model, loss, sets, cfg)
    report = {"run": str(run_dir), "checkpoint": str(ckpt), "config": asdict(cfg), "rounds": rows}
    atomic_write_json(out / "ttm.json", report)
    plot_ttm(rows, out / "ttm.png")
    _save_run(run_dir, out, model, loss, int(ckpt.name.rsplit("_", 1)[-1]), {"rounds": cfg.rounds})
    return report
