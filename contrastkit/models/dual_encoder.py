"""The multi-tower encoder: one tower + projection per named modality.

``DualEncoder`` is the CLIP/SigLIP dual encoder, written for M ≥ 2 named modalities (``image``,
``text``, ``attributes``…) so that multi-modal objectives use the same model. It returns raw
projected embeddings; losses and evaluation L2-normalise them (the loss flag ``normalize``).

Keys (docs/architecture.md): a batch key is a modality (``"image"``) or a view of one
(``"image@1"``, encoded by the ``image`` tower); the model returns an embedding for every key it
can encode and, with ``momentum``, the momentum encoder's output of each key of a momentum
modality under ``"<key>:ema"`` (``"image@1:ema"``, computed without gradient).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.hf_dual import hf_dual_embed_dim, hf_dual_logit_scale
from contrastkit.models.momentum import MomentumConfig, MomentumEncoder
from contrastkit.models.openclip_dual import open_clip_config, open_clip_logit_scale, parse_open_clip
from contrastkit.models.prompts import PromptConfig, PromptContext
from contrastkit.models.towers import TOWERS, TextTower, Tower, TowerContext

__all__ = [
    "EMA_SUFFIX",
    "DualEncoder",
    "ModelConfig",
    "TowerConfig",
    "build_model",
    "lock_parameters",
    "pretrained_logit_scale",
    "split_key",
]

EMA_SUFFIX = ":ema"


def split_key(key: str) -> tuple[str, int | None, bool]:
    """``"image@1:ema"`` → ``("image", 1, True)``; ``"text"`` → ``("text", None, False)``.
    Raises :class:`InputError` for a malformed view index."""
    ema = key.endswith(EMA_SUFFIX)
    base = key[: -len(EMA_SUFFIX)] if ema else key
    modality, sep, view = base.partition("@")
    if not sep:
        return modality, None, ema
    if not view.isdigit():
        raise InputError(f"bad embedding key {key!r}: a view is '<modality>@<int>', e.g. 'image@1'")
    return modality, int(view), ema


@dataclass(frozen=True)
class TowerConfig:
    """A tower by registry name (``timm``, ``hf_text``, ``hf_pretrained``) and its parameters.

    ``locked``: freeze the tower (no gradients, kept in eval mode) — LiT-style locked towers.
    ``prompt``: learnable context vectors before every text's tokens (CoOp, text towers with token
    embeddings; :mod:`contrastkit.models.prompts`); they stay trainable when the tower is locked.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    locked: bool = False
    prompt: PromptConfig | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Towers by modality, projection heads to ``embed_dim``, optional momentum encoder.

    ``lock``: freeze named parameter groups — ``fnmatch`` patterns over the model's parameter
    names (``"towers.text.encoder.embeddings.*"``, ``"projections.image.*"``); each pattern must
    match at least one parameter. Whole towers lock with ``TowerConfig.locked`` (also eval mode).
    ``teacher``: a contrastkit run folder whose frozen model embeds every training batch for a
    distillation loss (``loss: distill``, :mod:`contrastkit.train.distill`); not part of this model.
    ``previous``: a contrastkit run folder, the frozen earlier model whose embeddings of every training
    batch are Sy-CON's past embeddings (``loss: sycon``, :mod:`contrastkit.train.previous`); not part
    of this model either.
    """

    towers: dict[str, TowerConfig] = field(
        default_factory=lambda: {
            "image": TowerConfig(
                "timm",
                {
                    "arch": "resnet18",
                    "kwargs": {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], "stem_width": 32},
                },
            ),
            "text": TowerConfig(
                "hf_text",
                {
                    "hidden_size": 128,
                    "layers": 2,
                    "heads": 2,
                    "intermediate_size": 256,
                    "max_length": 32,
                    "vocab_size": 1000,
                    "dropout": 0.0,
                    "pooling": "mean",
                },
            ),
        }
    )
    embed_dim: int = 128
    projection: Literal["linear", "mlp", "none"] = "linear"
    momentum: MomentumConfig | None = None
    lock: tuple[str, ...] = ()
    from_: str | None = field(default=None, metadata={"key": "from"})
    teacher: str | None = None
    previous: str | None = None

    def __post_init__(self) -> None:
        if self.from_ is not None:
            self._from_pretrained(self.from_)
        if not self.towers:  # one tower: a Siamese encoder of two views, e.g. text and text@1 (pairs)
            raise ConfigError("model.towers is empty: name at least one modality's tower")
        if self.embed_dim < 1:
            raise ConfigError(f"model.embed_dim must be >= 1, got {self.embed_dim}")
        bad = [m for m in self.towers if "@" in m or ":" in m]
        if bad:
            raise ConfigError(f"model.towers names may not contain '@' or ':' (key syntax), got {bad}")
        if self.momentum is not None:
            missing = [m for m in self.momentum.modalities if m not in self.towers]
            if missing:
                raise ConfigError(
                    f"model.momentum.modalities {missing} have no tower; towers: {list(self.towers)}"
                )

    def _from_pretrained(self, spec: str) -> None:
        """``model.from``: both towers of a pretrained image–text model with its own projections
        (``projection: none``, ``embed_dim`` = its embedding size). ``hf:DIR`` is a local transformers
        CLIPModel/SiglipModel folder; ``open_clip:NAME:CHECKPOINT`` an open_clip architecture and a
        local checkpoint file, ``open_clip:DIR`` an open_clip folder. Checked here, so a bad source is
        a one-line error before any data is read. Already-derived towers are kept as they are."""
        kind, _, rest = spec.partition(":")
        if kind == "hf" and rest:
            towers = {
                "image": TowerConfig("hf_dual_image", {"path": rest}),
                "text": TowerConfig("hf_dual_text", {"path": rest}),
            }
        elif kind == "open_clip" and rest:
            name, checkpoint = parse_open_clip(rest)
            params = {"source": name, "checkpoint": checkpoint} if checkpoint else {"source": name}
            towers = {
                "image": TowerConfig("open_clip_image", dict(params)),
                "text": TowerConfig("open_clip_text", dict(params)),
            }
        else:
            raise ConfigError(
                "model.from must be hf:DIR (a local transformers CLIPModel/SiglipModel folder), "
                f"open_clip:NAME:CHECKPOINT or open_clip:DIR, got {spec!r}"
            )
        same = {m: (t.name, t.params) for m, t in self.towers.items()}
        if same == {m: (t.name, t.params) for m, t in towers.items()}:
            return  # a saved run's config: towers were derived when it started
        if kind == "hf":
            dim = hf_dual_embed_dim(rest)
        else:
            dim = int(open_clip_config(*parse_open_clip(rest))["model_cfg"]["embed_dim"])
        own = {m: self.towers[m] for m in towers if m in self.towers}  # keep locked / prompt choices
        towers = {
            m: dataclasses.replace(t, locked=own[m].locked, prompt=own[m].prompt) if m in own else t
            for m, t in towers.items()
        }
        object.__setattr__(self, "towers", towers)
        object.__setattr__(self, "embed_dim", dim)
        object.__setattr__(self, "projection", "none")

    @classmethod
    def tiny(cls) -> ModelConfig:
        """A ~0.2M-parameter model for tests (seconds per hundred steps)."""
        return cls(
            towers={
                "image": TowerConfig(
                    "timm",
                    {
                        "arch": "resnet18",
                        "kwargs": {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 64], "stem_width": 16},
                    },
                ),
                "text": TowerConfig(
                    "hf_text", {"hidden_size": 64, "layers": 1, "heads": 2, "intermediate_size": 128}
                ),
            },
            embed_dim=32,
        )


def pretrained_logit_scale(spec: str) -> tuple[float, float | None]:
    """``exp(logit_scale)`` and (SigLIP-style) ``logit_bias`` of a ``model.from`` source."""
    kind, _, rest = spec.partition(":")
    if kind == "hf":
        return hf_dual_logit_scale(rest)
    if kind == "open_clip":
        return open_clip_logit_scale(rest)
    raise ConfigError(f"model.from {spec!r}: expected hf:DIR or open_clip:...")


def _projection(kind: str, d_in: int, d_out: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d_in, d_out, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out, bias=False))
    if d_in != d_out:
        raise InputError(f"projection 'none' needs tower dim {d_in} == embed_dim {d_out}")
    return nn.Identity()


def _bind_shared(towers: Mapping[str, Tower]) -> dict[str, str]:
    """``{modality: target}`` of the towers that set ``shares`` (no weights of their own: they encode
    through the tower and projection of modality ``target``, e.g. CLIPPO's rendered text through the
    image tower), each bound to its target's tower."""
    shares = {m: str(t.shares) for m, t in towers.items() if getattr(t, "shares", None) is not None}
    for m, target in shares.items():
        if target not in towers or target in shares:
            raise ConfigError(
                f"tower {m!r} shares modality {target!r}, which must be another modality with its own "
                f"tower; towers: {list(towers)}"
            )
        towers[m].bind(towers[target])  # type: ignore[operator]
    return shares


