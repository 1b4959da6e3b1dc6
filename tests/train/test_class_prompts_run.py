"""A class_prompts run (CoOp's cross-entropy): the trainer encodes every class's prompt each step,
the step's loss is the direct formula on the model's embeddings of the batch, only the prompt
context trains in locked towers, gradient caching and 2 ranks change no loss, and configs it
cannot serve are refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from contrastkit.core.errors import ConfigError
from contrastkit.losses import LossConfig, LossTerm
from contrastkit.losses.class_prompts import CLASSES_KEY, class_prompt_loss
from contrastkit.models.prompts import PromptConfig
from contrastkit.scale import ScaleConfig
from contrastkit.train import RunConfig, train
from contrastkit.train.class_prompts import class_prompt_ids
from contrastkit.train.distributed import DistContext


def _config(tmp_path, steps: int = 2, **loss_params) -> RunConfig:
    cfg = RunConfig.tiny("coop-ce", out_dir=str(tmp_path))
    towers = {
        "image": dataclasses.replace(cfg.model.towers["image"], locked=True),
        "text": dataclasses.replace(cfg.model.towers["text"], locked=True, prompt=PromptConfig()),
    }
    model = dataclasses.replace(cfg.model, towers=towers, lock=("projections.*",))
    return dataclasses.replace(
        cfg,
        model=model,
        data=dataclasses.replace(cfg.data, label_task="shape+color"),
        loss=LossConfig("class_prompts", {"learnable": False, **loss_params}),
        train=dataclasses.replace(cfg.train, steps=steps, ckpt_every=1, keep_checkpoints=2, log_every=1),
    )


def test_the_step_loss_is_the_formula_on_every_class_prompt(tmp_path):
    from contrastkit.train.forward import compute_loss, embed_batch
    from contrastkit.train.session import build_session

    cfg = _config(tmp_path, template="a {} shape.")
    s = build_session(cfg, tmp_path / "s", True, DistContext(), torch.device("cpu"))
    names = list(s.train_set.tasks["shape+color"].classnames)
    assert len(names) == 64 and torch.equal(
        s.class_ids, s.model.tokenize([f"a {c} shape." for c in names])
    )  # the prompted tokenisation: the context goes in front of each
    loader = s.feed.loader(s.model.tokenize, s.model.count_truncated, 16, 0, 0, s.device)
    batch = s.feed.take(next(iter(loader)), s.device)
    emb, _ = embed_batch(s, batch)
    got = compute_loss(s, emb, batch)
    with torch.no_grad():
        image = s.model.encode("image", batch["image"])
        classes = s.model.encode("text", s.class_ids)
    assert emb[CLASSES_KEY].shape == (64, classes.shape[1])
    want = class_prompt_loss(image, classes, batch["labels"], s.loss.log_scale.exp())
    torch.testing.assert_close(got, want)
    got.backward()
    assert s.model.prompts["text"].context.grad.abs().sum() > 0


def test_only_the_context_trains_and_the_run_evaluates(tmp_path):
    from contrastkit.evaluation.report import evaluate_run

    run = train(_config(tmp_path)).run_dir
    one = load_file(str(run / "checkpoints" / "step_00000001" / "model.safetensors"))
    two = load_file(str(run / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert sorted(k for k in one if not torch.equal(one[k], two[k])) == ["model.prompts.text.context"]
    metrics = evaluate_run(run, tasks=["zeroshot"], splits=["test"])["metrics"]["test"]
    assert 0.0 <= metrics["zeroshot/shape+color/top1"] <= 1.0


def test_configs_it_cannot_serve_are_refused(tmp_path):
    cfg = _config(tmp_path)
    with pytest.raises(ConfigError, match="set data.label_task"):
        train(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, label_task=None)))
    terms = LossConfig(terms={"class_prompts": LossTerm(1.0), "clip": 1.0})
    with pytest.raises(ConfigError, match="not a term of loss.terms"):
        train(dataclasses.replace(cfg, loss=terms))
    from contrastkit import losses

    with pytest.raises(ConfigError, match="class names of data.label_task 'shape\\+color'"):
        class_prompt_ids(cfg, losses.build("class_prompts"), None, object(), torch.device("cpu"))  # type: ignore[arg-type]


def _trainable(out_dir, steps: int) -> RunConfig:
    """Every tower trained (DDP on 2 ranks: the text tower encodes the captions and the class
    prompts in one step), a ViT image tower (BatchNorm statistics would be per rank)."""
    from .test_guard_and_training import _vit_config

    cfg = _config(out_dir, steps=steps)
    towers = {m: dataclasses.replace(t, locked=False) for m, t in cfg.model.towers.items()}
    towers["image"] = _vit_config(out_dir, "vit").model.towers["image"]
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, towers=towers, lock=()))


def _two_rank_worker(out_dir: str, locked: bool, chunk: int | None) -> list[float]:
    from contrastkit.train import read_metrics

    cfg = _config(out_dir, steps=3) if locked else _trainable(out_dir, 3)
    cfg = dataclasses.replace(cfg, scale=ScaleConfig(chunk_size=chunk))
    return [r["loss"] for r in read_metrics(train(cfg).run_dir)]


@pytest.mark.parametrize(
    ("locked", "chunk"),
    [(True, None), (False, None), (False, 4)],
    ids=["context-only", "all-towers-ddp", "all-towers-ddp-chunked"],
)
def test_two_ranks_match_one_process(tmp_path, locked, chunk):
    """2 gloo ranks, half of each batch each: the gathered image rows and labels against the class
    prompts every rank encodes give the single process's losses (the same global batches). Chunked:
    each rank's 8 images in 2 chunks under DDP (synchronised by chunk 0's re-run), the prompts once."""
    from contrastkit.scale.launch import spawn_gloo
    from contrastkit.train import read_metrics

    one = _config(tmp_path / "one", steps=3) if locked else _trainable(tmp_path / "one", 3)
    single = [r["loss"] for r in read_metrics(train(one).run_dir)]
    multi = spawn_gloo(_two_rank_worker, 2, str(tmp_path / "two"), locked, chunk, timeout_s=300)
    assert len(single) == 3 and multi[0] == multi[1]
    assert multi[0] == pytest.approx(single, rel=1e-5)


@pytest.mark.parametrize("locked", [True, False], ids=["context-only", "all-towers"])
def test_gradient_caching_changes_no_loss(tmp_path, locked):
    """scale.chunk_size 4 of 16 (the class prompts run once beside the chunks, their graph through
    the loss's backward): every step's loss equals the unchunked run's, so its gradients did too.
    Every graph plan: re-run chunks, kept ones, and partial ones (the ViT and text towers take them)."""
    from contrastkit.train import read_metrics

    def losses(name: str, scale: ScaleConfig | None) -> list[float]:
        cfg = _config(tmp_path / name, steps=3) if locked else _trainable(tmp_path / name, 3)
        cfg = cfg if scale is None else dataclasses.replace(cfg, scale=scale)
        return [r["loss"] for r in read_metrics(train(cfg).run_dir)]

    plain = losses("plain", None)
    assert len(plain) == 3 and len(set(plain)) == 3  # the model changes between steps
    for name, scale in {
        "rerun": ScaleConfig(chunk_size=4, keep_chunks=0),
        "kept": ScaleConfig(chunk_size=4, keep_chunks=2),
        "partial": ScaleConfig(chunk_size=4, keep_chunks=1, partial_chunks=2),
    }.items():
        assert losses(name, scale) == pytest.approx(plain, rel=1e-5, abs=1e-6), name
