"""Resource limits of config input: YAML size, encoding, nesting, aliases and duplicate keys, override
values, thread counts, seeds, devices and output folders — each a one-line ConfigError, fast."""

import os
import time

import pytest
import torch
import yaml

from contrastkit.cli import main
from contrastkit.core.config import MAX_DEPTH, MAX_NODES, apply_overrides, from_dict, load_yaml, parse_yaml
from contrastkit.core.errors import ConfigError
from contrastkit.core.io import check_writable_dir
from contrastkit.core.runtime import MAX_SEED, check_threads, resolve_device, set_threads
from contrastkit.train import RunConfig
from contrastkit.train.config import GuardConfig, OptimConfig, TrainConfig


def _bomb_block() -> str:
    """Billion laughs in block style: 9 levels of 9 aliases each, 9**9 values expanded."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def _bomb_flow() -> str:
    """The same bomb as one flow value (a ``--set`` value)."""
    items = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "[" + ", ".join(items) + "]"


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "Traceback" not in text
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


# --- load_yaml: files ---------------------------------------------------------------------------


def test_oversized_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "#" * 2**20 + "\n")
    with pytest.raises(ConfigError, match=r"big.yaml is 1,048,585 bytes; the limit is 1 MiB"):
        load_yaml(path)


def test_non_utf8_file_names_the_file_and_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_yaml(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_is_an_error(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"config file .*empty.yaml is empty"):
        load_yaml(path)


def test_a_folder_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_yaml(tmp_path)


def test_duplicate_keys_name_the_key_and_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\noptim:\n  lr: 0.1\n  eps: 1.0e-6\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: duplicate key 'lr' on line 5 \(first on line 3\)"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="duplicate key 'a' on line 1"):
        parse_yaml("{a: 1, a: 2}")


def test_merge_keys_may_be_overridden():
    data = parse_yaml("base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n")
    assert data["run"] == {"x": 3, "y": 2}


def test_shared_values_round_trip():
    """``yaml.safe_dump`` writes anchors for shared values: small alias use stays fine."""
    shared = [1, 2]
    assert parse_yaml(yaml.safe_dump({"a": shared, "b": shared})) == {"a": [1, 2], "b": [1, 2]}


def test_alias_bomb_fails_fast(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("name: x\n" + _bomb_block())
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"more than {MAX_NODES:,} values with aliases expanded"):
        load_yaml(path)
    assert time.perf_counter() - t0 < 2


def test_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match="an alias refers to a value that contains it"):
        parse_yaml("a: &a [1, *a]")


def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_yaml(path)
    assert time.perf_counter() - t0 < 2
    ok = "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert isinstance(parse_yaml(ok)["a"], list)
    block = "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "v: 1\n"
    with pytest.raises(ConfigError, match="nested deeper than"):
        parse_yaml(block)


def test_deep_nesting_through_an_alias_chain():
    text = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))
    with pytest.raises(ConfigError, match="nested deeper than 50 levels with aliases expanded"):
        parse_yaml(text)


def test_long_documents_stop_early():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"more than {MAX_NODES:,} values"):
        parse_yaml("[" + ", ".join(["1"] * (3 * MAX_NODES)) + "]")
    assert time.perf_counter() - t0 < 3


def test_yaml_syntax_errors_are_one_line():
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: [1, 2\nb: 3", "config file x.yaml")
    assert "\n" not in str(info.value) and "line " in str(info.value)
    with pytest.raises(ConfigError, match=r"unacceptable character #x0000") as info:
        parse_yaml("a: \x00")
    assert "\n" not in str(info.value)


# --- overrides ----------------------------------------------------------------------------------


def test_override_bomb_fails_fast_even_under_an_unknown_key():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="with aliases expanded"):
        apply_overrides({"name": "x"}, [f"no_such_key={_bomb_flow()}"])
    with pytest.raises(ConfigError, match="nested deeper than"):
        apply_overrides({}, ["x=" + "[" * 10000 + "]" * 10000])
    assert time.perf_counter() - t0 < 2
    with pytest.raises(ConfigError, match="the limit is 1 MiB"):
        apply_overrides({}, ["x=" + "1" * (2**20 + 1)])


def test_overrides_parse_every_value_before_copying():
    data = {"train": {"steps": 3}}
    with pytest.raises(ConfigError, match="duplicate key"):
        apply_overrides(data, ["train.steps=5", "x={a: 1, a: 2}"])
    assert data == {"train": {"steps": 3}}
    assert apply_overrides(data, ["train.steps=5"]) == {"train": {"steps": 5}}


# --- train / optim / guard values ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2**32, 2**70])
def test_seed_range(seed):
    with pytest.raises(ConfigError, match=rf"train.seed must be an integer in \[0, 2\*\*32 - 1.*got {seed}"):
        TrainConfig(seed=seed)
    assert TrainConfig(seed=MAX_SEED).seed == MAX_SEED


@pytest.mark.parametrize("lr", [1e300, float("inf"), float("nan"), 10.5, 0.0, -1.0])
def test_lr_is_finite_and_bounded(lr):
    with pytest.raises(ConfigError, match=r"optim.lr must be > 0 and <= 10"):
        OptimConfig(lr=lr)
    assert OptimConfig(lr=10.0).lr == 10.0


def test_eps_weight_decay_grad_clip_and_spike_warmup():
    for eps in (-1.0, 0.0, float("nan"), 2.0):
        with pytest.raises(ConfigError, match="optim.eps must be > 0"):
            OptimConfig(eps=eps)
    with pytest.raises(ConfigError, match="optim.weight_decay must be finite"):
        OptimConfig(weight_decay=float("inf"))
    with pytest.raises(ConfigError, match="optim.grad_clip must be > 0 and finite"):
        OptimConfig(grad_clip=float("inf"))
    with pytest.raises(ConfigError, match="guard.spike_warmup must be >= 0, got -5"):
        GuardConfig(spike_warmup=-5)
    assert GuardConfig(spike_warmup=0).spike_warmup == 0


def test_device_names_are_checked_in_the_config():
    with pytest.raises(ConfigError, match="train.device='gpu' is not a device"):
        TrainConfig(device="gpu")
    for name in ("auto", "cpu", "cuda", "cuda:1", "mps"):  # availability is resolve_device's
        assert TrainConfig(device=name).device == name


# --- runtime: threads, devices ------------------------------------------------------------------


def test_threads_are_capped_at_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert check_threads(4) == 4
    assert check_threads(0) >= 1
    with pytest.raises(ConfigError, match=r"train.threads=5 is more than the 4 cores of this machine"):
        check_threads(5)
    before = torch.get_num_threads()
    with pytest.raises(ConfigError, match="threads=100000 is more than"):
        set_threads(100000)
    assert torch.get_num_threads() == before
    try:
        assert set_threads(100000, cap=True) == 4  # resuming on a smaller machine
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="must be an integer >= 0"):
        check_threads(-1)
    # a saved run config stays loadable on a machine with fewer cores
    assert TrainConfig(threads=64).threads == 64


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"train.device=cuda but torch.cuda.is_available\(\) is False"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="is not a device"):
        resolve_device("tpu:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="train.device=cuda:2 but this machine has 2 CUDA device"):
        resolve_device("cuda:2")


# --- output folders -----------------------------------------------------------------------------


def test_check_writable_dir(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"out_dir .*f is a file, not a folder"):
        check_writable_dir(tmp_path / "f")
    with pytest.raises(ConfigError, match=r"out_dir .*sub: .*f is a file, not a folder"):
        check_writable_dir(tmp_path / "f" / "sub")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match="a dangling link, not a folder"):
        check_writable_dir(tmp_path / "link")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_check_writable_dir_refuses_an_unwritable_place():
    with pytest.raises(ConfigError, match="out_dir /proc/contrastkit-test is not a writable folder"):
        check_writable_dir("/proc/contrastkit-test")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_check_writable_dir_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError, match="is not a writable folder"):
            check_writable_dir(ro / "runs")
    finally:
        ro.chmod(0o700)


# --- through the CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"name: caf\xe9\n", "is not UTF-8 text (byte 0xe9"),
        (b"name: a\nname: b\n", "duplicate key 'name' on line 2 (first on line 1)"),
        (b"name: " + b"[" * 300 + b"]" * 300 + b"\n", "nested deeper than 50 levels"),
        (b"name: x\n" + _bomb_block().encode(), "values with aliases expanded"),
        (b"#" * (2**20 + 1), "bytes; the limit is 1 MiB"),
    ],
    ids=["empty", "latin1", "duplicate", "deep", "bomb", "big"],
)
def test_cli_refuses_bad_config_files(tmp_path, capsys, content, expected):
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    t0 = time.perf_counter()
    assert main(["train", "--config", str(path)]) == 2
    assert time.perf_counter() - t0 < 2
    line = _one_error_line(capsys)
    assert expected in line and str(path) in line


def test_cli_refuses_a_bomb_in_an_override(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "out_dir": str(tmp_path / "runs")}))
    t0 = time.perf_counter()
    assert main(["train", "--config", str(path), "--set", f"unknown.key={_bomb_flow()}"]) == 2
    assert main(["eval", str(tmp_path / "nope"), "--data-param", f"n={_bomb_flow()}"]) == 2
    assert time.perf_counter() - t0 < 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and all("values with aliases expanded" in x for x in lines)
    assert lines[0].startswith("error: override 'unknown.key=[&l0")
    assert lines[1].startswith("error: --data-param n")
    assert from_dict(RunConfig, load_yaml(path)).name == "x"