class DualEncoder(nn.Module):
    """Towers + projections keyed by modality, optionally with a momentum (EMA) copy of some.

    ``forward(batch)`` takes ``{key: tensor}`` and returns ``{key: [B, embed_dim]}`` (unnormalised)
    for every key it can encode — a modality it has a tower for, or a view ``"<modality>@<v>"`` of
    one — plus ``"<key>:ema"`` (no gradient) for each such key of a ``momentum`` modality. Other
    batch fields (``labels``…) are ignored. After every optimizer step the trainer calls
    :meth:`after_optimizer_step`, which moves the momentum encoder. ``runners[modality]``, when
    set, is called by :meth:`encode` in place of ``projection(tower(x))``: the trainer puts its
    DDP wrappers of the two there for the duration of a step (:mod:`contrastkit.train.dist_towers`).
    A tower that sets ``shares`` (``rendered_text``) has no projection: its modality is encoded by
    its own input path into the ``shares`` modality's tower and projection (:attr:`shares`).
    """

    def __init__(
        self,
        towers: Mapping[str, Tower],
        embed_dim: int,
        projection: str = "linear",
        locked: Sequence[str] = (),
        momentum: MomentumConfig | None = None,
    ) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(dict(towers))
        self.shares = _bind_shared(towers)
        self.projections = nn.ModuleDict(
            {
                m: _projection(projection, t.output_dim, embed_dim)
                for m, t in towers.items()
                if m not in self.shares  # a sharing modality uses its target's projection
            }
        )
        self.embed_dim = embed_dim
        # modality -> what encode() calls instead of projection(tower(x)), e.g. a
        # DistributedDataParallel wrapper of both (train.dist_wrapper); a plain dict, so whatever
        # it holds stays out of the module tree and the state dict
        self.runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.locked = tuple(locked)
        for m in self.locked:
            self.towers[m].requires_grad_(False)
        # modality -> learnable prompt context of its text tower (CoOp); outside the towers, so a
        # locked tower's context still trains (build_model adds them)
        self.prompts = nn.ModuleDict()
        self.momentum: MomentumEncoder | None = None
        if momentum is not None:
            missing = [m for m in momentum.modalities if m not in self.towers]
            if missing:
                raise InputError(f"momentum modalities {missing} have no tower; towers: {list(self.towers)}")
            shared = [m for m in momentum.modalities if m in self.shares]
            if shared:
                raise InputError(f"momentum modalities {shared} share another tower; name that one")
            online = self._online(momentum.modalities)
            self.momentum = MomentumEncoder(online, momentum.m, momentum.schedule, momentum.start)

    def _online(self, modalities: Sequence[str]) -> dict[str, nn.Module]:
        """Tower → projection of each modality, as the modules the momentum encoder follows."""
        return {m: nn.Sequential(self.towers[m], self.projections[m]) for m in modalities}

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.towers.keys())

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        for m in self.locked:  # locked towers stay in eval mode (batch-norm stats, dropout)
            self.towers[m].eval()
        return self

    def can_encode(self, key: str) -> bool:
        """Whether ``key`` names a modality (or a view of one) this model has a tower for."""
        try:
            modality, _, ema = split_key(key)
        except InputError:
            return False
        if ema:
            return self.momentum is not None and modality in self.momentum.modalities
        return modality in self.towers

    def encode(self, key: str, inputs: torch.Tensor) -> torch.Tensor:
        """Embed ``inputs`` of ``key``: ``"image"`` and ``"image@1"`` use the image tower,
        ``"image:ema"`` / ``"image@1:ema"`` its momentum copy (no gradient)."""
        modality, _, ema = split_key(key)
        if modality not in self.towers:
            raise InputError(f"model has no {modality!r} tower; it has {list(self.modalities)}")
        if ema:
            if self.momentum is None or modality not in self.momentum.modalities:
                have = [] if self.momentum is None else list(self.momentum.modalities)
                raise InputError(
                    f"model has no momentum encoder for {modality!r}; momentum modalities: {have}"
                )
            return self.momentum(modality, inputs)
        prompt = self.prompts[modality] if modality in self.prompts else None
        with nullcontext() if prompt is None else prompt.applied(self.towers[modality]):  # type: ignore[operator]
            run = self.runners.get(modality)
            if run is not None:  # the same tower and projection, through a wrapper (e.g. DDP)
                return run(inputs)
            return self.projections[self.shares.get(modality, modality)](self.towers[modality](inputs))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys = [k for k in batch if self.can_encode(k) and not k.endswith(EMA_SUFFIX)]
        if not keys:
            raise InputError(
                f"batch has none of the model's modalities {list(self.modalities)}: {list(batch)}"
            )
        out = {k: self.encode(k, batch[k]) for k in keys}
        if self.momentum is not None:
            for k in keys:
                if split_key(k)[0] in self.momentum.modalities:
                    out[k + EMA_SUFFIX] = self.encode(k + EMA_SUFFIX, batch[k])
        return out

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called by the trainer after optimizer step ``step`` (0-based) of ``total_steps``:
        moves the momentum encoder (if any) toward the online towers."""
        if self.momentum is not None:
            self.momentum.step(self._online(self.momentum.modalities), step, total_steps)

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging (the momentum in use)."""
        return {} if self.momentum is None else {"momentum": self.momentum.last_m}

    def text_tower(self) -> TextTower:
        for tower in self.towers.values():
            if isinstance(tower, TextTower):
                return tower
        raise InputError("model has no text tower")

    def _prompt_of(self, tower: nn.Module) -> PromptContext | None:
        """The prompt context of ``tower`` (a text tower of this model), if it has one."""
        for m, t in self.towers.items():
            if t is tower and m in self.prompts:
                return self.prompts[m]  # type: ignore[return-value]
        return None

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        tower = self.text_tower()
        prompt = self._prompt_of(tower)
        return tower.tokenize(texts) if prompt is None else prompt.tokenize(tower, texts)

    def count_truncated(self, texts: list[str]) -> int:
        """How many ``texts`` exceed the text tower's context (and are truncated by ``tokenize``)."""
        tower = self.text_tower()
        prompt = self._prompt_of(tower)
        return tower.count_truncated(texts) if prompt is None else prompt.count_truncated(tower, texts)

    def save_assets(self, folder: Path) -> None:
        for m, tower in self.towers.items():
            tower.save_assets(Path(folder) / m)


