"""E-INSTRUCT: instruction-conditioned retrieval — an oracle that follows the instruction scores
precision 1, an encoder that ignores it scores the same with and without, the metrics equal a
brute-force loop, and a ``decoder_llm`` tower gets the instruction in its template's task_prompt."""

import dataclasses
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.pairs import ClassTask, PairSet
from contrastkit.data.shapes import COLORS, SHAPES, make_shapes
from contrastkit.evaluation import EVAL_TASKS, Encoders, EvalContext, model_encoders
from contrastkit.evaluation.instruct import instruct_task, instruction_metrics
from contrastkit.models import ModelConfig, TowerConfig, build_model
from contrastkit.models.llm_embed import TEMPLATES, Template

COLOR_NAMES = tuple(COLORS)


def naive_metrics(q, g, q_lab, g_lab, q_own, g_own, k):
    """Per query: sort the non-own gallery by (−cosine, index); P@1 and AP@k by definition."""
    q, g = F.normalize(q.double(), dim=-1), F.normalize(g.double(), dim=-1)
    p1, ap = [], []
    for i in range(len(q)):
        items = [j for j in range(len(g)) if g_own[j] != q_own[i]]
        items.sort(key=lambda j: (-float(q[i] @ g[j]), j))
        rel = [g_lab[j] == q_lab[i] for j in items]
        r = sum(rel)
        hits, total = 0, 0.0
        for rank, is_rel in enumerate(rel[:k], start=1):
            if is_rel:
                hits += 1
                total += hits / rank
        p1.append(float(rel[0]))
        ap.append(total / min(k, r) if r else 0.0)
    return np.array(p1), np.array(ap)


def toy_context(n=40, seed=0, options=None):
    """Random embeddings; image i is coded in its pixel; 2 captions each; two class tasks."""
    rng = np.random.default_rng(seed)
    img_emb = F.normalize(torch.from_numpy(rng.normal(size=(n, 8))), dim=-1).float()
    images = torch.arange(n).reshape(n, 1, 1, 1).expand(n, 3, 1, 1).to(torch.uint8)
    caps = tuple((f"{i} a", f"{i} b") for i in range(n))
    table = {c: torch.from_numpy(rng.normal(size=8)).float() for cs in caps for c in cs}
    words = {w: torch.from_numpy(rng.normal(size=8)).float() for w in ("alpha", "beta")}

    def texts(t):  # the instruction (when present) shifts the caption's vector
        rows = []
        for s in t:
            head, _, cap = s.rpartition("as: ")
            rows.append(table[cap] + (words["alpha" if "k1" in head else "beta"] if head else 0))
        return F.normalize(torch.stack(rows), dim=-1)

    tasks = {
        "k1": ClassTask(("a", "b", "c"), ("{}",), np.where(np.arange(n) % 7 == 6, -1, rng.integers(0, 3, n))),
        "k2": ClassTask(("a", "b"), ("{}",), rng.integers(0, 2, n)),
    }
    enc = Encoders(lambda x: img_emb[x[:, 0, 0, 0].long()], texts)
    return EvalContext(enc, PairSet(images, caps, tasks, name="toy/test"), None, options or {})


def test_metrics_equal_a_brute_force_loop():
    torch.manual_seed(0)
    q, g = torch.randn(30, 5), torch.randn(25, 5)
    q_lab, g_lab = np.random.default_rng(1).integers(0, 3, 30), np.random.default_rng(2).integers(0, 3, 25)
    q_own, g_own = np.arange(30) % 25, np.arange(25)
    for k, chunk in ((10, 7), (3, 1024), (40, 4)):  # k above the gallery size too
        m = instruction_metrics(q, g, q_lab, g_lab, q_own, g_own, k, chunk)
        p1, ap = naive_metrics(q, g, q_lab, g_lab, q_own, g_own, k)
        np.testing.assert_array_equal(m["precision@1"], p1)
        np.testing.assert_allclose(m[f"map@{k}"], ap, rtol=0, atol=1e-12)
    # ties: equal scores rank the lower gallery index first
    tie = instruction_metrics(torch.ones(1, 2), torch.ones(3, 2), [1], [0, 1, 1], [9], [0, 1, 2], 2)
    assert tie["precision@1"][0] == 0.0 and tie["map@2"][0] == pytest.approx(0.25)  # (1/2) · (1/2)


