"""M-LLM-EMBED — a decoder (causal) language model as a text embedder: last-token pooling and
instruction templates.

Papers: E5-V (Jiang et al. 2024, "E5-V: Universal Embeddings with Multimodal Large Language
Models"); VLM2Vec (Jiang et al. 2024, MMEB); UniME (Gu et al. 2025, "Breaking the Modality
Barrier: Universal Embedding Learning with Multimodal LLMs"); "From Generator to Embedder:
Harnessing Innate Abilities of Multimodal LLMs via Building Zero-Shot Discriminative Embedding
Model" (hierarchical system + task prompts).

What: tower ``decoder_llm``. A causal transformer (``transformers`` ``GPT2Model`` or
``LlamaModel`` randomly initialised from this tower's parameters, or any model in a local folder
``path`` with its own tokenizer) reads each caption wrapped in an instruction template; the
embedding is the last layer's hidden state at the last real token (optionally L2-normalised).

Template (exact strings; ``\\n`` is a newline)::

    rendered = system_prompt + prefix + task_prompt + text + suffix

* ``none``: prefix = suffix = "" (only the prompts; ``task_prompt`` e.g.
  ``"Represent this caption for retrieving images: "``);
* ``e5v`` (LLaMA-3 chat, E5-V README): prefix ``<|start_header_id|>user<|end_header_id|>\\n\\n``,
  suffix ``\\nSummary above sentence in one word: `` +
  ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n \\n``;
* ``unime`` (Phi-3.5-V demo, seen only in third-party copies: UNVERIFIED): prefix ``<|user|>\\n``,
  suffix ``\\nSummary above sentence in one word: <|end|>\\n<|assistant|>\\n``;
* a custom string holding ``{text}`` once: prefix / suffix are the parts before / after it.

The image forms (``render_image``) replace ``text + suffix`` by the image token and the "image"
suffix (``<image>`` + ``\\nSummary above image in one word: …`` for E5-V, ``<|image_1|>`` for
UniME); a template without an image form raises :class:`InputError`. ``system_prompt`` and
``task_prompt`` have no default text (the seed-48 wording is UNVERIFIED); they are configurable.

Pooling (VLM2Vec ``_pooling``): with attention mask ``m [B, L]``, if every row's last entry is 1
(left padding, or no padding) take position −1, else take ``m.sum(1) − 1`` per row (right padding).
Position ids are ``cumsum(m) − 1`` (clamped at 0) and pad keys are masked, so a row sees the same
positions and keys whatever side it is padded on: left- and right-padded batches give the same
embedding up to float rounding (tested to 1e-12 in float64).

Truncation cuts the content, never the template: a text whose rendered form exceeds
``max_length`` tokens is cut at a token boundary of the content (its tokens' character offsets)
and rendered again, so the suffix ("Summary above sentence in one word: …") always survives. A
template longer than ``max_length`` on its own is an error.

Tokenizer: a local folder brings its own; the random-init case builds contrastkit's word tokenizer
(:func:`~contrastkit.models.tokenizer.train_word_tokenizer`) from the training captions *rendered
in the template*, so template words are in the vocabulary. Pads: the tokenizer's pad id, else −1
(a sentinel that never reaches the embedding table).
Related: ``hf_text`` / ``hf_pretrained`` towers (bidirectional encoders), ``split_text``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.core.registry import Fraction, PositiveInt
from contrastkit.models.pretrained import resolve_path
from contrastkit.models.tokenizer import load_tokenizer, train_word_tokenizer
from contrastkit.models.towers import TOWERS, TextTower, Tower, TowerContext

__all__ = ["TEMPLATES", "DecoderTextTower", "Template", "decoder_llm_tower", "last_token_pool"]

_SENT = "\nSummary above sentence in one word: "
_IMAGE = "\nSummary above image in one word: "
_E5V_END = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n \n"
_UNIME_END = "<|end|>\n<|assistant|>\n"

# name -> (prefix, text suffix, image token, image suffix); image token None: no image form
TEMPLATES: dict[str, tuple[str, str, str | None, str]] = {
    "none": ("", "", None, ""),
    "e5v": ("<|start_header_id|>user<|end_header_id|>\n\n", _SENT + _E5V_END, "<image>", _IMAGE + _E5V_END),
    "unime": ("<|user|>\n", _SENT + _UNIME_END, "<|image_1|>", _IMAGE + _UNIME_END),
}


@dataclass(frozen=True)
class Template:
    """An instruction template: ``system_prompt + prefix + task_prompt + text + suffix``.

    ``name``: ``none``, ``e5v``, ``unime`` or a custom string holding ``{text}`` exactly once.
    """

    name: str = "none"
    system_prompt: str = ""
    task_prompt: str = ""

    def __post_init__(self) -> None:
        for key in ("name", "system_prompt", "task_prompt"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"template {key} must be a string, got {getattr(self, key)!r}")
        if self.name not in TEMPLATES and self.name.count("{text}") != 1:
            raise ConfigError(
                f"template must be one of {sorted(TEMPLATES)} or a string holding '{{text}}' once, "
                f"got {self.name!r}"
            )

    @property
    def parts(self) -> tuple[str, str, str | None, str]:
        if self.name in TEMPLATES:
            return TEMPLATES[self.name]
        prefix, suffix = self.name.split("{text}")
        return prefix, suffix, None, ""

    @property
    def head(self) -> str:
        """Everything before the content."""
        return self.system_prompt + self.parts[0] + self.task_prompt

    def render(self, text: str) -> str:
        if not isinstance(text, str):
            raise InputError(f"a caption must be a string, got {type(text).__name__}")
        return self.head + text + self.parts[1]

    def render_image(self) -> str:
        """The image form (E5-V / UniME): an error for a template with no image placeholder."""
        _, _, token, suffix = self.parts
        if token is None:
            raise InputError(f"template {self.name!r} has no image placeholder: it cannot embed an image")
        return self.head + token + suffix


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """VLM2Vec's last-token pooling of ``hidden [B, L, H]`` under ``mask [B, L]`` (1 = real token):
    position −1 if every row ends with a real token (left padding), else ``mask.sum(1) − 1``."""
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise InputError(
            f"hidden [B, L, H] and mask [B, L] expected, got {tuple(hidden.shape)}, {tuple(mask.shape)}"
        )
    if bool(mask[:, -1].all()):
        return hidden[:, -1]
    last = mask.long().sum(1) - 1
    if bool((last < 0).any()):
        raise InputError("a row of the text batch has no tokens")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class DecoderTextTower(TextTower):
    """A causal LM + tokenizer + template; ``forward(ids) -> [B, hidden]`` last-token embeddings."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        tokenizer,
        template: Template,
        max_length: int,
        padding_side: Literal["left", "right"] = "left",
        pooling: Literal["last", "mean"] = "last",
        normalize: bool = False,
    ) -> None:
        Tower.__init__(self)
        self.encoder, self.tokenizer, self.template = encoder, tokenizer, template
        self.max_length, self.padding_side, self.pooling, self.normalize = (
            max_length,
            padding_side,
            pooling,
            normalize,
        )
        pad = tokenizer.pad_token_id
        self.pad_id = -1 if pad is None else int(pad)  # -1: no pad token; replaced before embedding
        self.output_dim = int(encoder.config.hidden_size)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(self.template.render(text), add_special_tokens=True)["input_ids"])

    def _cut(self, text: str, full: list[int]) -> list[int]:
        """Token ids of ``text`` rendered with its content cut until the whole fits max_length."""
        over = len(full) - self.max_length
        if self.tokenizer.is_fast:  # cut at token boundaries of the content (character offsets)
            spans = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ends = [int(e) for _, e in spans["offset_mapping"]]
        else:  # slow tokenizers have no offsets: cut at word boundaries
            ends = [m.end() for m in re.finditer(r"\S+", text)]
        keep = len(ends) - over
        while keep > 0:  # BPE merges at the cut may change the count by a token or so: re-check
            ids = self._ids(text[: ends[keep - 1]])
            if len(ids) <= self.max_length:
                return ids
            keep -= 1
        ids = self._ids("")
        if len(ids) > self.max_length:
            raise InputError(
                f"the template alone is {len(ids)} tokens, more than max_length={self.max_length}: "
                "raise max_length or shorten the template/prompts"
            )
        return ids

    def token_rows(self, texts: list[str]) -> list[list[int]]:
        """Unpadded token ids per text (rendered, content-truncated to ``max_length``)."""
        if isinstance(texts, str):
            raise InputError("tokenize expects a list of strings, got a single string")
        if len(texts) == 0:
            raise InputError("cannot tokenize an empty list of texts")
        rendered = [self.template.render(t) for t in texts]
        rows = [list(r) for r in self.tokenizer(rendered, add_special_tokens=True)["input_ids"]]
        return [r if len(r) <= self.max_length else self._cut(t, r) for t, r in zip(texts, rows)]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        rows = self.token_rows(texts)
        empty = [t for t, r in zip(texts, rows) if not r]
        if empty:
            raise InputError(f"text {empty[0]!r} renders to no tokens (an empty caption and template)")
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            start = width - len(r) if self.padding_side == "left" else 0
            out[i, start : start + len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def count_truncated(self, texts: list[str]) -> int:
        rendered = [self.template.render(t) for t in texts]
        ids = self.tokenizer(rendered, add_special_tokens=True)["input_ids"]
        return sum(len(r) > self.max_length for r in ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise InputError(
                f"text input must be LongTensor [B, L] of token ids, got {ids.dtype} {tuple(ids.shape)}"
            )
        if ids.shape[0] == 0:
            raise InputError("empty text batch")
        mask = ids != self.pad_id
        # positions count real tokens only: a left-padded row gets the positions of its right-padded twin
        position = (mask.long().cumsum(1) - 1).clamp_min(0)
        hidden = self.encoder(
            input_ids=ids.masked_fill(~mask, 0), attention_mask=mask.long(), position_ids=position
        ).last_hidden_state
        if self.pooling == "last":
            pooled = last_token_pool(hidden, mask)
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))


