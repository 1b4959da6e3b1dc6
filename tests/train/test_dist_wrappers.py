"""train.dist_wrapper: towers under DistributedDataParallel or FSDP2 on 2 gloo ranks give the
losses and weights of the old flat all-reduce (bit for bit with DDP) and of one process on the
same global batch; gradient caching, two views through one tower, momentum and locked towers;
resume is exact; FSDP holds half of each tower per rank; checkpoints keep the plain keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.scale.launch import spawn_gloo
from contrastkit.train import read_metrics, train

from .test_guard_and_training import _vit_config

STEPS = 4


def _config(out: str | Path, name: str, wrapper: str, variant: str = "plain", steps: int = STEPS):
    """The BatchNorm-free ViT + BERT run of the distributed tests, in one of the step shapes that
    run a tower more than once or not at all."""
    from contrastkit.losses import LossConfig
    from contrastkit.models.momentum import MomentumConfig
    from contrastkit.scale import ScaleConfig

    cfg = _vit_config(out, name)
    train_cfg = dataclasses.replace(
        cfg.train, steps=steps, ckpt_every=2, log_every=1, dist_wrapper=wrapper, keep_checkpoints=3
    )
    cfg = dataclasses.replace(cfg, train=train_cfg)
    if variant.startswith("chunks"):  # 4 chunks of 4 per rank; chunks_all: every graph fits
        if variant == "chunks_budget":  # a plan from timings, the same on every rank
            return dataclasses.replace(cfg, scale=ScaleConfig(chunk_size=4, graph_memory="1MiB"))
        keep = {"chunks": 1, "chunks_all": 8, "chunks_partial": 1}[variant]
        partial = 2 if variant == "chunks_partial" else None  # chunks 1, 2 partial graphs
        scale = ScaleConfig(chunk_size=4, keep_chunks=keep, partial_chunks=partial)
        return dataclasses.replace(cfg, scale=scale)
    if variant in ("simclr", "moco3"):  # one image tower, run on image, image@0, image@1
        towers = {"image": cfg.model.towers["image"]}
        momentum = MomentumConfig(("image",), m=0.9) if variant == "moco3" else None
        model = dataclasses.replace(cfg.model, towers=towers, momentum=momentum)
        data = dataclasses.replace(cfg.data, modalities=("image",), views=2)
        loss = LossConfig("ntxent") if variant == "simclr" else LossConfig("moco3", {"temperature": 0.2})
        return dataclasses.replace(cfg, model=model, data=data, loss=loss)
    if variant == "locked":  # LiT: the image tower frozen (not wrapped), its projection trained
        towers = {**cfg.model.towers, "image": dataclasses.replace(cfg.model.towers["image"], locked=True)}
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, towers=towers))
    return cfg


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


def _weights(run_dir: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def _wrappers_worker(out: str, variant: str, wrappers: list[str]) -> dict[str, list[float]]:
    """Rank r: one run per wrapper, in the same process group."""
    return {w: _losses(train(_config(out, w, w, variant)).run_dir) for w in wrappers}


def _single(out: Path, variant: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    run = train(_config(out, "single", "ddp", variant)).run_dir  # one process: no wrapper at all
    return _losses(run), _weights(run)


def _assert_close_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=rtol * 1e-2, msg=k)


def _check_variant(tmp_path: Path, variant: str, steps: int = STEPS) -> None:
    single, single_w = _single(tmp_path / "one", variant)
    out = tmp_path / "two"
    res = spawn_gloo(_wrappers_worker, 2, str(out), variant, ["allreduce", "ddp"], timeout_s=900)
    assert res[0] == res[1]
    ar, ddp = res[0]["allreduce"], res[0]["ddp"]
    assert len(ddp) == len(single) == steps
    assert ddp == ar  # bit-identical to the old flat all-reduce (2 ranks)
    w_ar, w_ddp = _weights(out / "allreduce"), _weights(out / "ddp")
    assert all(torch.equal(w_ddp[k], w_ar[k]) for k in w_ar)
    assert ddp == pytest.approx(single, rel=1e-5)  # one process, same global batch: float32 rounding
    _assert_close_weights(w_ddp, single_w, rtol=1e-4)


# ----------------------------------------------------------------------------------- fast smoke


def _unused_worker() -> dict[str, dict[str, torch.Tensor]]:
    """A parameter the forward never reaches and a tower whose output the loss ignores get the
    average (zero) under DDP exactly as under the flat all-reduce; the wrappers leave the model's
    module tree (and state-dict keys) alone and are off the encode path outside a step."""
    import torch.distributed as dist

    from contrastkit.models import TowerConfig
    from contrastkit.models.dual_encoder import ModelConfig, build_model
    from contrastkit.train.dist_towers import DDPTowers, GradSync
    from contrastkit.train.distributed import DistContext

    ctx = DistContext(dist.get_rank(), dist.get_world_size())
    cfg = ModelConfig(
        towers={
            m: TowerConfig("mlp", {"input_dim": 6, "hidden_dim": 8}) for m in ("image", "text", "attributes")
        },
        embed_dim=4,
    )
    grads: dict[str, dict[str, torch.Tensor]] = {}
    for kind in ("allreduce", "ddp"):
        torch.manual_seed(0)
        model = build_model(cfg)
        model.towers["image"].register_parameter("unused", torch.nn.Parameter(torch.ones(3)))
        keys = list(model.state_dict())
        sync = (
            GradSync(model, torch.nn.Module(), ctx)
            if kind == "allreduce"
            else DDPTowers(model, torch.nn.Module(), ctx, torch.device("cpu"))
        )
        assert list(model.state_dict()) == keys and not model.runners
        g = torch.Generator().manual_seed(10 + ctx.rank)
        batch = {m: torch.randn(5, 6, generator=g) for m in ("image", "text", "attributes")}
        with sync.step():
            emb = model(batch)
        assert not model.runners
        (emb["image"] * emb["text"]).sum().backward()  # "attributes" ran, unused by the loss
        sync.average()
        grads[kind] = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads


def test_ddp_smoke_equals_allreduce_and_one_process(tmp_path):
    """Default suite: 2 ranks under DDP give the all-reduce run's losses and weights bit for bit,
    one process's to float32 rounding; unused parameters are averaged as zeros; plain keys."""
    single = train(_config(tmp_path / "one", "single", "ddp", steps=2)).run_dir
    out = tmp_path / "two"

    res = spawn_gloo(_smoke_worker, 2, str(out), timeout_s=600)
    assert res[0]["losses"] == res[1]["losses"]
    assert res[0]["losses"]["ddp"] == res[0]["losses"]["allreduce"]
    assert res[0]["losses"]["ddp"] == pytest.approx(_losses(single), rel=1e-5)
    w_ar, w_ddp, w_one = (_weights(p, 2) for p in (out / "allreduce", out / "ddp", single))
    assert w_ddp.keys() == w_one.keys() and not any(".module." in k for k in w_ddp)
    assert all(torch.equal(w_ddp[k], w_ar[k]) for k in w_ar)
    _assert_close_weights(w_ddp, w_one, rtol=1e-4)
    ar, ddp, ddp1 = res[0]["grads"]["allreduce"], res[0]["grads"]["ddp"], res[1]["grads"]["ddp"]
    assert ar.keys() == ddp.keys() and all(
        torch.equal(ar[k], ddp[k]) and torch.equal(ddp[k], ddp1[k]) for k in ar
    )
    assert not ddp["towers.image.unused"].any()  # never reached: averaged as a zero
    assert not ddp["towers.attributes.net.0.weight"].any()  # ran, its output unused by the loss
    assert ddp["towers.image.net.0.weight"].any()


