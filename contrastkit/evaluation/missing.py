"""Missing-modality evaluation: fusion heads trained on frozen embeddings, tested with modalities
removed (issue 20; heads of spec M-MMP, M-MISSING-PROMPTS, M-MULTIMODN).

Protocol of :func:`missing_modality_table` (a pure function over tensors):

1. Inputs: train and test embeddings ``{modality: [N, d_m]}`` (frozen) and integer labels; an
   optional ``train_present`` marks rows truly missing in training. Heads L2-normalise each
   embedding.
2. For each head and seed: the head is built under ``torch.manual_seed(seed)`` (inside
   ``fork_rng``: the caller's global RNG is untouched) and trained for ``epochs`` epochs of
   minibatches (``batch_size``; order and masks from one ``torch.Generator`` seeded with ``seed``)
   with AdamW. **Modality dropout**: every minibatch drops each (row, modality) with probability
   ``p_drop`` and redraws rows left with none (:func:`contrastkit.losses.mmp.sample_modality_masks`),
   so with ``p_drop = 0.5`` the 2^M − 1 non-empty patterns are equally likely.
3. Test: for every set R of removed modalities with ``|R| ≤ max_missing`` (default M − 1; for M = 3
   that is 0, 1 and 2 removed), every test row gets ``present[m] = False`` and a zero embedding for
   m ∈ R; top-1 accuracy of the head's argmax.
4. Rows: one per (head, pattern) — ``kind="pattern"``, ``removed`` the ``+``-joined removed names
   (``""`` for none) — and one per (head, number missing) — ``kind="n_missing"``, the mean over the
   patterns with that many removed — each with ``accuracy`` (mean over seeds), ``accuracy_std``
   (population std over seeds) and ``n_seeds``. Given the seeds the table is deterministic.

Heads (``heads=``): ``mean`` (:class:`~contrastkit.models.fusion.MeanFusion`), ``mmp``
(:class:`MMPHead`: MMP completion + a linear head on the concatenated embeddings, trained with
cross-entropy + ``λ_align``·alignment where the dropped-but-real rows are the targets),
``prompts`` (:class:`~contrastkit.models.fusion.PromptFusion`) and ``multimodn``
(:class:`~contrastkit.models.multimodn.MultiModN`, per-sample skip, its own loss). ``head_params``
overrides each head's constructor arguments.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.mmp import MaskedModalityProjection, sample_modality_masks
from contrastkit.models.fusion import FusionHead, MeanFusion, PromptFusion, availability
from contrastkit.models.multimodn import MultiModN

__all__ = ["HEADS", "MMPHead", "build_head", "missing_modality_table", "removal_patterns"]

HEADS = ("mean", "mmp", "prompts", "multimodn")


class MMPHead(FusionHead):
    """MMP completion + linear head: missing embeddings are replaced by ``mean_a P_{a→m}(e_a)``
    (:class:`~contrastkit.losses.mmp.MaskedModalityProjection`), then ``Linear(concat_m e_m)``.

    Args:
        modalities: names, in order.
        dim: the embedding dimension, or ``{modality: dim}``.
        n_classes: C.
        lambda_align: weight of the alignment term (spec 1.0).
        hidden: the projections' hidden width (default: the target's dimension).
        normalize: L2-normalise each embedding first (default).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        dim: int | Mapping[str, int],
        n_classes: int,
        lambda_align: float = 1.0,
        hidden: int | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__(modalities, normalize)
        self.projection = MaskedModalityProjection(self.modalities, dim, hidden)
        total = sum(int(dim[m] if isinstance(dim, Mapping) else dim) for m in self.modalities)
        self.head = torch.nn.Linear(total, n_classes)
        self.lambda_align = lambda_align

    def _complete(
        self, emb: Mapping[str, torch.Tensor], keep: torch.Tensor, known: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xs, _ = self.inputs(emb, {m: known[:, j] for j, m in enumerate(self.modalities)})
        if not bool(keep.any(1).all()):
            raise InputError("a row has no modality present: a fusion head needs at least one")
        filled, align = self.projection.replace(dict(zip(self.modalities, xs)), ~keep, known)
        return self.head(torch.cat([filled[m] for m in self.modalities], dim=1)), align

    def forward(
        self, emb: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        avail = availability(emb, present, self.modalities)
        return self._complete(emb, avail, avail)[0]

    def loss(  # type: ignore[override]
        self,
        emb: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor] | None,
        labels: torch.Tensor,
        keep: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """CE on the completed embeddings + λ·alignment. ``present``: the rows whose real embedding
        exists (alignment targets); ``keep``: the rows left visible after masking (default
        ``present``: then only truly missing rows are predicted and nothing is aligned)."""
        real = availability(emb, present, self.modalities)
        kept = availability(emb, keep, self.modalities) & real if keep is not None else real
        logits, align = self._complete(emb, kept, real)
        return F.cross_entropy(logits, labels) + self.lambda_align * align


def build_head(
    name: str, modalities: Sequence[str], dims: Mapping[str, int], n_classes: int, **params: Any
) -> FusionHead:
    """One of :data:`HEADS` over ``modalities`` with dimensions ``dims``."""
    if name == "mean":
        if len(set(dims.values())) != 1:
            raise InputError(f"the mean head needs one embedding dimension for all modalities, got {dims}")
        return MeanFusion(modalities, next(iter(dims.values())), n_classes, **params)
    if name == "mmp":
        return MMPHead(modalities, dims, n_classes, **params)
    if name == "prompts":
        return PromptFusion(modalities, dims, n_classes, **params)
    if name == "multimodn":
        return MultiModN(modalities, dims, n_classes, **params)
    raise ConfigError(f"unknown fusion head {name!r}; available: {list(HEADS)}")


def removal_patterns(modalities: Sequence[str], max_missing: int) -> list[tuple[str, ...]]:
    """Every set of removed modalities with at most ``max_missing`` members, by size then order."""
    return [c for k in range(max_missing + 1) for c in itertools.combinations(modalities, k)]


def _train(
    head: FusionHead,
    emb: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    known: torch.Tensor,
    gen: torch.Generator,
    opts: Mapping[str, Any],
) -> None:
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=opts["weight_decay"])
    mods, n = head.modalities, labels.shape[0]
    head.train()
    for _ in range(opts["epochs"]):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, opts["batch_size"]):
            idx = order[start : start + opts["batch_size"]]
            keep = ~sample_modality_masks(known[idx], opts["p_drop"], gen)
            batch = {m: emb[m][idx] for m in mods}
            kept = {m: keep[:, j] for j, m in enumerate(mods)}
            if isinstance(head, MMPHead):
                real = {m: known[idx, j] for j, m in enumerate(mods)}
                loss = head.loss(batch, real, labels[idx], keep=kept)
            elif isinstance(head, MultiModN):
                loss = head.loss(batch, kept, labels[idx], generator=gen)
            else:
                loss = head.loss(batch, kept, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    head.eval()


@torch.no_grad()
def _accuracy(
    head: FusionHead,
    emb: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    removed: Sequence[str],
    chunk: int,
) -> float:
    n, correct = labels.shape[0], 0
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        batch = {m: torch.zeros_like(emb[m][sl]) if m in removed else emb[m][sl] for m in head.modalities}
        rows = batch[head.modalities[0]].shape[0]
        present = {m: torch.zeros(rows, dtype=torch.bool) for m in removed}
        correct += int((head(batch, present).argmax(1) == labels[sl]).sum())
    return correct / n


def _check(
    train_emb: Mapping[str, torch.Tensor],
    train_labels: Any,
    test_emb: Mapping[str, torch.Tensor],
    test_labels: Any,
    modalities: Sequence[str] | None,
) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
    mods = tuple(modalities) if modalities is not None else tuple(sorted(train_emb))
    if len(mods) < 2:
        raise InputError(f"a missing-modality table needs >= 2 modalities, got {mods}")
    y_tr = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    y_te = torch.as_tensor(np.asarray(test_labels), dtype=torch.long)
    for split, emb, y in (("train", train_emb, y_tr), ("test", test_emb, y_te)):
        missing = [m for m in mods if m not in emb]
        if missing:
            raise InputError(f"{split} embeddings lack {missing}; got {sorted(emb)}")
        if y.ndim != 1 or len(y) == 0 or bool((y < 0).any()):
            raise InputError(f"{split} labels must be a non-empty [N] array of class indices >= 0")
        for m in mods:
            if emb[m].ndim != 2 or emb[m].shape[0] != len(y) or emb[m].shape[1] != train_emb[m].shape[1]:
                raise InputError(
                    f"{split} embedding {m!r} has shape {tuple(emb[m].shape)} for {len(y)} labels"
                )
    return mods, y_tr, y_te


def missing_modality_table(
    train_emb: Mapping[str, torch.Tensor],
    train_labels: Any,
    test_emb: Mapping[str, torch.Tensor],
    test_labels: Any,
    heads: Sequence[str] = HEADS,
    seeds: Sequence[int] = (0,),
    *,
    modalities: Sequence[str] | None = None,
    train_present: Mapping[str, torch.Tensor] | None = None,
    max_missing: int | None = None,
    p_drop: float = 0.5,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    head_params: Mapping[str, Mapping[str, Any]] | None = None,
    chunk: int = 4096,
) -> list[dict[str, Any]]:
    """Accuracy of each fusion head with every pattern of removed modalities (see the module).

    ``modalities``: the order (default: sorted keys of ``train_emb``). Returns the rows described
    in the module docstring: per pattern, then per number missing, for each head in order."""
    mods, y_tr, y_te = _check(train_emb, train_labels, test_emb, test_labels, modalities)
    m_max = len(mods) - 1 if max_missing is None else int(max_missing)
    if not 0 <= m_max < len(mods) or not 0 <= p_drop < 1 or epochs < 0 or batch_size < 1 or not seeds:
        raise ConfigError(
            f"need 0 <= max_missing < {len(mods)}, 0 <= p_drop < 1, epochs >= 0, batch_size >= 1 and a seed"
        )
    extra = sorted(set(head_params or {}) - set(heads))
    if extra:
        raise ConfigError(f"head_params for heads not evaluated: {extra}")
    tr = {m: torch.as_tensor(train_emb[m]).float() for m in mods}
    te = {m: torch.as_tensor(test_emb[m]).float() for m in mods}
    known = availability(tr, train_present, mods)
    dims = {m: tr[m].shape[1] for m in mods}
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    opts = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "p_drop": p_drop,
    }
    patterns = removal_patterns(mods, m_max)
    rows: list[dict[str, Any]] = []
    for name in heads:
        acc = np.zeros((len(seeds), len(patterns)))
        for s, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                head = build_head(name, mods, dims, n_classes, **dict((head_params or {}).get(name, {})))
            _train(head, tr, y_tr, known, torch.Generator().manual_seed(int(seed)), opts)
            acc[s] = [_accuracy(head, te, y_te, removed, chunk) for removed in patterns]
        for p, removed in enumerate(patterns):
            rows.append(_row(name, "pattern", "+".join(removed), len(removed), acc[:, p]))
        for k in range(m_max + 1):
            cols = [p for p, removed in enumerate(patterns) if len(removed) == k]
            rows.append(_row(name, "n_missing", "*", k, acc[:, cols].mean(1)))
    return rows


def _row(head: str, kind: str, removed: str, k: int, per_seed: np.ndarray) -> dict[str, Any]:
    return {
        "head": head,
        "kind": kind,
        "removed": removed,
        "n_missing": k,
        "accuracy": float(per_seed.mean()),
        "accuracy_std": float(per_seed.std()),
        "n_seeds": len(per_seed),
    }
