"""M-MULTIMODN — sequential modular fusion over per-modality embeddings.

Paper: Swamy et al. 2023, "MultiModN: Multimodal, Multi-Task, Interpretable Modular Networks"
(seed 67). Spec M-MULTIMODN [VERIFIED against EPFLiGHT/MultiModN ``multimodn/multimodn.py``].

A trainable initial state ``s_0 ∈ R^S`` (``randn`` init, broadcast over the batch). For each
modality m in order (a random order per call when ``shuffle`` and training, drawn from the given
generator), ``s ← enc_m(s, e_m)`` with the reference MLP encoder: ``h = ReLU(…ReLU(W_1 e_m))``
through ``hidden`` layers, then ``enc_m = W_out [h; s] + b`` (the state joins the last layer).
Decoders ``dec_t(s) = Linear(S, C_t)`` (one per task; logits, cross-entropy) are applied to
``s_0`` and after **every** step. Error matrix ``E[k, t]`` (row 0: initial state, row ``1 + m``:
after modality m's encoder, whatever the order), state changes ``c_m = mean((s_after −
s_before)²)``::

    loss = err_penalty · Σ E / ((M + 1)·T) + 0.01 · state_change_penalty · Σ_m c_m / M

Missing data (``present`` False, or a row with NaN, counts as missing):

* ``missing_policy="batch_skip"`` — the reference: modality m's step is skipped for the whole batch
  if **any** row misses it; a skipped step's ``E`` row and ``c_m`` stay 0 and still count in the
  denominators (the reference's sums over a zero-initialised matrix).
* ``missing_policy="per_sample"`` (default) — rows that miss m keep their state; ``E[1 + m, t] =
  Σ_{i has m} CE_i / N`` and ``c_m = Σ_{i has m} mean_j(Δs_ij²) / N``: exactly the mean over rows
  of the reference run on each row as a batch of one (so with complete rows it equals batch_skip).

Defaults from the reference's MIMIC pipeline: state 50, hidden (32,), err_penalty 1,
state_change_penalty 0. The reference decoders apply an activation before its criterion;
contrastkit's decoders give logits to cross-entropy. ``forward`` returns the first decoder's logits
after the last step (the prediction); :meth:`MultiModN.steps` returns every step's.

TEST ORACLES (spec): an all-NaN modality leaves the state unchanged and its E row unused; with one
encoder and state_change_penalty = 0 the loss is err_penalty·(E[0] + E[1])/2 per decoder.
Related: :mod:`contrastkit.models.fusion` (prompts, mean baseline).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.fusion import FusionHead

__all__ = ["MultiModN", "MultiModNEncoder"]


class MultiModNEncoder(nn.Module):
    """``enc(s, x) = W_out [MLP(x); s] + b`` (reference ``MLPEncoder``: ReLU hidden layers, the
    state concatenated to the input of the last layer, no output activation)."""

    def __init__(self, in_dim: int, state_size: int, hidden: Sequence[int] = (32,)) -> None:
        super().__init__()
        dims = [in_dim, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.out = nn.Linear(dims[-1] + state_size, state_size)

    def forward(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.out(torch.cat([x, state], dim=1))


class MultiModN(FusionHead):
    """Sequential modular fusion (see the module docstring).

    Args:
        modalities: names in encoding order.
        dim: embedding dimension, or ``{modality: dim}``.
        n_classes: C, or one C per decoder (task).
        state_size: S (reference pipeline: 50).
        hidden: the encoders' hidden widths.
        err_penalty: weight of the mean error (1).
        state_change_penalty: weight (× 0.01) of the mean state change (0).
        missing_policy: ``"per_sample"`` (default) or ``"batch_skip"`` (reference).
        shuffle: random encoder order per training call (reference ``shuffle_mode``).
        normalize: L2-normalise the embeddings first (default).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        dim: int | Mapping[str, int],
        n_classes: int | Sequence[int],
        state_size: int = 50,
        hidden: Sequence[int] = (32,),
        err_penalty: float = 1.0,
        state_change_penalty: float = 0.0,
        missing_policy: Literal["per_sample", "batch_skip"] = "per_sample",
        shuffle: bool = False,
        normalize: bool = True,
    ) -> None:
        super().__init__(modalities, normalize)
        if missing_policy not in ("per_sample", "batch_skip"):
            raise ConfigError(f"missing_policy must be 'per_sample' or 'batch_skip', got {missing_policy!r}")
        if state_size < 1 or err_penalty < 0 or state_change_penalty < 0:
            raise ConfigError("state_size must be >= 1 and the penalties >= 0")
        tasks = [n_classes] if isinstance(n_classes, int) else list(n_classes)
        self.init_state = nn.Parameter(torch.randn(1, state_size))
        self.encoders = nn.ModuleDict(
            {
                m: MultiModNEncoder(int(dim[m] if isinstance(dim, Mapping) else dim), state_size, hidden)
                for m in self.modalities
            }
        )
        self.decoders = nn.ModuleList(nn.Linear(state_size, c) for c in tasks)
        self.err_penalty, self.state_change_penalty = err_penalty, 0.01 * state_change_penalty
        self.missing_policy, self.shuffle = missing_policy, shuffle

    def steps(
        self,
        emb: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[list[list[torch.Tensor] | None], torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Run the encoders. Returns ``(logits, used, changes, state)``: ``logits[k]`` the decoders'
        outputs after row k of E (None for a step skipped by the whole batch), ``used [M+1, N]``
        the rows each E row counts, ``changes[m]`` per-row ``mean_j Δs²`` and the final state."""
        xs, avail = self.inputs(emb, present)
        n = avail.shape[0]
        state = self.init_state.expand(n, -1)
        logits: list[list[torch.Tensor] | None] = [[d(state) for d in self.decoders]] + [None] * len(xs)
        used = torch.zeros(len(xs) + 1, n, dtype=torch.bool, device=avail.device)
        used[0] = True
        changes = [state.new_zeros(n) for _ in xs]
        order = list(range(len(xs)))
        if self.shuffle and self.training:
            order = torch.randperm(len(xs), generator=generator).tolist()
        for m in order:
            rows = avail[:, m] if self.missing_policy == "per_sample" else avail[:, m].all().expand(n)
            if not bool(rows.any()):
                continue  # the reference's skip: state unchanged, E row and c_m stay 0
            new = self.encoders[self.modalities[m]](state, xs[m].to(state.dtype))
            new = torch.where(rows[:, None], new, state)  # rows without m keep their state
            changes[m] = ((new - state) ** 2).mean(1)
            state = new
            logits[m + 1] = [d(state) for d in self.decoders]
            used[m + 1] = rows
        return logits, used, changes, state

    def forward(
        self, emb: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The first decoder's logits after the last step (missing modalities skipped)."""
        state = self.steps(emb, present)[3]
        return self.decoders[0](state)

    def loss(
        self,
        emb: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor] | None,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The spec's loss; ``labels`` is ``[N]`` (one decoder) or ``[N, T]``."""
        return self.loss_terms(emb, present, labels, generator)[0]

    def loss_terms(
        self,
        emb: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor] | None,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, E [M+1, T], c [M])``."""
        targets = labels[:, None] if labels.ndim == 1 else labels
        if targets.shape[1] != len(self.decoders):
            raise InputError(
                f"labels have {targets.shape[1]} task(s), the model {len(self.decoders)} decoder(s)"
            )
        logits, used, changes, _ = self.steps(emb, present, generator)
        n = targets.shape[0]
        rows = []
        for k, outs in enumerate(logits):
            if outs is None:
                rows.append(
                    torch.zeros(len(self.decoders), dtype=self.init_state.dtype, device=targets.device)
                )
                continue
            w = used[k].to(outs[0].dtype)
            rows.append(
                torch.stack(
                    [
                        (F.cross_entropy(o, targets[:, t], reduction="none") * w).sum() / n
                        for t, o in enumerate(outs)
                    ]
                )
            )
        err = torch.stack(rows)
        change = torch.stack([c.sum() / n for c in changes])
        loss = self.err_penalty * err.mean() + self.state_change_penalty * change.mean()
        return loss, err, change