@pytest.mark.parametrize("exclude", ["identical", "own"])
def test_registered_task_equals_the_loop_for_both_targets(exclude):
    assert EVAL_TASKS.get("instruct") is instruct_task
    ctx = toy_context(options={"instruct": {"k": 5, "chunk": 16, "exclude": exclude}})
    out, ex = instruct_task(ctx)
    caps, owner = ctx.captions
    owner = np.asarray(owner)
    k1, k2 = (np.asarray(ctx.pairs.tasks[t].labels) for t in ("k1", "k2"))
    # the exclusion group of an image: its labels in every class task, or the image itself
    grp = [(int(a), int(b)) if exclude == "identical" else i for i, (a, b) in enumerate(zip(k1, k2))]
    instr = {"image": "Find an image", "text": "Find a caption"}
    for name, lab in (("k1", k1), ("k2", k2)):
        items = [j for j in range(len(lab)) if lab[j] >= 0]
        rows = [
            i
            for i in range(len(caps))
            if lab[owner[i]] >= 0 and any(lab[j] == lab[owner[i]] and grp[j] != grp[owner[i]] for j in items)
        ]
        q_lab, q_grp = lab[owner[rows]], [grp[owner[i]] for i in rows]
        for target, base in (("image", f"instruct/same_{name}"), ("text", f"instruct/same_{name}/text")):
            g_idx = items if target == "image" else [c for c in range(len(caps)) if lab[owner[c]] >= 0]
            g_img = g_idx if target == "image" else [owner[c] for c in g_idx]
            g = (ctx.image_emb if target == "image" else ctx.text_emb)[g_idx]
            g_lab, g_grp = lab[g_img], [grp[j] for j in g_img]
            q = ctx.enc.texts([f"{instr[target]} with the same {name} as: {caps[i]}" for i in rows])
            p1, ap = naive_metrics(q, g, q_lab, g_lab, q_grp, g_grp, 5)
            b1, bap = naive_metrics(ctx.text_emb[rows], g, q_lab, g_lab, q_grp, g_grp, 5)
            np.testing.assert_array_equal(ex[f"{base}/precision@1"], p1)
            np.testing.assert_allclose(ex[f"{base}/map@5"], ap, atol=1e-6)
            np.testing.assert_array_equal(ex[f"{base}/no_instruction/precision@1"], b1)
            np.testing.assert_allclose(ex[f"{base}/gain/map@5"], ap - bap, atol=1e-6)
            assert out[f"{base}/precision@1"] == pytest.approx(p1.mean())
            assert out[f"{base}/n_queries"] == len(rows) and out[f"{base}/n_gallery"] == len(g_idx)


def shapes_oracle(n=90):
    """Real Shapes images and captions; the encoder knows each image's shape and colour."""
    pairs = make_shapes("test", n=n)
    index = {bytes(pairs.images[i].numpy()): i for i in range(n)}
    shape, colour = pairs.tasks["shape"].labels, pairs.tasks["color"].labels

    def images(x):
        rows = torch.zeros(len(x), 16)
        for r, im in enumerate(x):
            i = index[bytes(im.numpy())]
            if shape[i] >= 0:
                rows[r, shape[i]], rows[r, 8 + colour[i]] = 1.0, 1.0
            else:
                rows[r, 0] = 1.0  # two-object images are not in any gallery
        return F.normalize(rows, dim=-1)

    return pairs, images


def oracle_texts(t):
    """One-hot of the attribute the instruction names; the caption's shape + colour without one."""
    rows = torch.zeros(len(t), 16)
    for r, s in enumerate(t):
        head, _, cap = s.rpartition("as: ")
        sh = next(i for i, w in enumerate(SHAPES) if re.search(rf"\b{w}\b", cap))
        co = next(i for i, w in enumerate(COLOR_NAMES) if re.search(rf"\b{w}\b", cap))
        if not head or "shape" in head:
            rows[r, sh] = 1.0
        if not head or "color" in head:
            rows[r, 8 + co] = 1.0
    return F.normalize(rows, dim=-1)


