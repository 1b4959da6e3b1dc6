"""Reports: eval.json (metrics + protocol), per_example.npz, plots, prompt files, the `eval` command
on a Hugging Face folder and on a run folder, and clear errors on bad input."""

import hashlib
import json

import numpy as np
import pytest
import torch

from contrastkit.cli import main
from contrastkit.core.errors import InputError, MissingFileError
from contrastkit.data import make_shapes
from contrastkit.data.shapes import COLOR_NAMES, SHAPES
from contrastkit.evaluation import EVAL_TASKS, Encoders, zero_shot_classifier
from contrastkit.evaluation.external import file_sha256, hf_encoders
from contrastkit.evaluation.report import apply_prompt_files, evaluate_model
from tests.evaluation.test_external import _save_clip

if "_test_plotter" not in EVAL_TASKS:

    @EVAL_TASKS.register("_test_plotter")
    def _plotter(ctx):
        """Writes a marker into options["plot_dir"] (what the geometry task does with its plots)."""
        d = ctx.options["plot_dir"]
        d.mkdir(parents=True, exist_ok=True)
        (d / "marker.txt").write_text(str(len(ctx.pairs)))
        return {}, {}


def _oracle_encoders(pairs):
    """Image i → one-hot of its shape (looked up from its bytes); text → one-hot of the shape it
    names. Zero-shot shape top-1 is 1 on every single-object image."""
    label = {
        pairs.images[i].numpy().tobytes(): int(pairs.tasks["shape"].labels[i]) for i in range(len(pairs))
    }

    def images(x):
        out = torch.zeros(len(x), len(SHAPES))
        for i, im in enumerate(x):
            out[i, max(label[im.numpy().tobytes()], 0)] = 1.0
        return out

    def texts(t):
        out = torch.full((len(t), len(SHAPES)), 1e-3)
        for i, s in enumerate(t):
            hit = [k for k, name in enumerate(SHAPES) if name in s]
            out[i, hit[0] if hit else 0] = 1.0
        return out

    return Encoders(images, texts)