def _smoke_worker(out: str) -> dict:
    losses = {w: _losses(train(_config(out, w, w, steps=2)).run_dir) for w in ("allreduce", "ddp")}
    return {"losses": losses, "grads": _unused_worker()}


# ------------------------------------------------------------------------- every step shape (slow)


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    ["plain", "chunks", "chunks_all", "chunks_partial", "chunks_budget", "simclr", "moco3", "locked"],
)
def test_ddp_matches_allreduce_and_one_process(tmp_path, variant):
    _check_variant(tmp_path, variant)


def _resume_worker(out: str, wrapper: str) -> dict:
    """A full run, then the same run resumed from its step-2 checkpoint (every rank)."""
    import torch.distributed as dist

    from contrastkit.train import resume

    run = train(_config(out, wrapper, wrapper)).run_dir
    full = {"losses": _losses(run), "weights": _weights(run)}
    if dist.get_rank() == 0:
        (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 2, "path": "step_00000002"}))
    dist.barrier()
    resume(run)
    return {"full": full, "resumed": {"losses": _losses(run), "weights": _weights(run)}}


@pytest.mark.slow
@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_resume_under_a_wrapper_is_exact(tmp_path, wrapper):
    res = spawn_gloo(_resume_worker, 2, str(tmp_path), wrapper, timeout_s=900)[0]
    assert res["resumed"]["losses"] == res["full"]["losses"]
    assert all(torch.equal(res["resumed"]["weights"][k], v) for k, v in res["full"]["weights"].items())


