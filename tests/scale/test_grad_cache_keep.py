"""S-GRADCACHE with kept graphs: chunks whose graphs fit are not re-run; gradients, RNG stream and
trainer losses are unchanged, and the bytes kept grow by one chunk's graph per kept chunk."""

import dataclasses

import pytest
import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses import CLIPLoss
from contrastkit.models import DualEncoder, Tower
from contrastkit.scale import (
    ScaleConfig,
    backward_through_chunks,
    embed_in_chunks,
    graph_bytes,
)

N, C = 12, 3  # four chunks of three per modality


class Net(Tower):
    def __init__(self, d_in: int, width: int, p: float, bn: bool = False) -> None:
        super().__init__()
        norm = nn.BatchNorm1d(width) if bn else nn.Identity()
        self.net = nn.Sequential(
            nn.Linear(d_in, width), norm, nn.Dropout(p), nn.GELU(), nn.Linear(width, width)
        )
        self.output_dim = width

    def forward(self, x):
        return self.net(x)


def setup(dtype=torch.float64, bn: bool = False):
    torch.manual_seed(0)
    towers = {"image": Net(7, 12, 0.3, bn), "text": Net(9, 16, 0.3, bn)}
    model = DualEncoder(towers, embed_dim=5).to(dtype)
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(N, 7, generator=g, dtype=dtype),
        "text": torch.randn(N, 9, generator=g, dtype=dtype),
    }
    return model, CLIPLoss().to(dtype), batch


def grads(model, loss):
    out = [None if p.grad is None else p.grad.clone() for p in [*model.parameters(), *loss.parameters()]]
    model.zero_grad(set_to_none=True)
    loss.zero_grad(set_to_none=True)
    return out


def reference(model, loss, batch):
    """Plain autograd through the same chunked forward (same dropout masks)."""
    torch.manual_seed(123)
    reps = {m: torch.cat([model.encode(m, x[i : i + C]) for i in range(0, N, C)]) for m, x in batch.items()}
    loss(reps["image"], reps["text"]).backward()
    return grads(model, loss)


def cached(model, loss, batch, keep, keep_last=True):
    """Gradients and the RNG state after pass 1 and after pass 2."""
    torch.manual_seed(123)
    c = embed_in_chunks(model, batch, C, keep, keep_last)
    after_pass1 = torch.get_rng_state()
    loss(c.reps["image"], c.reps["text"]).backward()
    backward_through_chunks(model, batch, c)
    assert all(not kept for kept in c.graphs.values())  # every kept graph was used and released
    return grads(model, loss), after_pass1, torch.get_rng_state()


KEEPS = [(0, False), (0, True), (1, True), (2, False), (4, True), (9, True)]


@pytest.mark.parametrize(("keep", "keep_last"), KEEPS)
def test_gradients_equal_full_autograd_with_dropout_for_any_keep(keep, keep_last):
    model, loss, batch = setup()
    ref = reference(model, loss, batch)
    got, _, _ = cached(model, loss, batch, keep, keep_last)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_keep_changes_neither_the_rng_stream_nor_float32_gradients():
    """Kept chunks draw the same dropout masks as chunks run without a graph, and pass 2 sums chunk
    gradients in one order whatever keep is: float32 gradients are bit-identical."""
    model, loss, batch = setup(torch.float32)
    base, rng1, rng2 = cached(model, loss, batch, 0, False)
    for keep, last in KEEPS[1:]:
        got, r1, r2 = cached(model, loss, batch, keep, last)
        assert torch.equal(r1, rng1) and torch.equal(r2, rng2)
        assert all(torch.equal(a, b) for a, b in zip(got, base))


def test_no_dropout_equals_the_unchunked_model_call():
    model, loss, batch = setup()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    emb = model(batch)
    loss(emb["image"], emb["text"]).backward()
    plain = grads(model, loss)
    got, _, _ = cached(model, loss, batch, 2)
    for a, b in zip(got, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("keep", "keep_last"), [(0, False), (0, True), (2, True)])
