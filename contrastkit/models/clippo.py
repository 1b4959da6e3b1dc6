"""CLIPPO (spec M-CLIPPO): captions rendered to images and encoded by the image tower itself.

Tschannen, Mustafa, Houlsby 2022/23, "Image-and-Language Understanding from Pixels Only". One
image tower (and one projection) encodes both the photos and the captions drawn as pictures of
text; zero-shot classification renders the class prompts the same way. There are no text
weights: the ``rendered_text`` tower's :meth:`~RenderedTextTower.tokenize` draws the captions
(``uint8 [B, 3, S, S]``) and its forward runs the tower of modality ``shares`` (default
``image``), which :class:`~contrastkit.models.dual_encoder.DualEncoder` binds; the model then
uses that modality's projection for both. Parameters = image tower + one projection (+ the
loss's logit scale); the state dict holds each weight once (``towers.image.*``,
``projections.image.*``), so checkpoints and ``export --format safetensors`` need nothing special.

Rendering (:class:`TextRenderer`) — the reference's rules (big_vision ``render_unifont``) with a
TrueType font (default DejaVu Sans, Debian's ``fonts-dejavu-core``) drawn by Pillow instead of
GNU Unifont bitmaps:

1. lower-case (``lower``), keep the first ``max_chars`` code points;
2. each character is drawn alone into a cell ``ascent + descent`` pixels tall (binary ink with
   ``antialias: false``, coverage in [0, 1] otherwise); with ``a``/``b`` its first/last inked
   column, keep columns ``[first, last)``, ``first = max(a − spacing, 0)``,
   ``last = max(b + spacing, first + min_width)``; a glyph without ink (space) is ``min_width``
   blank columns (reference: ``spacing`` 1, ``min_width`` 4 at 16 px; defaults here 1 and 2 at 8 px);
3. character-level wrapping (words may split): glyph widths ``w_k``, inclusive cumulative sums
   ``c_k``, ``D = S − max_k w_k``; glyph ``k`` goes to line ``floor(c_k / D)``, so every line is
   narrower than ``S``; lines stack top-down without gaps; lines past ``S // cell_height`` are cut
   and the render reports ``truncated``;
4. pixel = ``round(127 − 127·ink)`` (black text on mid-grey 127), grey → 3 equal channels; the
   image tower normalises it exactly like a photo.

The shared tower should not use batch norm: its running statistics average the photo and the
rendered-text batches, and evaluation, which normalises with them, fell to chance on Shapes (a
GroupNorm ResNet trains fine; binding warns). An empty string is an all-background image.

Exactness: the same string gives the same bytes (glyphs and whole captions are cached per string;
Pillow is pinned, its wheel bundles FreeType);
a saved run keeps a copy of its font file in its assets and renders with that copy. Characters
the font lacks draw its replacement glyph (the reference draws nothing). Spec departures: a
TrueType font instead of Unifont, render size and font size configurable (Shapes photos are 32 px;
the default ``size`` 64 fits the longest Shapes caption at 8 px), no text/text co-training pairs.
Related: :mod:`contrastkit.models.towers` (the image towers it shares).
"""

from __future__ import annotations

import shutil
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from annotated_types import Ge, Le
from torch import nn

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.core.registry import NonNegInt, PositiveInt
from contrastkit.models.towers import TOWERS, TextTower, Tower, TowerContext

__all__ = ["FONT_DIRS", "RenderedTextTower", "TextRenderer", "find_font", "render_text"]

FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts"),
    Path("/usr/local/share/fonts"),
    Path.home() / ".fonts",
)
BACKGROUND, INK = 127, 0  # the reference's background and text brightness


def find_font(font: str) -> Path:
    """The font file ``font``: a path, or a file name searched in :data:`FONT_DIRS`."""
    direct = Path(font).expanduser()
    if direct.is_file():
        return direct
    for folder in FONT_DIRS:
        if (folder / font).is_file():
            return folder / font
        if folder.is_dir():
            hits = sorted(folder.rglob(font))
            if hits:
                return hits[0]
    raise MissingFileError(
        f"font {font!r} not found (searched {', '.join(str(d) for d in FONT_DIRS)}); DejaVu comes "
        "with Debian's fonts-dejavu-core (`make fonts`, or apt-get install fonts-dejavu-core)"
    )


