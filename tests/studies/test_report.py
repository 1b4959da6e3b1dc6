"""The study report's tables: the plain mean over seeds next to the labelled bootstrap estimate."""

import numpy as np
import pytest

from contrastkit.studies.config import Comparison, StudyConfig
from contrastkit.studies.multibootstrap import Runs, multibootstrap
from contrastkit.studies.report import build_report
from contrastkit.studies.runner import RunSpec

# hits out of 20 examples per (setting, seed): clip 0.10, 0.20, 0.45; siglip 0.30, 0.35, 0.55
HITS = {"clip": (2, 4, 9), "siglip": (6, 7, 11)}


def _study(tmp_path):
    study = StudyConfig(
        name="t",
        base="b.yaml",
        grid={"loss.name": ["clip", "siglip"]},
        seeds=(0, 1, 2),
        comparisons=(Comparison({"loss.name": "clip"}, {"loss.name": "siglip"}),),
        metric="zeroshot/color/top1",
        nboot=200,
    )
    specs, rows = [], {}
    for setting in study.settings():
        loss = setting[0][1]
        for seed, k in zip(study.seeds, HITS[loss]):
            run_dir = tmp_path / "runs" / f"{loss}-s{seed}"
            run_dir.mkdir(parents=True)
            hits = np.roll(np.arange(20) < k, seed).astype(np.float64)  # seeds miss different examples
            np.savez(run_dir / "examples.npz", **{"zeroshot|color|top1": hits})
            specs.append(RunSpec(setting, seed, run_dir.name, run_dir, {}))
            rows[run_dir.name] = hits
    return study, specs, rows


def _table(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(header_start))
    out = [[c.strip() for c in lines[i].strip("|").split("|")]]
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        out.append([c.strip() for c in line.strip("|").split("|")])
    return out


def test_settings_show_the_plain_mean_and_the_labelled_bootstrap_estimate(tmp_path):
    study, specs, rows = _study(tmp_path)
    text = build_report(study, specs, tmp_path).read_text()
    head, clip, siglip = _table(text, "| setting |")
    assert head == ["setting", "mean over seeds", "bootstrap estimate", "95% bootstrap CI", "per-seed values"]
    assert "*Bootstrap estimate*: the mean of the 200 Multi-Bootstrap replicates" in text
    for row, loss, plain in ((clip, "clip", 0.25), (siglip, "siglip", 0.40)):
        per_seed = [float(v) for v in row[4].split(", ")]
        assert per_seed == [rows[f"{loss}-s{s}"].mean() for s in (0, 1, 2)]
        assert float(row[1]) == pytest.approx(np.mean(per_seed), abs=5e-5) == plain
        sc = np.stack([rows[f"{loss}-s{s}"] for s in (0, 1, 2)])
        boot = multibootstrap(
            Runs([0, 1, 2] * 2, [False] * 3 + [True] * 3, np.concatenate([sc, sc])), paired=True, nboot=200
        )
        assert row[2] == f"{boot.base.mean:.4f}" != row[1]  # the bootstrap estimate: not the plain mean
    assert (clip[2], siglip[2]) == ("0.2520", "0.4060")


def test_comparisons_show_the_plain_delta_and_the_labelled_bootstrap_estimate(tmp_path):
    study, specs, _ = _study(tmp_path)
    text = build_report(study, specs, tmp_path).read_text()
    head, row = _table(text, "| intervention vs baseline |")
    assert head[1:4] == ["δ mean over seeds", "δ bootstrap estimate", "95% bootstrap CI"]
    assert row[0] == "loss.name=siglip  vs  loss.name=clip"
    assert row[1] == "+0.1500"  # 0.40 - 0.25
    assert row[2] == "+0.1540" and row[5] == "yes (3 seeds)"