def test_an_oracle_that_follows_the_instruction_scores_one():
    pairs, images = shapes_oracle()
    out, _ = instruct_task(EvalContext(Encoders(images, oracle_texts), pairs))
    for sub in ("same_shape", "same_color"):
        for base in (f"instruct/{sub}", f"instruct/{sub}/text"):
            assert out[f"{base}/precision@1"] == 1.0 and out[f"{base}/map@10"] == pytest.approx(1.0)
            assert out[f"{base}/chance@1"] < 0.5
            # caption only, exact duplicates left out: "red, another shape" and "circle, another
            # colour" score alike (cosine 1/2), so the tie rule decides and the baseline drops
            assert out[f"{base}/no_instruction/map@10"] < 0.8 and out[f"{base}/gain/map@10"] > 0.2
    assert not any("same_shape_and_color" in key for key in out)  # all its relevant items are duplicates
    own, _ = instruct_task(
        EvalContext(Encoders(images, oracle_texts), pairs, options={"instruct": {"exclude": "own"}})
    )
    for sub in ("same_shape", "same_color", "same_shape_and_color"):
        assert own[f"instruct/{sub}/precision@1"] == 1.0 and own[f"instruct/{sub}/map@10"] == pytest.approx(
            1.0
        )
    # with duplicates in the gallery the caption alone finds them first wherever they exist
    for sub in ("same_shape", "same_color"):
        plain = f"instruct/{sub}/no_instruction/precision@1"
        assert own[plain] > out[plain] + 0.2


def test_an_encoder_that_ignores_the_instruction_scores_the_same():
    pairs, images = shapes_oracle()
    vocab = {w: torch.from_numpy(np.random.default_rng(len(w)).normal(size=16)).float() for w in SHAPES}
    vocab |= {w: torch.from_numpy(np.random.default_rng(9 + len(w)).normal(size=16)).float() for w in COLORS}

    def texts(t):  # a bag of shape and colour words: the instruction's words are not among them
        return F.normalize(
            torch.stack([sum(vocab[w] for w in s.split(" ") if w in vocab) for s in t]), dim=-1
        )

    out, ex = instruct_task(EvalContext(Encoders(images, texts), pairs))
    gains = [key for key in out if "/gain/" in key]
    assert len(gains) == 8  # 2 sub-tasks x 2 targets x 2 metrics
    for key in gains:
        assert out[key] == 0.0 and not ex[key].any()
        assert out[key.replace("/gain/", "/")] == out[key.replace("/gain/", "/no_instruction/")]


def llm_config(template="e5v", system="<sys> ") -> ModelConfig:
    base = ModelConfig.tiny()
    text = TowerConfig(
        "decoder_llm",
        {"arch": "llama", "hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64,
         "max_length": 96, "template": template, "system_prompt": system,
         "task_prompt": "represent this caption for retrieving images: "},
    )  # fmt: skip
    return dataclasses.replace(base, towers={"image": base.towers["image"], "text": text})


def test_decoder_llm_gets_the_instruction_in_its_template(monkeypatch):
    pairs = make_shapes("test", n=24)
    model = build_model(llm_config(), texts=[c for cs in pairs.captions for c in cs])
    enc = model_encoders(model, batch_size=8)
    assert (
        enc.instructed is not None
        and model_encoders(build_model(ModelConfig.tiny(), texts=["a cat"])).instructed is None
    )
    rendered: list[str] = []
    real = Template.render
    monkeypatch.setattr(
        Template, "render", lambda self, text: rendered.append(real(self, text)) or real(self, text)
    )
    prefix, suffix = TEMPLATES["e5v"][0], TEMPLATES["e5v"][1]
    with_instr = enc.instructed("Find an image with the same color as: ", ["a red circle", "a blue star"])
    expected = [
        f"<sys> {prefix}Find an image with the same color as: {c}{suffix}"
        for c in ("a red circle", "a blue star")
    ]
    assert rendered == expected
    tower = model.text_tower()
    assert tower.template.task_prompt == "represent this caption for retrieving images: "  # restored
    rendered.clear()
    plain = enc.texts(["a red circle", "a blue star"])
    assert rendered[0] == f"<sys> {prefix}represent this caption for retrieving images: a red circle{suffix}"
    assert not torch.allclose(with_instr, plain)
    # the task sends each query through the slot: instruction + caption, never concatenated in the text
    rendered.clear()
    out, _ = instruct_task(
        EvalContext(enc, pairs, options={"instruct": {"tasks": ["color"], "targets": ["image"]}})
    )
    queries = [r for r in rendered if "same color" in r]
    assert queries and all(
        r.startswith(f"<sys> {prefix}Find an image with the same color as: ") for r in queries
    )
    assert all(r.count("same color") == 1 and r.endswith(suffix) for r in queries)
    assert 0.0 <= out["instruct/same_color/precision@1"] <= 1.0