# ------------------------------------------------------------------------------------------ FSDP


def _fsdp_worker(out: str) -> dict:
    """The FSDP run's losses, and what this rank holds of each tower once sharded."""
    import torch.distributed as dist

    from contrastkit.losses import from_config as build_loss
    from contrastkit.models.dual_encoder import build_model
    from contrastkit.train.distributed import DistContext
    from contrastkit.train.fsdp_towers import FSDPTowers, local_numel

    cfg = _config(out, "fsdp", "fsdp")
    losses = _losses(train(cfg).run_dir)
    torch.manual_seed(0)
    model = build_model(cfg.model, texts=["a red square", "a small blue circle"] * 8)
    full = {m: local_numel(t) for m, t in model.towers.items()}
    ctx = DistContext(dist.get_rank(), dist.get_world_size())
    towers = FSDPTowers(cfg, model, build_loss(cfg.loss), ctx, torch.device("cpu"))
    held = {m: local_numel(t) for m, t in model.towers.items()}
    return {"losses": losses, "full": full, "held": held, "wrapped": list(towers.wrapped)}


@pytest.mark.slow
def test_fsdp_matches_one_process_and_holds_half_of_each_tower(tmp_path):
    single, single_w = _single(tmp_path / "one", "plain")
    res = spawn_gloo(_fsdp_worker, 2, str(tmp_path / "two"), timeout_s=900)
    assert res[0]["losses"] == res[1]["losses"]
    assert res[0]["losses"] == pytest.approx(single, rel=2e-6)
    _assert_close_weights(_weights(tmp_path / "two" / "fsdp"), single_w, rtol=1e-4)  # plain keys, full
    assert res[0]["wrapped"] == ["image", "text"]
    for m, n in res[0]["full"].items():
        held = [r["held"][m] for r in res]
        assert sum(held) == n and max(held) <= 0.55 * n  # dim-0 rows: about half each


@pytest.mark.parametrize(
    ("variant", "key"), [("chunks_partial", "partial_chunks"), ("chunks_budget", "graph_memory")]
)
def test_fsdp_refuses_graph_plans_and_partial_graphs(tmp_path, variant, key):
    """FSDP all-gathers in every forward: every rank must re-run the same chunks, with full graphs."""
    with pytest.raises(ConfigError, match=f"scale.{key} does not work with train.dist_wrapper: fsdp"):
        train(_config(tmp_path, "fsdp", "fsdp", variant))


def _fsdp_chunks_worker(out: str, variant: str) -> list[float]:
    return _losses(train(_config(out, "fsdp", "fsdp", variant)).run_dir)


@pytest.mark.slow
def test_fsdp_with_gradient_caching_matches_one_process(tmp_path):
    single, _ = _single(tmp_path / "one", "chunks")
    res = spawn_gloo(_fsdp_chunks_worker, 2, str(tmp_path / "two"), "chunks", timeout_s=900)
    assert res[0] == pytest.approx(single, rel=2e-6)


