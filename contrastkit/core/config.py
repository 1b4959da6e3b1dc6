"""Typed, frozen configuration: dataclasses in, dataclasses out, nothing unchecked.

Each layer declares its own frozen dataclass config (``DataConfig`` in ``data``, ``ModelConfig`` in
``models``…). This module turns plain dictionaries (from YAML or ``--set key=value`` overrides)
into those dataclasses with full validation:

* an unknown key raises :class:`ConfigError` naming it, its location and the valid keys;
* values are checked against the field's type hint (``int``, ``float``, ``bool``, ``str``,
  ``Literal``, ``Optional``, ``tuple[...]``, ``dict``, nested dataclasses);
* range checks live in each dataclass's ``__post_init__``.

YAML (config files, ``--set`` values) is read by :func:`parse_yaml`: PyYAML's safe loader (plain
data only, no Python objects) with limits, so that no input can hang or crash the process:

* a config file is at most :data:`MAX_CONFIG_BYTES` (1 MiB) of UTF-8 text and not empty;
* nesting is at most :data:`MAX_DEPTH` (50) levels, checked while composing (never a
  ``RecursionError``) and again with aliases expanded;
* anchors and aliases (``&a`` / ``*a``, ``<<: *a``) are allowed — ``yaml.safe_dump`` writes them for
  shared values — but the document *with every alias expanded* may hold at most
  :data:`MAX_NODES` (10,000; the shipped configs have under 200) values and keys, counted on the
  composed node graph before anything is built, so an alias bomb ("billion laughs") fails in
  milliseconds; a recursive alias is refused. The count also stops composing a long document
  early (PyYAML composes ~10,000 values a second);
* a key repeated in one mapping is an error naming the key and both lines (PyYAML would silently
  keep the last one); keys brought in by a ``<<`` merge may be overridden as YAML intends.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from contrastkit.core.errors import ConfigError, MissingFileError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "apply_overrides",
    "from_dict",
    "load_yaml",
    "parse_yaml",
    "replace",
    "to_dict",
]

MAX_CONFIG_BYTES = 2**20  # a config file, or one --set value
MAX_DEPTH = 50  # nesting levels of a YAML document, aliases expanded
MAX_NODES = 10_000  # values (scalars, lists, mappings, keys) of a YAML document, aliases expanded

C = TypeVar("C")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type hint ``tp`` and convert (list → tuple, int → float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, args, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return _convert_sequence(value, tp, origin, args, where)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if args:
            return {
                _convert(k, args[0], f"{where}.<key>"): _convert(v, args[1], f"{where}.{k}")
                for k, v in value.items()
            }
        return dict(value)
    return _convert_scalar(value, tp, where)


def _convert_union(value: Any, tp: Any, args: tuple[Any, ...], where: str) -> Any:
    """``X | Y | None``: ``None`` if allowed, else the first member type that accepts ``value``."""
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, where)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: {value!r} matches none of {_type_name(tp)}")


def _convert_sequence(value: Any, tp: Any, origin: Any, args: tuple[Any, ...], where: str) -> Any:
    """``list[X]`` → a list; ``tuple[X, ...]``, ``tuple[X, Y]``, ``Sequence[X]`` → a tuple."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is list or tp is list:
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple and args:
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    return tuple(value)


