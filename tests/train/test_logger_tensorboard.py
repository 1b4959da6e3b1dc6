"""TensorBoard asked for but not installed: one warning line naming the fixes, once per process."""

import logging
import subprocess
import sys

import pytest
import yaml

import contrastkit.train.logger as logger_mod
from contrastkit.core import to_dict
from contrastkit.train import MetricsLogger, RunConfig

MESSAGE = (
    "train.tensorboard is on but TensorBoard is not installed: metrics go to metrics.jsonl only "
    "(pip install tensorboard, or set train.tensorboard: false)"
)


@pytest.fixture
def no_tensorboard(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    monkeypatch.setattr(logger_mod, "_warned", [])


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "contrastkit.train.logger"]


def test_warns_once_when_requested_but_missing(tmp_path, no_tensorboard, caplog):
    with caplog.at_level(logging.WARNING):
        first = MetricsLogger(tmp_path / "a", tensorboard=True)
        MetricsLogger(tmp_path / "b", tensorboard=True)  # a second run in the same process: quiet
    assert _warnings(caplog) == [MESSAGE]
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    first.log(3, {"loss": 0.5})  # metrics.jsonl still works
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == '{"step": 3, "loss": 0.5}\n'
    assert not (tmp_path / "a" / "tensorboard").exists()


def test_no_warning_when_not_requested_or_not_rank_zero(tmp_path, no_tensorboard, caplog):
    with caplog.at_level(logging.WARNING):
        MetricsLogger(tmp_path / "a", tensorboard=False)
        MetricsLogger(tmp_path / "b", tensorboard=True, enabled=False)  # another rank writes nothing
    assert _warnings(caplog) == []
    assert logger_mod._warned == []


def test_cli_warning_is_one_stderr_line(tmp_path):
    """In a real process (logging unconfigured) the warning is its bare message: one line."""
    data = to_dict(RunConfig.tiny(out_dir=str(tmp_path / "runs")))
    data["train"].update(steps=1, tensorboard=True, progress=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    code = (
        "import sys; sys.modules['torch.utils.tensorboard'] = None\n"
        "from contrastkit.cli import main\n"
        f"sys.exit(main(['train', '--config', {str(cfg)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [MESSAGE]
    assert proc.stdout.startswith(f"trained {tmp_path / 'runs' / 'tiny'}: step 1, loss ")


def test_tensorboard_events_hold_scalars_hparams_eval_metrics_and_the_similarity_image(tmp_path):
    """Read back with TensorBoard's own event reader, as `tensorboard --logdir` would."""
    pytest.importorskip("tensorboard")
    import dataclasses

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from contrastkit.evaluation import evaluate_run
    from contrastkit.train import read_metrics, train

    base = RunConfig.tiny(out_dir=str(tmp_path))
    cfg = dataclasses.replace(
        base, train=dataclasses.replace(base.train, steps=4, log_every=1, tensorboard=True)
    )
    result = train(cfg)
    evaluate_run(result.run_dir, splits=["test"])
    folder = result.run_dir / "tensorboard"
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    losses = [e.value for e in acc.Scalars("loss")]
    logged = [r["loss"] for r in read_metrics(result.run_dir) if "loss" in r]
    assert losses == pytest.approx(logged, rel=1e-6) and len(losses) == 4
    metrics = yaml.safe_load((result.run_dir / "metrics.json").read_text())["metrics"]["test"]
    top1 = acc.Scalars("eval/test/zeroshot/shape+color/top1")
    assert [e.step for e in top1] == [4] and top1[0].value == pytest.approx(
        metrics["zeroshot/shape+color/top1"]
    )
    assert "eval/similarity" in tags["images"]
    image = acc.Images("eval/similarity")[0]
    assert image.width > 100 and image.height > 100
    plugins = acc.PluginTagToContent("hparams")  # the HPARAMS tab: session info holds the config
    assert plugins and any(b"train.steps" in v for v in plugins.values())
