"""Atomic writes: a failure mid-write leaves the old file intact and no temporary behind."""

import pytest

from contrastkit.core.io import atomic_path, atomic_write_json, read_json


def test_failed_write_keeps_the_previous_file(tmp_path):
    dest = tmp_path / "m.json"
    atomic_write_json(dest, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text('{"a": 2, "trunc')
        raise RuntimeError("killed")
    assert read_json(dest) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
