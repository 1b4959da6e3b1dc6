"""configs/fashion-lit.yaml is exactly the fashion demo's first run."""

from pathlib import Path

from contrastkit.core.config import from_dict, load_yaml
from contrastkit.demo.fashion import fashion_config
from contrastkit.train import RunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_fashion_lit_yaml_is_the_demo_run():
    cfg = from_dict(RunConfig, load_yaml(CONFIGS / "fashion-lit.yaml"))
    assert cfg == fashion_config(out_dir="runs", name="fashion-lit")
