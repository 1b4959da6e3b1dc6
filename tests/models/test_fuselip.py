"""FuseLIP (M-FUSELIP): disjoint vocabulary ranges, one EOT per sequence, padding invariance,
masked modelling that never touches special ids, gradient flow, the frozen k-means image
tokenizer, training from a config, export, composed queries."""

import dataclasses

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.shapes import make_shapes
from contrastkit.models import ModelConfig, TowerConfig, build_model
from contrastkit.models.aux import pop_aux_losses
from contrastkit.models.image_codes import KMeansImageTokenizer, fit_codebook, image_patches
from contrastkit.train import RunConfig, read_metrics, train

PARAMS = {
    "width": 32,
    "depth": 2,
    "heads": 2,
    "mlp_ratio": 2.0,
    "patch_size": 8,
    "codebook_size": 32,
    "fit_images": 64,
}
CAPTIONS = ["a red circle", "a large blue star on the left", "a green square above a white ring"]


def _model_config(**params) -> ModelConfig:
    towers = {"image": TowerConfig("fuselip", {**PARAMS, **params}), "text": TowerConfig("fuselip_text", {})}
    return ModelConfig(towers=towers, embed_dim=32, projection="none")


@pytest.fixture(scope="module")
def pairs():
    return make_shapes("train", n=96)


def _model(pairs, **params):
    texts = [c for caps in pairs.captions for c in caps]
    return build_model(_model_config(**params), texts=texts, images=pairs.images)


def test_text_and_image_ids_lie_in_disjoint_ranges(pairs):
    model = _model(pairs)
    tower = model.towers["image"]
    text = model.tokenize(CAPTIONS + [c[0] for c in pairs.captions])
    image = tower.codes(pairs.images) + tower.image_offset
    assert int(text.max()) < tower.text_vocab <= tower.mask_id < tower.eoi_id < tower.image_offset
    assert int(image.min()) >= tower.image_offset and int(image.max()) < tower.embed.num_embeddings
    assert tower.embed.num_embeddings == tower.image_offset + PARAMS["codebook_size"]
    seq = tower.sequence(pairs.images[:3], model.tokenize(CAPTIONS))
    assert set(seq[:, :16].flatten().tolist()) <= set(range(tower.image_offset, tower.embed.num_embeddings))
    assert (seq[:, 16] == tower.eoi_id).all() and (seq[:, 17] == tower.sot_id).all()
    with pytest.raises(InputError, match="text range"):
        tower.encode_text(image[:, :5])


@pytest.mark.parametrize("context_length", [None, 20])
def test_every_sequence_has_exactly_one_eot(pairs, context_length):
    model = _model(pairs, context_length=context_length)
    tower = model.towers["image"]
    ids = model.tokenize(CAPTIONS)
    for seq in (
        tower.sequence(pairs.images[:3]),
        tower.sequence(text=ids),
        tower.sequence(pairs.images[:3], ids),
    ):
        assert ((seq == tower.eot_id).sum(1) == 1).all()
        assert seq.shape[1] <= tower.context_length
    if context_length == 20:  # 17 image ids + the text cut: the last position became EOT
        fused = tower.sequence(pairs.images[:3], ids)
        assert fused.shape[1] == 20 and (fused[1:, -1] == tower.eot_id).all()
    bad = ids.clone()
    bad[:, -1] = tower.eot_id  # a second EOT in the longest rows
    with pytest.raises(InputError, match="exactly one EOT"):
        tower.encode_text(torch.cat([bad, bad], 1))


@pytest.mark.parametrize("mask_pad", [True, False])
def test_trailing_padding_is_invariant_with_mask_pad(pairs, mask_pad):
    model = _model(pairs, mask_pad=mask_pad).eval()
    tower = model.towers["image"]
    ids = model.tokenize(CAPTIONS)
    padded = torch.cat([ids, ids.new_full((len(ids), 7), tower.pad_id)], 1)
    with torch.no_grad():
        for a, b in (
            (tower.encode_text(ids), tower.encode_text(padded)),
            (tower.encode_fused(pairs.images[:3], ids), tower.encode_fused(pairs.images[:3], padded)),
        ):
            assert torch.allclose(a, b, atol=1e-5) == mask_pad  # without the mask, pads are attended


def test_masked_modelling_never_selects_special_ids(pairs):
    model = _model(pairs, mlm_probability=1.0)
    tower = model.towers["image"]
    fused = tower.sequence(pairs.images[:3], model.tokenize(CAPTIONS))  # with PAD, UNK-free words
    image = tower.sequence(pairs.images[:3])
    seq = torch.cat(
        [fused, torch.cat([image, image.new_full((3, fused.shape[1] - image.shape[1]), tower.pad_id)], 1)]
    )
    seq[0, -1] = tower.unk_id  # an unknown word is special too
    special = torch.isin(seq, torch.tensor(tower.special_ids))
    masked, chosen = tower._mask_tokens(seq)
    assert torch.equal(chosen, ~special)  # p = 1: every other token, and no special one
    assert (masked[chosen] == tower.mask_id).all() and torch.equal(masked[~chosen], seq[~chosen])
    tower.mlm_probability = 0.5
    for s in range(20):
        torch.manual_seed(s)
        _, chosen = tower._mask_tokens(seq)
        assert not (chosen & special).any()


