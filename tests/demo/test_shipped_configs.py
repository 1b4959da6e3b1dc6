"""Every config under configs/ still means what its docs say: each run config parses into a typed
RunConfig and passes the config-time checks (a missing file or run folder is allowed only where
the config reads what an earlier documented command makes), and every run of every study grid
parses too. Nothing is trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from contrastkit.core.config import from_dict, load_yaml
from contrastkit.core.errors import MissingFileError
from contrastkit.studies.config import load_study, run_config_dict
from contrastkit.train import RunConfig
from contrastkit.train.setup import check_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
STUDIES = [p for p in CONFIGS if "grid" in load_yaml(p)]
RUNS = [p for p in CONFIGS if p not in STUDIES]
# what these read is made by a command their docs give first (a CSV export, a source run)
MADE_BEFORE = {"align-csv.yaml", "csv-clip.yaml", "shapes-distill.yaml", "sycon-continue.yaml"}


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.name)
def test_run_config_parses_and_passes_the_config_checks(path: Path) -> None:
    cfg = from_dict(RunConfig, load_yaml(path))
    if path.name in MADE_BEFORE:
        with pytest.raises(MissingFileError):
            check_config(cfg)
    else:
        check_config(cfg)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_run_of_a_study_parses(path: Path) -> None:
    study, base = load_study(path)
    settings = study.settings()
    assert settings
    for setting in settings:
        from_dict(RunConfig, run_config_dict(base, setting, 0, "x", "runs"))