def test_a_plain_tower_reads_the_concatenated_instruction():
    opts = {"instruction": "Same {attribute} as: ", "targets": ["image"], "exclude": "own"}
    ctx = toy_context(options={"instruct": opts})
    seen: list[str] = []
    texts = ctx.enc.texts
    ctx.enc = dataclasses.replace(ctx.enc, texts=lambda t: seen.extend(t) or texts(t))
    caps, owner = ctx.captions[0], np.asarray(ctx.captions[1])
    instruct_task(ctx)
    expected = []
    for name in ("k1", "k2"):
        lab = np.asarray(ctx.pairs.tasks[name].labels)
        cnt = np.bincount(lab[lab >= 0])
        expected += [
            f"Same {name} as: {caps[i]}"
            for i in range(len(caps))
            if lab[owner[i]] >= 0 and cnt[lab[owner[i]]] > 1
        ]
    assert [s for s in seen if s.startswith("Same ")] == expected
    assert [s for s in seen if not s.startswith("Same ")] == list(caps)  # the baseline: captions, once


def test_errors():
    with pytest.raises(ConfigError, match=r"unknown instruct option\(s\) \['kk'\]"):
        instruct_task(toy_context(options={"instruct": {"kk": 1}}))
    with pytest.raises(ConfigError, match="targets"):
        instruct_task(toy_context(options={"instruct": {"targets": ["audio"]}}))
    with pytest.raises(ConfigError, match="exclude must be"):
        instruct_task(toy_context(options={"instruct": {"exclude": "all"}}))
    with pytest.raises(ConfigError, match="attribute"):
        instruct_task(toy_context(options={"instruct": {"instruction": "same {colour}: "}}))
    with pytest.raises(InputError, match=r"\['size'\] not labelled class task"):
        instruct_task(toy_context(options={"instruct": {"tasks": ["size"]}}))
    ctx = toy_context()
    bare = EvalContext(ctx.enc, dataclasses.replace(ctx.pairs, tasks={}))
    with pytest.raises(InputError, match="needs class labels on the evaluated images"):
        instruct_task(bare)
    unique = {"u": ClassTask(tuple("abcdefghij" * 4), ("{}",), np.arange(40))}  # no label shared
    with pytest.raises(InputError, match="shares a label with an image that is not its duplicate"):
        instruct_task(EvalContext(ctx.enc, dataclasses.replace(ctx.pairs, tasks=unique)))
    one = {"k2": ctx.pairs.tasks["k2"]}  # one class task: every same-label image is a duplicate
    with pytest.raises(InputError, match=r"exclude: identical\); toy/test has none in \['k2'\]"):
        instruct_task(EvalContext(ctx.enc, dataclasses.replace(ctx.pairs, tasks=one)))
    out, _ = instruct_task(
        EvalContext(
            ctx.enc, dataclasses.replace(ctx.pairs, tasks=one), options={"instruct": {"exclude": "own"}}
        )
    )
    assert out["instruct/same_k2/n_queries"] == 80


def test_one_embedding_size_check_and_the_cli(capsys):
    from contrastkit.cli import main

    pairs = make_shapes("test", n=20)
    enc = Encoders(lambda x: torch.ones(len(x), 4), lambda t: torch.ones(len(t), 3))
    with pytest.raises(InputError, match=r"image embeddings \[20, 4\] and text embeddings \[\d+, 3\] differ"):
        instruct_task(EvalContext(enc, pairs))
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "instruct" in capsys.readouterr().out
