"""CLIPPO: captions rendered by the reference's layout rules and encoded by the one image tower."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.data import make_shapes
from contrastkit.models import ModelConfig, TowerConfig, build_model, load
from contrastkit.models.clippo import FONT_DIRS, TextRenderer, find_font, render_text

try:
    FONT = find_font("DejaVuSans.ttf")
except MissingFileError:  # a machine without fonts-dejavu-core (`make fonts`)
    pytestmark = pytest.mark.skip(reason="DejaVu fonts not installed (make fonts)")
    FONT = None

PROMPTS = ["a red circle", "a large blue square to the left of a small green triangle", ""]


def _renderer(**kw) -> TextRenderer:
    return TextRenderer(FONT, **{"cache": 0, **kw})


def test_lower_casing_space_and_empty_string():
    r = _renderer()
    assert np.array_equal(r.render("I")[0], r.render("i")[0])  # oracle (a)
    assert not np.array_equal(r.render("I")[0], _renderer(lower=False).render("I")[0])
    for text in (" ", ""):  # oracle (b): a blank glyph, and nothing at all, are all background
        image, truncated = r.render(text)
        assert image.shape == (64, 64) and image.dtype == np.uint8
        assert (image == 127).all() and not truncated
    assert r.glyph(" ").shape[1] == r.min_width and not r.glyph(" ").any()


def test_glyph_crop_follows_the_spacing_rule():
    r = _renderer(font_size=16, spacing=1, min_width=4)
    # [max(a - spacing, 0), max(b + spacing, first + min_width)): one blank column before the ink,
    # none after it; a narrow glyph is widened to min_width
    g = r.glyph("m")
    ink = np.flatnonzero(g.any(axis=0))
    assert g.shape[1] > 4 and ink[0] == 1 and ink[-1] == g.shape[1] - 1
    dot = r.glyph(".")
    assert dot.shape[1] == 4 and np.flatnonzero(dot.any(axis=0))[0] == 1
    assert r.cell_height == sum(r._font.getmetrics())


def test_long_text_wraps_inside_the_width_and_is_cut_at_the_last_line():
    """Oracle (c): 200 × "m" — line L holds the glyphs with floor(c_k / D) = L, every line's ink
    ends inside the image, the line count is min(max_lines, floor(Σw / D) + 1), truncated."""
    r = _renderer()
    image, truncated = r.render("m" * 200)
    w = r.glyph("m").shape[1]
    room = r.size - w
    h = r.cell_height
    assert truncated and 200 * w // room + 1 > r.max_lines
    c = (np.arange(200) + 1) * w
    for line in range(r.max_lines):
        count = int(((c // room) == line).sum())
        band = image[line * h : (line + 1) * h] == 0
        assert band.any() and np.flatnonzero(band.any(axis=0))[-1] == count * w - 1 < r.size
    assert (image[r.max_lines * h :] == 127).all()  # below the last line: background
    short, cut = r.render("m" * 20)
    lines = sum((short[i * h : (i + 1) * h] == 0).any() for i in range(r.max_lines))
    assert not cut and lines == min(r.max_lines, 20 * w // room + 1)
    assert r.render("a" * 769)[1] and not r.render("a" * 3)[1]  # max_chars counts as truncation


def test_pixels_are_black_on_grey_and_rendering_is_deterministic():
    text = "a small red circle on the left"
    image, _ = _renderer().render(text)
    assert set(np.unique(image).tolist()) == {0, 127}  # oracle (d): binary glyphs
    soft, _ = _renderer(antialias=True).render(text)
    assert soft.min() == 0 and soft.max() == 127 and len(np.unique(soft)) > 2
    again = pickle.loads(pickle.dumps(_renderer()))  # loader workers get a pickled copy
    assert np.array_equal(again.render(text)[0], image)
    rgb = render_text(text)
    assert rgb.shape == (3, 64, 64) and all(np.array_equal(rgb[i], image) for i in range(3))


def test_caption_cache_is_bounded_and_returns_the_same_pixels():
    r = TextRenderer(FONT, cache=2)
    first = r.render("a red circle")[0]
    assert r.render("a red circle")[0] is first  # a dictionary look-up the second time
    r.render("b")
    r.render("c")
    assert len(r._renders) == 2 and "a red circle" not in r._renders
    assert np.array_equal(r.render("a red circle")[0], first)


def test_bad_sizes_and_missing_fonts_are_one_line_errors():
    with pytest.raises(InputError, match="too wide"):
        _renderer(size=32, min_width=40).render("a b")  # a 40-px blank glyph in 32-px images
    with pytest.raises(ConfigError, match="px tall"):
        _renderer(size=8, font_size=16)
    with pytest.raises(MissingFileError, match="fonts-dejavu-core"):
        find_font("NoSuchFont.ttf")
    assert FONT is not None and any(str(FONT).startswith(str(d)) for d in FONT_DIRS)


GN_RESNET = {"layers": [1, 1, 1, 1], "channels": [32, 32, 64, 64], "norm_layer": "groupnorm"}


def _clippo_cfg(kwargs: dict = GN_RESNET) -> ModelConfig:
    image = TowerConfig("timm", {"arch": "resnet18", "kwargs": kwargs})
    towers = {"image": image, "text": TowerConfig("rendered_text", {"size": 64})}
    return dataclasses.replace(ModelConfig.tiny(), towers=towers)


def test_a_batch_norm_tower_is_warned_about():
    with pytest.warns(UserWarning, match="batch norm"):
        build_model(_clippo_cfg({**GN_RESNET, "norm_layer": "batchnorm"}))


def test_one_tower_encodes_both_and_holds_each_weight_once():
    """Oracle (e): the same module instance encodes photos and rendered captions; parameters =
    image tower + one projection; the state dict has no text entries."""
    torch.manual_seed(0)
    model = build_model(_clippo_cfg()).eval()
    image_tower = model.towers["image"]
    assert model.towers["text"].shared is image_tower and model.shares == {"text": "image"}
    assert list(model.projections) == ["image"]
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(p.numel() for p in image_tower.parameters()) + model.projections["image"].weight.numel()
    assert not [k for k in model.state_dict() if "text" in k]
    calls = []
    image_tower.register_forward_hook(lambda mod, inp, out: calls.append(id(mod)))
    ids = model.tokenize(PROMPTS)
    assert ids.dtype == torch.uint8 and ids.shape == (3, 3, 64, 64)
    with torch.no_grad():
        text = model.encode("text", ids)
        images = model.encode("image", make_shapes("test", n=2).images)
        assert torch.equal(text, model.projections["image"](image_tower(ids)))
    assert len(calls) == 3 and set(calls) == {id(image_tower)}
    assert text.shape == (3, 32) and images.shape == (2, 32)
    assert model.count_truncated(["m" * 200, "a red circle"]) == 1


def test_text_gradients_reach_the_shared_tower_and_bad_sharing_is_refused():
    model = build_model(_clippo_cfg()).train()
    model.encode("text", model.tokenize(PROMPTS[:2])).sum().backward()
    assert model.towers["image"].backbone.conv1.weight.grad.abs().sum() > 0
    cfg = _clippo_cfg()
    bad = dataclasses.replace(
        cfg, towers={**cfg.towers, "text": TowerConfig("rendered_text", {"shares": "audio"})}
    )
    with pytest.raises(ConfigError, match="shares modality 'audio'"):
        build_model(bad)
    from contrastkit.models.momentum import MomentumConfig

    with pytest.raises(InputError, match="share another tower"):
        build_model(dataclasses.replace(cfg, momentum=MomentumConfig(modalities=("text",))))


def test_trains_from_a_config_and_exports_to_safetensors(tmp_path):
    """A tiny CLIPPO run through the real trainer; ``export --format safetensors`` + ``load``
    rebuild it (font copied into the assets) with equal embeddings."""
    from contrastkit.cli import main
    from contrastkit.train import RunConfig, load_run, train

    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    cfg = dataclasses.replace(
        base, model=_clippo_cfg(), train=dataclasses.replace(base.train, steps=4, ckpt_every=4)
    )
    run = train(cfg).run_dir
    assert (run / "assets" / "text" / "font" / "DejaVuSans.ttf").is_file()
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
    _, trained, _, _ = load_run(run)
    rebuilt = load(tmp_path / "st")
    assert rebuilt.towers["text"].renderer.font_path.parent == tmp_path / "st" / "assets" / "text" / "font"
    images = make_shapes("test", n=4).images
    with torch.no_grad():
        assert torch.equal(rebuilt.encode("image", images), trained.encode("image", images))
        assert torch.equal(
            rebuilt.encode("text", rebuilt.tokenize(PROMPTS)),
            trained.encode("text", trained.tokenize(PROMPTS)),
        )
    moved = trained.towers["image"].backbone.conv1.weight
    assert not torch.equal(moved, build_model(cfg.model).towers["image"].backbone.conv1.weight)


def test_a_fixed_size_vit_needs_the_render_size_to_match():
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 1}
    vit = TowerConfig("timm", {"arch": "vit_tiny_patch16_224", "kwargs": kwargs})
    cfg = dataclasses.replace(
        ModelConfig.tiny(), towers={"image": vit, "text": TowerConfig("rendered_text", {})}
    )
    with pytest.raises(ConfigError, match="fixed input"):
        build_model(cfg)
    text = TowerConfig("rendered_text", {"size": 32, "font_size": 6})
    model = build_model(dataclasses.replace(cfg, towers={"image": vit, "text": text}))
    assert model.encode("text", model.tokenize(["a red circle"])).shape == (1, 32)