def build_model(
    cfg: ModelConfig,
    texts: Sequence[str] | None = None,
    assets_dir: Path | None = None,
    images: torch.Tensor | None = None,
) -> DualEncoder:
    """Build the model of ``cfg``. Fresh: pass training ``texts`` (tokenizers are trained on them)
    and, if held in memory, training ``images`` (towers that fit on them). Rebuilding a saved run:
    pass its ``assets_dir`` instead. Towers are built in config order; each sees the ones before
    it (a tower sharing another's weights, ``TowerContext.towers``)."""
    towers: dict[str, Tower] = {}
    for modality, tcfg in cfg.towers.items():
        ctx = TowerContext(
            texts=texts,
            assets_dir=None if assets_dir is None else Path(assets_dir) / modality,
            images=images if assets_dir is None else None,
            towers=dict(towers),
        )
        towers[modality] = TOWERS.build(tcfg.name, context=ctx, **tcfg.params)
    followed = cfg.momentum.modalities if cfg.momentum else ()
    shared = [m for m in followed if getattr(towers[m], "runs_weights_of", None)]
    if shared:  # the EMA copy of a view would copy the owner's body once more and never move it
        raise ConfigError(f"model.momentum cannot follow towers that share another's weights: {shared}")
    token_sets = [m for m, t in towers.items() if getattr(t, "token_set", False)]
    if token_sets and cfg.projection == "mlp":  # its biases would make the zero padding rows non-zero
        raise ConfigError(
            f"towers {token_sets} return token sets (padding rows are zero): use model.projection "
            "linear (bias-free, per token) or none, not mlp"
        )
    locked = [m for m, t in cfg.towers.items() if t.locked]
    # a tower may need a model around it that wires it to another tower (split_text: the image)
    classes = {getattr(t, "model_class", DualEncoder) for t in towers.values()} - {DualEncoder}
    if len(classes) > 1:
        raise ConfigError(f"towers ask for different model classes {sorted(c.__name__ for c in classes)}")
    model_class = classes.pop() if classes else DualEncoder
    model = model_class(towers, cfg.embed_dim, cfg.projection, locked, cfg.momentum)
    for m, tcfg in cfg.towers.items():
        if tcfg.prompt is not None:
            if m in followed:  # the EMA copy would encode the placeholder ids, not the context
                raise ConfigError(f"model.towers.{m}.prompt cannot be combined with model.momentum of {m!r}")
            model.prompts[m] = PromptContext(towers[m], tcfg.prompt, f"model.towers.{m}.prompt")  # type: ignore[arg-type]
    lock_parameters(model, cfg.lock)
    return model


def lock_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter whose name matches one of ``patterns``
    (``fnmatch``); returns the locked names. A pattern matching nothing is a :class:`ConfigError`."""
    names = [n for n, _ in model.named_parameters()]
    locked: list[str] = []
    for pat in patterns:
        hits = fnmatch.filter(names, pat)
        if not hits:
            raise ConfigError(f"model.lock pattern {pat!r} matches no parameter; e.g. {names[:3]}")
        locked += hits
    params = dict(model.named_parameters())
    for n in locked:
        params[n].requires_grad_(False)
    return sorted(set(locked))
