"""The README's Python example runs as written (with fewer steps and a temporary out_dir)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    block = block.replace("steps=300", "steps=3").replace('out_dir="runs"', f'out_dir="{tmp_path}"')
    block = block.replace("n=2000", "n=300").replace("n=500", "n=50")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert "zeroshot/shape+color/top1" in capsys.readouterr().out
