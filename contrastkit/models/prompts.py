"""Learnable prompt context for text towers (CoOp).

What: Zhou et al. 2022, "Learning to Prompt for Vision-Language Models" (CoOp): ``n_ctx`` learnable
vectors ``[V]_1 … [V]_n`` (the text tower's token-embedding width) are put in front of the tokens of
every text, ``[BOS] [V]_1 … [V]_n <text tokens> [EOS]``, and trained while the tower stays locked
(``model.towers.text.locked: true``; the context is not part of the tower, so locking leaves it
trainable). Selected per tower:

```yaml
model:
  towers:
    text: {name: hf_text, locked: true, prompt: {init: "a photo of a"}}   # or {n_ctx: 16, init: null}
```

How: :meth:`PromptContext.tokenize` tokenises the texts with ``n_ctx`` fewer positions and inserts
``n_ctx`` placeholder ids right after the BOS token (at the start for a tokenizer without one, e.g.
SigLIP's); :meth:`PromptContext.applied` hooks the tower's input token embedding
(``encoder.get_input_embeddings()``) so that the embeddings at those positions are the context vectors.
Position embeddings, attention masks and EOS pooling then see an ordinary sequence, so any
token-embedding transformer works: ``hf_text`` (BERT), ``hf_pretrained``, ``hf_dual_text`` (CLIP, SigLIP).

Init: ``init`` text → the token embeddings of its tokens (``n_ctx`` = their number); ``init: null`` →
``N(0, std²)`` (CoOp: std 0.02; ``n_ctx`` default 16). Exactness: with the context equal to the
embeddings of "a photo of a", a caption's embedding equals the plain tower's embedding of
"a photo of a <caption>" (tested). Related: ``model.lock`` patterns, :mod:`contrastkit.models.dual_encoder`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.towers import TextTower

__all__ = ["PromptConfig", "PromptContext", "input_embedding"]

_RANDOM_N_CTX = 16  # CoOp's default context length without an init text


@dataclass(frozen=True)
class PromptConfig:
    """``n_ctx`` context vectors (``None``: the token count of ``init``, or 16 without one), set to
    the token embeddings of ``init`` or drawn ``N(0, std²)`` when ``init`` is null."""

    n_ctx: int | None = None
    init: str | None = "a photo of a"
    std: float = 0.02

    def __post_init__(self) -> None:
        n = self.n_ctx
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"prompt.n_ctx must be an integer >= 1 or null, got {n!r}")
        if self.init is not None and not self.init.strip():
            raise ConfigError("prompt.init must be a non-empty text or null (random init)")
        if not 0 < self.std < float("inf"):
            raise ConfigError(f"prompt.std must be > 0 and finite, got {self.std}")


def input_embedding(tower: nn.Module) -> nn.Embedding:
    """The token-embedding layer of a text tower's transformer (``encoder.get_input_embeddings()``)."""
    get = getattr(getattr(tower, "encoder", None), "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(tower, TextTower) or not isinstance(emb, nn.Embedding):
        raise ConfigError(
            f"prompt learning needs a text tower with token embeddings (hf_text, hf_pretrained, "
            f"hf_dual_text); {type(tower).__name__} has none"
        )
    return emb


class PromptContext(nn.Module):
    """The learnable context ``[n_ctx, width]`` of one text tower and how it enters the tower.
    It holds no reference to the tower (the model passes it), so the tower's weights are not
    duplicated in the state dict."""

    def __init__(self, tower: TextTower, cfg: PromptConfig, where: str = "prompt") -> None:
        super().__init__()
        emb = input_embedding(tower)
        tok = tower.tokenizer
        special = set(tok.all_special_ids)
        first = tok("a", add_special_tokens=True)["input_ids"]
        self.start = 1 if first and first[0] in special else 0  # after BOS/[CLS], if the tokenizer adds one
        # any ordinary token: its embedding is replaced; not pad/EOS, so masks and pooling are unchanged
        self.placeholder = next(i for i in range(emb.num_embeddings) if i not in special)
        self.cfg, self.where = cfg, where
        init_ids = [] if cfg.init is None else tok(cfg.init, add_special_tokens=False)["input_ids"]
        n = cfg.n_ctx or len(init_ids) or _RANDOM_N_CTX
        if cfg.init is not None and n != len(init_ids):
            raise ConfigError(
                f"{where}.n_ctx={n} but init {cfg.init!r} is {len(init_ids)} tokens; drop n_ctx or "
                "set init: null (random init)"
            )
        if n >= tower.max_length - 1:
            raise ConfigError(f"{where}.n_ctx={n} leaves no room in the tower's {tower.max_length} positions")
        self.n_ctx = n
        self.context = nn.Parameter(torch.empty(n, emb.embedding_dim))
        self.initialize(tower)

    @torch.no_grad()
    def initialize(self, tower: TextTower) -> None:
        """Set the context from ``init``'s token embeddings (of ``tower`` as it is now) or at random."""
        emb = input_embedding(tower)
        if self.cfg.init is None:
            self.context.normal_(0.0, self.cfg.std)
            return
        ids = tower.tokenizer(self.cfg.init, add_special_tokens=False)["input_ids"]
        self.context.copy_(emb.weight[torch.as_tensor(ids, device=emb.weight.device)])

    @contextmanager
    def _shorter(self, tower: TextTower) -> Iterator[None]:
        """The tower tokenises with ``n_ctx`` fewer positions (room for the context)."""
        full = tower.max_length
        tower.max_length = full - self.n_ctx
        try:
            yield
        finally:
            tower.max_length = full

    def tokenize(self, tower: TextTower, texts: list[str]) -> torch.Tensor:
        """Token ids ``[B, L + n_ctx]`` with the placeholders after the BOS token."""
        with self._shorter(tower):
            ids = tower.tokenize(texts)
        slots = ids.new_full((ids.shape[0], self.n_ctx), self.placeholder)
        return torch.cat([ids[:, : self.start], slots, ids[:, self.start :]], 1)

    def count_truncated(self, tower: TextTower, texts: list[str]) -> int:
        """How many ``texts`` exceed the context left after the prompt."""
        with self._shorter(tower):
            return tower.count_truncated(texts)

    @contextmanager
    def applied(self, tower: TextTower) -> Iterator[None]:
        """While active, the tower's token embeddings at the placeholder slots are the context."""
        a, b = self.start, self.start + self.n_ctx

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            ids = args[0]
            if ids.shape[1] < b or not bool((ids[:, a:b] == self.placeholder).all()):
                raise InputError(f"text ids lack the {self.n_ctx} prompt slots: tokenize with the model")
            ctx = self.context.to(out.dtype)[None].expand(out.shape[0], -1, -1)
            return torch.cat([out[:, :a], ctx, out[:, b:]], 1)

        handle = input_embedding(tower).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