def test_encoders_report_files_and_per_example_scores(tmp_path):
    pairs = make_shapes("test", n=60)
    enc = _oracle_encoders(pairs)
    report = evaluate_model(
        enc,
        tmp_path,
        splits=("test",),
        data_params={"n": 60},
        tasks=["zeroshot", "retrieval", "_test_plotter"],
        options={"_test_plotter": {"k": 3, "where": tmp_path}},
    )
    m = report["metrics"]["test"]
    assert m["zeroshot/shape/top1"] == 1.0  # the oracle
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(report["metrics"]))
    assert saved["model"] == {"kind": "callables"}
    assert saved["protocol"]["options"] == {"_test_plotter": {"k": 3, "where": str(tmp_path)}}  # as given
    assert saved["n"]["test"] == {"images": 60, "texts": 120}
    assert set(saved["protocol"]["metric_definitions"]) == {"zeroshot", "retrieval", "_test_plotter"}
    assert "ties broken by lower index" in saved["protocol"]["metric_definitions"]["retrieval"]
    assert "options" in saved["protocol"]["metric_definitions"]["_test_plotter"]  # from the docstring
    for lib in ("torch", "transformers", "timm", "contrastkit", "numpy"):
        assert saved["versions"][lib] not in ("", None)
    shape = saved["protocol"]["prompts"]["shape"]
    assert shape["classnames"]["values"] == list(SHAPES)
    assert shape["classnames"]["sha256"] == hashlib.sha256("\n".join(SHAPES).encode()).hexdigest()
    with np.load(tmp_path / "per_example.npz", allow_pickle=False) as z:
        ex = {k: z[k] for k in z.files}
    assert ex["test/zeroshot/shape/top1"].shape == ((pairs.tasks["shape"].labels >= 0).sum(),)
    # (not color: the oracle's colour classes all tie, and zero_shot_metrics' topk and the task's
    # per-example argmax order ties differently — reported to the lead)
    for key in ("zeroshot/shape/top1", "retrieval/text_to_image_R@5", "retrieval/image_to_text_R@1"):
        assert ex[f"test/{key}"].mean() == pytest.approx(m[key])
    assert ex["test/retrieval/image_to_text_R@1"].shape == (60,)
    assert (tmp_path / "similarity.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "test" / "marker.txt").read_text() == "60"
    assert saved["outputs"] == ["eval.json", "per_example.npz", "similarity.png", "plots/"]


def test_prompt_files(tmp_path):
    pairs = make_shapes("test", n=20)
    (tmp_path / "t.txt").write_text("# comment\na drawing of a {}\n\nthe {} shape\n")
    (tmp_path / "c.txt").write_text("\n".join(f"{s}-ish" for s in SHAPES))
    out = apply_prompt_files(pairs, tmp_path / "c.txt", tmp_path / "t.txt", class_task="shape")
    assert out.tasks["shape"].templates == ("a drawing of a {}", "the {} shape")
    assert out.tasks["shape"].classnames[0] == "circle-ish"
    assert out.tasks["color"] == pairs.tasks["color"]  # only the named task changes
    every = apply_prompt_files(pairs, templates=tmp_path / "t.txt")  # no task named: all tasks
    assert {t.templates for t in every.tasks.values()} == {("a drawing of a {}", "the {} shape")}
    (tmp_path / "bad.txt").write_text("a photo of a thing\n")
    with pytest.raises(InputError, match=r"template 'a photo of a thing' in .* has no '\{\}'"):
        apply_prompt_files(pairs, templates=tmp_path / "bad.txt")
    with pytest.raises(MissingFileError, match="class names file not found"):
        apply_prompt_files(pairs, classes=tmp_path / "missing.txt")
    (tmp_path / "three.txt").write_text("red\ngreen\nblue\n")
    with pytest.raises(InputError, match="lists 3 class names but task 'shape' has 8 classes"):
        apply_prompt_files(pairs, classes=tmp_path / "three.txt")
    with pytest.raises(InputError, match="unknown class task 'size'"):
        apply_prompt_files(pairs, classes=tmp_path / "c.txt", class_task="size")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(InputError, match="has no entries"):
        apply_prompt_files(pairs, templates=tmp_path / "empty.txt")


def test_bad_inputs(tmp_path):
    pairs = make_shapes("test", n=10)
    empty = pairs.subset(np.arange(0))
    with pytest.raises(InputError, match="is empty: nothing to evaluate"):
        from contrastkit.evaluation import evaluate_examples

        evaluate_examples(_oracle_encoders(pairs), empty)
    short = Encoders(lambda x: torch.ones(len(x) - 1, 4), lambda t: torch.ones(len(t), 4))
    with pytest.raises(InputError, match="image encoder returned 9 embeddings for 10 inputs"):
        evaluate_model(short, tmp_path, data_params={"n": 10})
    with pytest.raises(
        MissingFileError,
        match="not a contrastkit run .* a Hugging Face model folder .* nor an open_clip folder",
    ):
        evaluate_model(tmp_path / "nowhere")


def test_eval_command_on_a_hugging_face_folder(tmp_path, capsys):
    folder = _save_clip(tmp_path / "clip")
    (tmp_path / "classes.txt").write_text("\n".join(COLOR_NAMES))
    (tmp_path / "templates.txt").write_text("a photo of a {} thing\na {} object\n")
    out = tmp_path / "out"
    args = ["eval", str(folder), "--split", "test", "--data-param", "n=30", "--out", str(out)]
    args += ["--classes", str(tmp_path / "classes.txt"), "--templates", str(tmp_path / "templates.txt")]
    assert main([*args, "--class-task", "color"]) == 0
    printed = capsys.readouterr().out
    assert "zeroshot/color/top1" in printed and "wrote" in printed
    report = json.loads((out / "eval.json").read_text())
    model = report["model"]
    assert model["kind"] == "hf-clip" and model["path"] == str(folder.resolve())
    assert model["weights_sha256"] == {"model.safetensors": file_sha256(folder / "model.safetensors")}
    assert model["image_preprocessing"]["resize"] == {"shortest_edge": 40}
    assert report["protocol"]["prompts"]["color"]["templates"]["values"] == [
        "a photo of a {} thing",
        "a {} object",
    ]
    # the reported number is the direct computation with the loaded model and the files' prompts
    pairs = make_shapes("test", n=30)
    enc = hf_encoders(folder)
    labels = pairs.tasks["color"].labels
    w = zero_shot_classifier(enc.texts, [[f"a photo of a {c} thing", f"a {c} object"] for c in COLOR_NAMES])
    pred = (enc.images(pairs.images) @ w.T).argmax(1).numpy()
    keep = labels >= 0
    assert report["metrics"]["test"]["zeroshot/color/top1"] == pytest.approx(
        (pred[keep] == labels[keep]).mean()
    )
    # a missing class file is a one-line error, exit code 2
    assert main([*args[:-4], "--classes", str(tmp_path / "nope.txt")]) == 2
    assert "class names file not found" in capsys.readouterr().err


def test_run_folder_keeps_metrics_json_and_writes_eval_json(tmp_path):
    import dataclasses

    from contrastkit.train import RunConfig, train

    cfg = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, ckpt_every=2))
    run = train(cfg).run_dir
    report = evaluate_model(run, splits=["test"], tasks=["zeroshot", "retrieval", "_test_plotter"])
    legacy = json.loads((run / "metrics.json").read_text())
    assert legacy["checkpoint"] == "step_00000002" and legacy["metrics"] == report["metrics"]
    ckpt = run / "checkpoints" / "step_00000002" / "model.safetensors"
    assert report["model"]["kind"] == "contrastkit-run"
    assert report["model"]["weights_sha256"] == {"model.safetensors": file_sha256(ckpt)}
    assert report["protocol"]["data"] == "shapes" and report["protocol"]["splits"] == ["test"]
    with np.load(run / "per_example.npz", allow_pickle=False) as z:
        top1 = z["test/zeroshot/shape+color/top1"]
    assert top1.mean() == pytest.approx(report["metrics"]["test"]["zeroshot/shape+color/top1"])
    assert (run / "plots" / "test" / "marker.txt").is_file() and (run / "similarity.png").is_file()