def test_shapes_and_gradients_reach_the_right_parameters_only(pairs):
    model = _model(pairs, mlm_weight=0.0)
    tower = model.towers["image"]
    assert "towers.image.codes.codebook" in model.state_dict()
    assert not any("codes" in n for n, _ in model.named_parameters())  # the tokenizer is frozen
    assert tower.head is None
    model.train()
    emb = model.encode("image", pairs.images[:4])
    assert emb.shape == (4, PARAMS["width"])
    (
        emb * torch.randn(emb.shape, generator=torch.Generator().manual_seed(0))
    ).sum().backward()  # not sum(LN): 0
    assert tower.codes.codebook.grad is None and not tower.codes.codebook.requires_grad
    grad = tower.embed.weight.grad
    words = [i for i in range(tower.text_vocab) if i not in (tower.sot_id, tower.eot_id)]
    assert grad[words].abs().sum() == 0  # an image-only input touches SOT, EOT, EOI and codes only
    assert grad[[tower.sot_id, tower.eot_id, tower.eoi_id]].abs().sum(1).gt(0).all()
    assert tower.pos.grad[19:].abs().sum() == 0  # 16 codes + EOI + SOT + EOT: 19 positions used
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.blocks.parameters())
    fused = tower.encode_fused(pairs.images[:4], model.tokenize([*CAPTIONS, "a cross"]))
    assert fused.shape == (4, PARAMS["width"])


def test_mlm_head_is_tied_and_its_loss_recorded_in_training_only(pairs):
    model = _model(pairs, mlm_probability=0.5, mlm_weight=0.25)
    tower = model.towers["image"]
    assert tower.head._tied[0] is tower.embed
    head = sorted(k for k in model.state_dict() if k.startswith("towers.image.head."))
    assert head == [
        f"towers.image.head.{k}" for k in ("bias", "dense.bias", "dense.weight", "norm.bias", "norm.weight")
    ]
    model.train()
    torch.manual_seed(0)
    model.encode("text", model.tokenize(CAPTIONS))
    aux = pop_aux_losses(model)
    assert list(aux) == ["fuselip/mlm"] and float(aux["fuselip/mlm"].detach()) > 0
    model.eval()
    model.encode("text", model.tokenize(CAPTIONS))
    assert pop_aux_losses(model) == {}
    model.train()
    tower.mlm_probability = 0.0  # nothing masked: nothing added (the reference ignores such a batch)
    model.encode("text", model.tokenize(CAPTIONS))
    assert pop_aux_losses(model) == {}


def test_kmeans_tokenizer_is_deterministic_and_assigns_the_nearest_code(pairs):
    a = fit_codebook(pairs.images[:40], 4, 16, iters=5, seed=3)
    b = fit_codebook(pairs.images[:40], 4, 16, iters=5, seed=3)
    assert torch.equal(a, b) and a.shape == (16, 48)
    tok = KMeansImageTokenizer(a, 4)
    codes = tok(pairs.images[:2])
    x = image_patches(pairs.images[:2], 4)
    naive = torch.stack([torch.stack([((p - a) ** 2).sum(1).argmin() for p in row]) for row in x])
    assert torch.equal(codes, naive)
    patch = pairs.images[0, :, 4:8, 8:12].reshape(-1).float() / 255
    assert torch.equal(x[0, 10], patch)  # raster order: patch (row 1, col 2) of the 8×8 grid
    with pytest.raises(ConfigError, match="held in memory"):
        build_model(_model_config(), texts=["a red circle"])


def _run_config(tmp_path, name="fuselip", steps=2, **params) -> RunConfig:
    from contrastkit.losses import LossConfig

    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    train_cfg = dataclasses.replace(base.train, steps=steps, batch_size=16, log_every=1, ckpt_every=steps)
    return dataclasses.replace(
        base, model=_model_config(**params), train=train_cfg, loss=LossConfig("siglip")
    )


def test_trains_from_config_exports_and_rebuilds_equal(tmp_path):
    from contrastkit.cli import main
    from contrastkit.models import load
    from contrastkit.train import load_run

    run = train(_run_config(tmp_path)).run_dir
    rows = read_metrics(run)
    assert all("aux/fuselip/mlm" in r for r in rows if "loss" in r)
    assert (run / "assets" / "image" / "codebook.safetensors").is_file()
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
    _, trained, _, _ = load_run(run)
    rebuilt = load(tmp_path / "st")
    images = make_shapes("test", n=3).images
    with torch.no_grad():
        assert torch.equal(rebuilt.encode("image", images), trained.encode("image", images))
        ids = rebuilt.tokenize(CAPTIONS)
        assert torch.equal(rebuilt.encode("text", ids), trained.encode("text", trained.tokenize(CAPTIONS)))
        t_img, r_img = trained.towers["image"], rebuilt.towers["image"]
        assert torch.equal(r_img.encode_fused(images, ids), t_img.encode_fused(images, ids))


def test_gradient_caching_refused_with_mlm_and_exact_without(tmp_path):
    from contrastkit.scale import ScaleConfig

    cfg = dataclasses.replace(_run_config(tmp_path), scale=ScaleConfig(chunk_size=8))
    with pytest.raises(ConfigError, match="cannot be exact with tower 'fuselip'.*masked"):
        train(cfg)
    plain = read_metrics(train(_run_config(tmp_path, "plain", mlm_weight=0.0)).run_dir)
    chunked_cfg = dataclasses.replace(
        _run_config(tmp_path, "chunked", mlm_weight=0.0), scale=ScaleConfig(chunk_size=8)
    )
    chunked = read_metrics(train(chunked_cfg).run_dir)
    assert [r["loss"] for r in chunked] == pytest.approx([r["loss"] for r in plain], rel=1e-4)