class TextRenderer:
    """Draws strings as ``uint8 [S, S]`` grey images by the rules of the module docstring.

    ``cache``: how many rendered captions to keep (least recently used dropped; 0 = none), so a
    caption seen again (Shapes' captions repeat, zero-shot prompts every evaluation) costs a
    dictionary look-up. Picklable (loader workers): the font is reopened from its path.
    """

    def __init__(
        self,
        font_path: str | Path,
        size: int = 64,
        font_size: int = 8,
        antialias: bool = False,
        lower: bool = True,
        max_chars: int = 768,
        spacing: int = 1,
        min_width: int = 2,
        cache: int = 16384,
    ) -> None:
        self.font_path = Path(font_path)
        self.size, self.font_size, self.antialias, self.lower = size, font_size, antialias, lower
        self.max_chars, self.spacing, self.min_width, self.cache = max_chars, spacing, min_width, cache
        self._open()
        self.max_lines = size // self.cell_height
        if self.max_lines < 1:
            raise ConfigError(
                f"rendered text: a line of font_size {font_size} is {self.cell_height} px tall, more "
                f"than the image size {size}"
            )

    def _open(self) -> None:
        from PIL import ImageFont

        try:
            self._font = ImageFont.truetype(str(self.font_path), self.font_size)
        except OSError as err:
            raise InputError(f"cannot read font {self.font_path}: {err}") from None
        ascent, descent = self._font.getmetrics()
        self.cell_height = int(ascent + descent)
        self._glyphs: dict[str, np.ndarray] = {}
        self._renders: OrderedDict[str, tuple[np.ndarray, bool]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for k in ("_font", "_glyphs", "_renders"):
            state.pop(k)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def glyph(self, ch: str) -> np.ndarray:
        """Ink of one character, ``float32 [cell_height, w]`` in [0, 1], cropped as in rule 2."""
        out = self._glyphs.get(ch)
        if out is None:
            from PIL import Image, ImageDraw

            pad = self.font_size  # room for negative left bearings; the crop removes it
            width = int(np.ceil(self._font.getlength(ch))) + 2 * pad
            canvas = Image.new("L", (width, self.cell_height), 0)
            draw = ImageDraw.Draw(canvas)
            draw.fontmode = "L" if self.antialias else "1"
            draw.text((pad, 0), ch, font=self._font, fill=255)
            ink = np.asarray(canvas, dtype=np.float32) / 255.0
            cols = np.flatnonzero(ink.any(axis=0))
            a, b = (int(cols[0]), int(cols[-1])) if cols.size else (0, 0)
            first = max(a - self.spacing, 0)
            last = max(b + self.spacing, first + self.min_width)
            out = np.zeros((self.cell_height, last - first), np.float32)
            kept = ink[:, first:last]  # a blank glyph's min_width may run past the canvas
            out[:, : kept.shape[1]] = kept
            self._glyphs[ch] = out
        return out

    def render(self, text: str) -> tuple[np.ndarray, bool]:
        """``(uint8 [S, S] grey image, truncated)`` of ``text``; do not modify the array (cached)."""
        if not isinstance(text, str):
            raise InputError(f"rendered text: expected a string, got {type(text).__name__}")
        hit = self._renders.get(text)
        if hit is not None:
            self._renders.move_to_end(text)
            return hit
        out = self._draw(text)
        if self.cache:
            self._renders[text] = out
            if len(self._renders) > self.cache:
                self._renders.popitem(last=False)
        return out

    def _draw(self, text: str) -> tuple[np.ndarray, bool]:
        s = text.lower() if self.lower else text
        truncated = len(s) > self.max_chars
        s = s[: self.max_chars]
        image = np.full((self.size, self.size), BACKGROUND, np.uint8)
        if not s:
            return image, truncated
        glyphs = [self.glyph(c) for c in s]
        widths = np.array([g.shape[1] for g in glyphs], dtype=np.int64)
        room = self.size - int(widths.max())
        if room <= 0:
            raise InputError(
                f"rendered text: a glyph of {text!r} is {int(widths.max())} px wide, too wide for "
                f"{self.size} px images (lower font_size or raise size)"
            )
        lines = np.cumsum(widths) // room  # the reference's wrapping: line of glyph k
        h = self.cell_height
        ink = np.zeros((self.max_lines * h, self.size), np.float32)
        x, current = 0, -1
        for g, line in zip(glyphs, lines.tolist(), strict=True):
            if line >= self.max_lines:
                truncated = True
                break
            if line != current:
                x, current = 0, line
            ink[line * h : (line + 1) * h, x : x + g.shape[1]] = g
            x += g.shape[1]
        pixels = np.rint(BACKGROUND + ink * (INK - BACKGROUND))
        image[: ink.shape[0]] = pixels.astype(np.uint8)
        return image, truncated


def render_text(text: str, font: str = "DejaVuSans.ttf", size: int = 64, font_size: int = 8) -> np.ndarray:
    """``uint8 [3, size, size]``: ``text`` rendered as CLIPPO renders captions (module docstring)."""
    grey, _ = TextRenderer(find_font(font), size, font_size, cache=0).render(text)
    return np.repeat(grey[None], 3, axis=0)


class RenderedTextTower(TextTower):
    """Text as images through another modality's tower (CLIPPO); no weights of its own.

    ``tokenize(texts)`` renders ``uint8 [B, 3, S, S]``; ``forward`` runs the bound tower of
    modality :attr:`shares` (bound by the model: :meth:`bind`), held outside this module's
    children so its weights appear once in the model's parameters and state dict.
    """

    def __init__(self, renderer: TextRenderer, shares: str) -> None:
        Tower.__init__(self)  # a TextTower without an encoder or tokenizer
        self.renderer = renderer
        self.shares = shares
        self.max_length = renderer.max_chars  # what evaluation reports as the text context
        self.pooling = f"rendered, through the {shares} tower"
        self.output_dim = 0  # known once bound
        self._shared: list[Tower] = []  # a list: not registered as a child module

    def bind(self, tower: Tower) -> None:
        """Encode through ``tower`` (the model's ``shares`` tower)."""
        backbone = getattr(tower, "backbone", None)
        fixed = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
        if fixed is not None and not getattr(backbone, "dynamic_img_size", False):
            if tuple(fixed) != (self.renderer.size, self.renderer.size):
                raise ConfigError(
                    f"tower 'rendered_text': size {self.renderer.size} differs from the {self.shares} "
                    f"tower's fixed input {tuple(fixed)}; set params.size to match it"
                )
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in tower.modules()):
            warnings.warn(
                f"rendered_text shares a {self.shares} tower with batch norm: its running statistics "
                "average photos and rendered text, which evaluation uses (measured on Shapes: zero-shot "
                "at chance); use a norm without running statistics, e.g. timm kwargs "
                "norm_layer: groupnorm",
                stacklevel=2,
            )
        self._shared[:] = [tower]
        self.output_dim = int(tower.output_dim)

    @property
    def shared(self) -> Tower:
        """The tower that encodes the rendered text."""
        if not self._shared:
            raise InputError(f"rendered_text tower is not bound to a {self.shares!r} tower yet")
        return self._shared[0]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise InputError("tokenize expects a list of strings, got a single string")
        if len(texts) == 0:
            raise InputError("cannot render an empty list of texts")
        grey = np.stack([self.renderer.render(t)[0] for t in texts])
        return torch.from_numpy(grey).unsqueeze(1).repeat(1, 3, 1, 1)

    def count_truncated(self, texts: list[str]) -> int:
        """How many ``texts`` do not fit in the rendered image (``max_chars`` or the last line)."""
        return sum(self.renderer.render(t)[1] for t in texts)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.shared(images)

    def save_assets(self, folder: Path) -> None:
        """Keep a copy of the font, so the saved model renders the same pixels elsewhere."""
        (Path(folder) / "font").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.renderer.font_path, Path(folder) / "font" / self.renderer.font_path.name)


@TOWERS.register("rendered_text")
def rendered_text_tower(
    shares: str = "image",
    size: Annotated[int, Ge(8), Le(1024)] = 64,
    font: str = "DejaVuSans.ttf",
    font_size: Annotated[int, Ge(4), Le(256)] = 8,
    antialias: bool = False,
    lower: bool = True,
    max_chars: PositiveInt = 768,
    spacing: NonNegInt = 1,
    min_width: PositiveInt = 2,
    cache: NonNegInt = 16384,
    context: TowerContext | None = None,
) -> RenderedTextTower:
    """CLIPPO text: captions rendered to ``size``-pixel images (``font`` at ``font_size``, a file
    name in the system font folders or a path) and encoded by the tower and projection of modality
    ``shares``; ``cache`` rendered captions are kept per process."""
    saved = None if context is None or context.assets_dir is None else context.assets_dir / "font"
    path = saved / Path(font).name if saved is not None and (saved / Path(font).name).is_file() else None
    renderer = TextRenderer(
        path or find_font(font), size, font_size, antialias, lower, max_chars, spacing, min_width, cache
    )
    return RenderedTextTower(renderer, shares)