def _convert_scalar(value: Any, tp: Any, where: str) -> Any:
    """``bool``, ``int``, ``float`` (ints and YAML 1.1's "1e-4" strings accepted) and ``str``."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config type {tp!r}")  # a bug in a config declaration


def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from a mapping, validating keys and types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    # a field may be spelled differently in configs (metadata "key"), e.g. ModelConfig.from_ as "from"
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        loc = f" in {where}" if where else ""
        raise ConfigError(f"unknown config key(s) {unknown}{loc}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        name = fields[key].name
        kwargs[name] = _convert(value, hints[name], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def to_dict(obj: Any) -> Any:
    """A dataclass (recursively) as plain dicts/lists, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.metadata.get("key", f.name): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def replace(obj: C, **changes: Any) -> C:
    """``dataclasses.replace`` that re-validates through :func:`from_dict`."""
    data = to_dict(obj)
    data.update(changes)
    return from_dict(type(obj), data)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the limits of the module docstring; ``source`` names the input."""

    source = "<yaml>"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > MAX_NODES:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(
                    f"{self.source}: more than {MAX_NODES:,} values (line {line}); too large for a config"
                )
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(f"{self.source}: nested deeper than {MAX_DEPTH} levels (line {line})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node, self.source)
        return self.construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                try:
                    seen = key in first
                except TypeError:  # an unhashable key: PyYAML reports it
                    continue
                if seen:
                    where = f"on line {line} (first on line {first[key]})"
                    raise ConfigError(f"{self.source}: duplicate key {key!r} {where}")
                first[key] = line
        return super().construct_mapping(node, deep)


def _check_expansion(root: Any, source: str) -> None:
    """Refuse a composed YAML node graph that, aliases expanded, is deeper than :data:`MAX_DEPTH`,
    holds more than :data:`MAX_NODES` values, or is recursive. Linear in the distinct nodes."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, height)
    active: set[int] = set()

    def visit(node: Any, depth: int) -> tuple[int, int]:
        key = id(node)
        line = node.start_mark.line + 1
        if key in active:
            raise ConfigError(f"{source}: an alias refers to a value that contains it (line {line})")
        if key not in done:
            if depth > MAX_DEPTH:
                raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels with aliases expanded")
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            active.add(key)
            size, height = 1, 0
            for child in children:
                n, h = visit(child, depth + 1)
                size, height = size + n, max(height, h)
                if size > MAX_NODES:
                    raise ConfigError(
                        f"{source}: more than {MAX_NODES:,} values with aliases expanded (line {line}); "
                        "an alias bomb, or far too large for a config"
                    )
            active.discard(key)
            done[key] = (size, height + 1)
        size, height = done[key]
        if depth + height - 1 > MAX_DEPTH:
            raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels with aliases expanded")
        return size, height

    visit(root, 1)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A PyYAML error on one line: the problem and where (PyYAML's own text spans several lines)."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = err.problem or err.context or type(err).__name__
        return f"{what}{where}"
    if isinstance(err, yaml.reader.ReaderError) and isinstance(err.character, int):
        return f"unacceptable character #x{err.character:04x} at character {err.position + 1}"
    return " ".join(str(err).split())


def parse_yaml(text: str, source: str = "<yaml>") -> Any:
    """Parse YAML ``text`` with the safe loader and the limits of the module docstring.

    ``source`` names the input in error messages (a file, an override); every error is a
    one-line :class:`ConfigError`.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is {len(text):,} characters; the limit is 1 MiB")
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader checks the characters here
        loader.source = source
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(err)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with :func:`parse_yaml`; clear errors for a missing, empty, oversized,
    non-UTF-8 or bad file."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"config file not found: {p}")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a regular file")
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"config file {p} cannot be read: {err.strerror or err}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is {p.stat().st_size:,} bytes; the limit is 1 MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "save it as UTF-8"
        ) from None
    data = parse_yaml(text, f"config file {p}")
    if data is None:
        raise ConfigError(f"config file {p} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else f"{text[:n]}…"


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict; values are parsed as YAML scalars.

    Every value is parsed (with :func:`parse_yaml`'s limits) before anything is copied.
    Unknown keys are not rejected here: :func:`from_dict` rejects them with the valid names.
    """
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {_short(item)!r} must look like key.sub=value")
        parsed.append((item, key.strip().split("."), parse_yaml(raw, f"override {_short(item)!r}")))
    out = _deep_copy(data)
    for item, parts, value in parsed:
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {_short(item)!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
