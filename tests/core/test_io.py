"""Atomic writes: a failure mid-write leaves the old file intact and no temporary behind."""

import pytest

from contrastkit.core.io import atomic_path, atomic_write_json, read_json, save_png


def test_failed_write_keeps_the_previous_file(tmp_path):
    dest = tmp_path / "m.json"
    atomic_write_json(dest, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text('{"a": 2, "trunc')
        raise RuntimeError("killed")
    assert read_json(dest) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_save_png_writes_in_a_new_folder_and_closes_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    dest = save_png(fig, str(tmp_path / "new" / "f.png"), dpi=50, tight=True)
    assert dest == tmp_path / "new" / "f.png"
    assert dest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.png"]  # no temporary left
    assert not plt.fignum_exists(fig.number)