# ------------------------------------------------------------------------------- checks, no ranks


def test_dist_wrapper_is_validated():
    from contrastkit.train import TrainConfig

    assert TrainConfig().dist_wrapper == "ddp"
    with pytest.raises(ConfigError, match="train.dist_wrapper must be one of"):
        TrainConfig(dist_wrapper="zero3")


def test_fsdp_refuses_what_it_cannot_run(tmp_path):
    from contrastkit.models.dual_encoder import build_model
    from contrastkit.train.fsdp_towers import check_fsdp

    cfg = _config(tmp_path, "x", "fsdp", "moco3")
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, impl="foreach"))
    with pytest.raises(ConfigError, match=r"model.momentum on sharded tower\(s\) \['image'\].*optim.impl"):
        check_fsdp(cfg, build_model(cfg.model))
    plain = _config(tmp_path, "y", "fsdp")
    check_fsdp(plain, build_model(plain.model, texts=["a b c"]))  # nothing to refuse


def test_shard_units_are_the_towers_blocks(tmp_path):
    from contrastkit.models.dual_encoder import build_model
    from contrastkit.train.fsdp_towers import shard_units

    model = build_model(_config(tmp_path, "x", "fsdp").model, texts=["a b c"])
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(u)] for u in shard_units(model.towers["image"])] == ["towers.image.backbone.blocks.0"]
    text = [names[id(u)] for u in shard_units(model.towers["text"])]
    assert text and all(".layer." in n for n in text)


def test_grad_cache_runs_each_modalitys_last_chunk_inside_final(monkeypatch):
    """``final(m)`` wraps exactly the re-run of chunk 0 of ``m`` (the last backward through its
    tower); the gradients are those of the plain chunked run; a kept chunk 0 is refused."""
    from contrastkit.models import TowerConfig
    from contrastkit.models.dual_encoder import ModelConfig, build_model
    from contrastkit.scale import backward_through_chunks, embed_in_chunks

    cfg = ModelConfig(
        towers={m: TowerConfig("mlp", {"input_dim": 6, "hidden_dim": 8}) for m in ("image", "text")},
        embed_dim=4,
    )
    torch.manual_seed(0)
    model = build_model(cfg).double()
    g = torch.Generator().manual_seed(1)
    batch = {m: torch.randn(10, 6, generator=g, dtype=torch.float64) for m in ("image", "text")}

    def grads(keep_first: bool, final=None) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        cached = embed_in_chunks(model, batch, 3, keep=2, keep_first=keep_first)
        (cached.reps["image"] * cached.reps["text"]).sum().backward()
        backward_through_chunks(model, batch, cached, final=final)
        return [p.grad.clone() for p in model.parameters()]

    calls: list[tuple[str, int]] = []
    real = model.encode

    def spy(key, x):
        calls.append((key, len(x)))
        return real(key, x)

    events: list[str] = []

    class Final:
        def __init__(self, m):
            self.m = m

        def __enter__(self):
            events.append(f"enter {self.m} after {len(calls)}")

        def __exit__(self, *exc):
            events.append(f"exit {self.m} after {len(calls)}")

    want = grads(keep_first=True)
    monkeypatch.setattr(model, "encode", spy)
    got = grads(keep_first=False, final=Final)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(got, want))
    # pass 1: 4 chunks × 2 modalities; pass 2 re-runs chunks 1, 0 of each (chunks 2, 3 kept)
    assert calls[8:] == [("image", 3), ("image", 3), ("text", 3), ("text", 3)]
    assert events == [
        "enter image after 9",
        "exit image after 10",
        "enter text after 11",
        "exit text after 12",
    ]
    monkeypatch.undo()
    cached = embed_in_chunks(model, batch, 3, keep=4)
    (cached.reps["image"] * cached.reps["text"]).sum().backward()
    with pytest.raises(InputError, match="keep_first=False"):
        backward_through_chunks(model, batch, cached, final=Final)