def test_a_locked_modality_is_not_rerun_and_the_rest_trains_exactly(keep, keep_last):
    """The image tower and projection locked (no graph through them): once pass 2 sees that (a kept
    image chunk, else its first re-run), it re-runs no more image chunks, and the text side's
    gradients still equal plain autograd's."""
    model, loss, batch = setup()
    for p in [*model.towers["image"].parameters(), *model.projections["image"].parameters()]:
        p.requires_grad_(False)
    ref = reference(model, loss, batch)
    runs: list[str] = []
    encode = model.encode
    model.encode = lambda m, x: runs.append(m) or encode(m, x)  # type: ignore[method-assign]
    got, _, _ = cached(model, loss, batch, keep, keep_last)
    assert runs.count("image") == N // C + (keep == 0)  # pass 1, and one re-run if none was kept
    assert runs.count("text") == N // C + (N // C - keep - (keep_last and keep == 0))  # + re-runs
    assert [a is None for a in got] == [b is None for b in ref] and any(a is None for a in got)
    for a, b in zip(got, ref):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def saved_in_pass1(model, batch, keep, keep_last):
    """Bytes of the storages autograd saves during pass 1 (parameters and inputs excluded)."""
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    exclude |= {x.untyped_storage().data_ptr() for x in batch.values()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        c = embed_in_chunks(model, batch, C, keep, keep_last)
    return sum(seen.values()), c


@pytest.mark.parametrize("keep", [0, 1, 2, 4])
def test_bytes_kept_grow_by_one_chunk_graph_per_kept_chunk(keep):
    model, _, batch = setup(torch.float32)
    per = graph_bytes(model, batch, C)
    assert per["image"] > 0 and per["text"] > per["image"]  # the text tower is wider
    for last in (False, True):
        saved, c = saved_in_pass1(model, batch, keep, last)
        extra = per["text"] if (last and keep == 0) else 0  # the always-kept last chunk
        assert saved == keep * (per["image"] + per["text"]) + extra
        assert {m: sorted(g) for m, g in c.graphs.items()} == {
            "image": list(range(4 - keep, 4)),
            "text": sorted({*range(4 - keep, 4), *([3] if last else [])}),
        }
        assert sum(s is None for s in c.rng_states["image"]) == keep  # no replay state for kept chunks


def test_errors():
    model, _, batch = setup()
    with pytest.raises(InputError, match="keep must be an integer"):
        embed_in_chunks(model, batch, C, -1)
    for kwargs, match in [
        ({"chunk_size": 4, "keep_chunks": -1}, "keep_chunks must be an integer"),
        ({"chunk_size": 4, "keep_chunks": True}, "keep_chunks must be an integer"),
        ({"chunk_size": 4, "keep_chunks": 1, "graph_memory": "1GiB"}, "both set"),
        ({"keep_chunks": 1}, "need scale.chunk_size"),
        ({"graph_memory": "1GiB"}, "need scale.chunk_size"),
        ({"chunk_size": 4, "graph_memory": "lots"}, "scale.graph_memory: cannot read"),
        ({"chunk_size": 4, "graph_memory": "1e400GiB"}, "scale.graph_memory: cannot read"),
        ({"chunk_size": 4, "graph_memory": "-2GiB"}, "graph_memory must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            ScaleConfig(**kwargs)
    assert ScaleConfig(chunk_size=4, graph_memory="2 MiB").graph_bytes() == 2 * 2**20


def _run(tmp_path, name, compile_towers: bool = False, **scale):
    from contrastkit.models import TowerConfig
    from contrastkit.train import RunConfig, read_metrics, train

    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    vit = TowerConfig(
        "timm",
        {
            "arch": "vit_tiny_patch16_224",
            "kwargs": {
                "img_size": 32,
                "patch_size": 8,
                "embed_dim": 32,
                "depth": 1,
                "num_heads": 2,
                "proj_drop_rate": 0.2,
            },
        },
    )
    text = base.model.towers["text"]
    text = dataclasses.replace(text, params={**text.params, "dropout": 0.2})
    model = dataclasses.replace(base.model, towers={"image": vit, "text": text})
    cfg = dataclasses.replace(
        base,
        model=model,
        scale=ScaleConfig(chunk_size=8, **scale),
        train=dataclasses.replace(base.train, steps=3, log_every=1, ckpt_every=3, compile=compile_towers),
    )
    return [r["loss"] for r in read_metrics(train(cfg).run_dir)]


def test_trainer_losses_are_identical_with_kept_graphs(tmp_path, capsys):
    """Dropout on in both towers, float32: keeping full or partial graphs changes nothing, bit for
    bit; a budget's plan is reported once."""
    base = _run(tmp_path, "keep0")
    assert len(base) == 3
    assert _run(tmp_path, "keep2", keep_chunks=2) == base
    assert _run(tmp_path, "budget", graph_memory="1GiB") == base  # every chunk fits
    assert _run(tmp_path, "partial", keep_chunks=1, partial_chunks=2) == base
    assert _run(tmp_path, "some", graph_memory="2MiB") == base  # about half of the graphs
    err = capsys.readouterr().err
    assert err.count("scale.graph_memory: graph plan for") == 2, err
    assert "image: 4 full of 4; text: 4 full of 4 (3.9 MiB of 1024.0 MiB)" in err, err


@pytest.mark.slow  # ~2–3 min: four runs with torch.compile'd towers
def test_compiled_towers_keep_losses_identical_with_kept_and_partial_graphs(tmp_path):
    """train.compile: the compiled towers' dropout draws from the same replayed RNG state in a
    re-run, a partial graph's recompute and a kept graph, so the losses stay bit-identical."""
    from contrastkit.train.speed import compiler_missing

    if compiler_missing(torch.device("cpu")):
        pytest.skip("torch.compile needs a C++ compiler")
    base = _run(tmp_path, "keep0", compile_towers=True)
    assert len(base) == 3
    assert _run(tmp_path, "keep2", compile_towers=True, keep_chunks=2) == base
    assert _run(tmp_path, "partial", compile_towers=True, keep_chunks=1, partial_chunks=2) == base
    assert _run(tmp_path, "budget", compile_towers=True, graph_memory="1GiB") == base