def _random_init(arch: str, tokenizer, sizes: dict[str, int], dropout: float) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    hidden, layers, heads, inter, length = (
        sizes[k] for k in ("hidden", "layers", "heads", "inter", "length")
    )
    special = {
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=inter,
            n_positions=length,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            **special,
        )
        return GPT2Model(cfg)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=length,
        attention_dropout=dropout,
        **special,
    )
    return LlamaModel(cfg)


def _captions(texts: Sequence[str], template: Template) -> list[str]:
    # the template's words are in every rendered caption, so the vocabulary always holds them
    return [template.render(t) for t in texts]


@TOWERS.register("decoder_llm")
def decoder_llm_tower(
    arch: Literal["gpt2", "llama"] = "gpt2",
    path: str | None = None,
    hidden_size: PositiveInt = 128,
    layers: PositiveInt = 2,
    heads: PositiveInt = 2,
    intermediate_size: PositiveInt = 256,
    max_length: PositiveInt = 32,
    vocab_size: PositiveInt = 1000,
    dropout: Fraction = 0.0,
    template: str = "none",
    system_prompt: str = "",
    task_prompt: str = "",
    padding_side: Literal["left", "right"] = "left",
    pooling: Literal["last", "mean"] = "last",
    normalize: bool = False,
    context: TowerContext | None = None,
) -> DecoderTextTower:
    """A causal LM text tower (M-LLM-EMBED): last-token embedding of the caption in an instruction
    ``template`` (``none``, ``e5v``, ``unime`` or a string with ``{text}``) with optional
    ``system_prompt`` / ``task_prompt``. ``arch`` + sizes: random init with a word tokenizer built
    from the rendered captions; ``path``: a local transformers folder (its model and tokenizer; the
    size parameters are then unused; may be ``pip:<module>/<folder>``)."""
    tmpl = Template(template, system_prompt, task_prompt)
    context = context or TowerContext()
    saved = None if context.assets_dir is None else context.assets_dir / "tokenizer"
    if path is not None:
        from transformers import AutoModel

        folder = resolve_path(path)
        if not (folder / "config.json").is_file():
            raise MissingFileError(f"tower 'decoder_llm': no transformers model (config.json) in {folder}")
        tokenizer = load_tokenizer(saved if saved is not None and saved.is_dir() else folder)
        encoder = AutoModel.from_pretrained(str(folder), local_files_only=True)
    else:
        if hidden_size % heads:
            raise ConfigError(
                f"tower 'decoder_llm': parameter hidden_size={hidden_size} "
                f"must be a multiple of heads={heads}"
            )
        if saved is not None:
            tokenizer = load_tokenizer(saved)
        elif context.texts is not None:
            tokenizer = train_word_tokenizer(_captions(context.texts, tmpl), vocab_size)
        else:
            raise InputError(
                "decoder_llm tower needs training texts (fresh run) or an assets folder (saved run)"
            )
        sizes = {"hidden": hidden_size, "layers": layers, "heads": heads, "inter": intermediate_size}
        encoder = _random_init(arch, tokenizer, {**sizes, "length": max_length}, dropout)
    return DecoderTextTower(encoder, tokenizer, tmpl, max_length, padding_side, pooling, normalize)
