"""Name → builder registries, so every component is selectable from a config.

A :class:`Registry` maps a name (``"clip"``, ``"timm"``) to a callable. ``build`` checks the keyword
arguments against the callable's signature before calling it:

* names — a typo in a config (``temprature: 0.1``) fails with the valid parameter names;
* required parameters — a builder called without one fails with ``missing required parameter``;
* types and ranges — each given value is validated (pydantic, strict: ``"abc"`` is not a number,
  ``1`` is one) against the parameter's annotation, including range metadata such as
  ``Annotated[float, Gt(0)]`` (see the aliases :data:`Positive`, :data:`PositiveInt`…), so a bad
  value fails with one line naming the key, the value and what is allowed instead of a traceback
  deep inside the component.

Valid values reach the builder unchanged, except that a list given for a ``tuple`` parameter becomes
a tuple and a numeric string for a number (YAML 1.1 reads ``1e-4`` as a string) becomes a float.
Parameters named ``self``/``context``, ``*args``/``**kwargs`` and annotations that cannot be resolved
are not type-checked.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

from annotated_types import Ge, Gt, Le, Lt

from contrastkit.core.errors import ConfigError, UnknownNameError

__all__ = [
    "Fraction",
    "NonNegInt",
    "NonNegative",
    "Positive",
    "PositiveInt",
    "Probability",
    "Registry",
    "check_kwargs",
    "check_params",
]

T = TypeVar("T")

Positive = Annotated[float, Gt(0)]
"""A number > 0 (temperatures, scales)."""
NonNegative = Annotated[float, Ge(0)]
"""A number >= 0 (weights, margins)."""
PositiveInt = Annotated[int, Ge(1)]
"""An integer >= 1 (sizes, counts)."""
NonNegInt = Annotated[int, Ge(0)]
"""An integer >= 0 (seeds, step counts)."""
Probability = Annotated[float, Ge(0), Le(1)]
"""A number in [0, 1]."""
Fraction = Annotated[float, Ge(0), Lt(1)]
"""A number in [0, 1) (dropout, held-out fractions)."""

_UNCHECKED = ("self", "context")  # run-time inputs, not config values
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def check_kwargs(fn: Callable[..., Any], params: dict[str, Any], what: str) -> None:
    """Raise :class:`ConfigError` if ``params`` has keys that ``fn`` does not accept."""
    sig = inspect.signature(fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = [
        n
        for n, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY) and n != "self"
    ]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} for {what}; valid parameters: {sorted(valid)}")


# ------------------------------------------------------------------------------ typed parameters


@dataclass(frozen=True)
class _Spec:
    """What :func:`check_params` needs of one builder, computed once."""

    hints: dict[str, Any]  # parameter → annotation (checked parameters only)
    required: tuple[str, ...]  # parameters without a default
    model: Any  # a pydantic model over ``hints`` (field aliases = parameter names), or None


def _resolve_hints(target: Callable[..., Any], sig: inspect.Signature) -> dict[str, Any]:
    """Annotations of ``target``'s parameters; one that does not resolve is left out (= Any)."""
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # one unresolvable name (e.g. imported under TYPE_CHECKING): go one by one
        pass
    globalns = getattr(inspect.unwrap(target), "__globals__", {})
    hints = {}
    for name, p in sig.parameters.items():
        ann = p.annotation
        if ann is inspect.Parameter.empty:
            continue
        if isinstance(ann, str):
            try:
                ann = eval(ann, dict(globalns))  # what get_type_hints does, one name at a time
            except Exception:
                continue
        hints[name] = ann
    return hints


def _model(hints: dict[str, Any]) -> Any:
    import pydantic

    config = pydantic.ConfigDict(strict=True, arbitrary_types_allowed=True, allow_inf_nan=False)

    def make(fields: dict[str, Any]) -> Any:
        return pydantic.create_model(
            "Params",
            __config__=config,
            **{
                f"p{i}": (ann, pydantic.Field(default=None, alias=name))
                for i, (name, ann) in enumerate(fields.items())
            },
        )

    try:
        return make(hints)
    except Exception:  # a type pydantic cannot validate: check that parameter as Any
        usable = {}
        for name, ann in hints.items():
            try:
                make({name: ann})
                usable[name] = ann
            except Exception:
                usable[name] = Any
        hints.clear()
        hints.update(usable)
        return make(hints)


def _spec(fn: Callable[..., Any]) -> _Spec:
    target = fn.__init__ if inspect.isclass(fn) else fn  # type: ignore[misc]
    sig = inspect.signature(fn)
    checked = [
        (n, p)
        for n, p in sig.parameters.items()
        if n not in _UNCHECKED
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    all_hints = _resolve_hints(target, sig)
    hints = {n: all_hints[n] for n, _ in checked if n in all_hints}
    required = tuple(n for n, p in checked if p.default is inspect.Parameter.empty)
    return _Spec(hints, required, _model(hints) if hints else None)


# annotation helpers ------------------------------------------------------------------------------


def _split(ann: Any) -> tuple[Any, list[Any]]:
    """``Annotated[X, m1, m2]`` → ``(X, [m1, m2])`` (constraints of ``pydantic.Field`` included)."""
    if typing.get_origin(ann) is Annotated:
        base, *meta = typing.get_args(ann)
        flat = []
        for m in meta:
            flat.extend(getattr(m, "metadata", None) or [m])  # a FieldInfo carries its constraints
        inner, more = _split(base)
        return inner, more + flat
    return ann, []


def _members(ann: Any) -> list[Any]:
    """The alternatives of a union (``X | None`` → ``[X, NoneType]``), else ``[ann]``."""
    base = _split(ann)[0]
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(base) for m in _members(a)]
    return [ann]


def _origin(ann: Any) -> Any:
    base = _split(ann)[0]
    return typing.get_origin(base) or base


_LIST_LIKE = (list, Sequence, typing.Sequence, set, frozenset)


def _coerce(value: Any, ann: Any) -> Any:
    """The value the builder receives: ``value``, or its tuple/float form where the annotation
    asks for a tuple (a YAML list) or a number (YAML 1.1 reads ``1e-4`` as a string)."""
    members = _members(ann)
    origins = [_origin(m) for m in members]
    if isinstance(value, list) and tuple in origins and not any(o in _LIST_LIKE for o in origins):
        return tuple(value)
    if isinstance(value, str) and float in origins and str not in origins and Any not in origins:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _for_validation(value: Any, ann: Any) -> Any:
    """A copy of ``value`` pydantic's strict mode can judge: a numpy or 0-d torch scalar given for
    a number as a Python number, a tuple given for a list as a list."""
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):
        origins = [_origin(m) for m in _members(ann)]
        classes = [o for o in origins if isinstance(o, type) and o not in (int, float, bool)]
        if any(o in (int, float) for o in origins) and not any(isinstance(value, c) for c in classes):
            return value.item()
    if isinstance(value, tuple) and any(_origin(m) is list for m in _members(ann)):
        return list(value)
    return value


def _number(x: Any) -> str:
    return repr(x) if not isinstance(x, float) or not x.is_integer() else str(int(x))


def _bounds(meta: list[Any]) -> str:
    lo = hi = None
    for m in meta:
        for attr, side in (("gt", "lo"), ("ge", "lo"), ("lt", "hi"), ("le", "hi")):
            v = getattr(m, attr, None)
            if v is not None:
                if side == "lo":
                    lo = (attr, v)
                else:
                    hi = (attr, v)
    if lo and hi:
        left = "(" if lo[0] == "gt" else "["
        right = ")" if hi[0] == "lt" else "]"
        return f"in {left}{_number(lo[1])}, {_number(hi[1])}{right}"
    sym = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{sym[b[0]]} {_number(b[1])}" for b in (lo, hi) if b)


_PLURAL = {
    "a number": "numbers",
    "an integer": "integers",
    "a string": "strings",
    "true or false": "booleans",
}


def _describe(ann: Any) -> str:
    """What ``ann`` allows, in words: ``a number > 0``, ``one of 'cls', 'mean'``…"""
    members = _members(ann)
    if len(members) > 1:
        words = [_describe(m) for m in members if m is not type(None)]
        if type(None) in members:
            words.append("null")
        return " or ".join(dict.fromkeys(words))
    base, meta = _split(ann)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if base is Any:
        return "anything"
    if base is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if base is bool:
        return "true or false"
    if base in (int, float):
        word = "an integer" if base is int else "a number"
        bounds = _bounds(meta)
        return f"{word} {bounds}" if bounds else word
    if base is str:
        return "a string"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} items"
    if origin in (tuple, list, set, frozenset, Sequence, typing.Sequence) or base in (tuple, list):
        inner = _describe(args[0]) if args else ""
        return f"a list of {_PLURAL[inner]}" if inner in _PLURAL else "a list"
    if origin in (dict, Mapping) or base is dict:
        return "a mapping"
    if base is Callable or getattr(origin, "__name__", "") == "Callable":
        return "a callable"
    name = getattr(base, "__name__", None) or str(base).replace("typing.", "")
    return f"a {name}"


def _problem(key: str, value: Any, ann: Any, errors: list[dict[str, Any]]) -> str:
    """One line saying what is wrong with ``key=value``."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    top = [e for e in errors if len(e["loc"]) == 1]
    if top and len(top) == len(errors) and all(e["type"] in _RANGE_ERRORS for e in top):
        base, meta = _split(next(m for m in _members(ann) if m is not type(None)))
        allowed = _bounds(meta) or _bounds([e["ctx"] for e in top])
        allowed = f"an integer {allowed}" if base is int else allowed
    else:
        allowed = _describe(ann)
    return f"parameter {key} must be {allowed}, got {shown}"


class _Ctx:  # adapts an error's ctx dict to the attribute access _bounds uses
    def __init__(self, ctx: dict[str, Any]) -> None:
        self.__dict__.update(ctx)


def check_params(
    fn: Callable[..., Any], params: dict[str, Any], what: str, spec: _Spec | None = None
) -> dict[str, Any]:
    """Validate ``params`` against ``fn``'s signature (names, required parameters, types and
    range annotations) and return the keyword arguments to call it with; raise :class:`ConfigError`
    with one line per problem (``what`` names the component, e.g. ``loss 'clip'``)."""
    check_kwargs(fn, params, what)
    spec = spec or _spec(fn)
    missing = [n for n in spec.required if n not in params]
    lines = (
        [f"missing required parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)}"]
        if missing
        else []
    )
    out = dict(params)
    given = {k: v for k, v in params.items() if k in spec.hints}
    if given and spec.model is not None:
        import pydantic

        out.update({k: _coerce(v, spec.hints[k]) for k, v in given.items()})
        try:
            spec.model.model_validate({k: _for_validation(out[k], spec.hints[k]) for k in given})
        except pydantic.ValidationError as err:
            by_key: dict[str, list[dict[str, Any]]] = {}
            for e in err.errors():
                e = dict(e)
                e["ctx"] = _Ctx(e.get("ctx") or {})
                by_key.setdefault(str(e["loc"][0]), []).append(e)
            lines += [_problem(k, params[k], spec.hints[k], errs) for k, errs in by_key.items()]
    if lines:
        raise ConfigError("\n".join(f"{what}: {line}" for line in lines))
    return out


class Registry(Generic[T]):
    """A named collection of builders returning ``T``.

    >>> losses = Registry("loss")
    >>> @losses.register("clip")
    ... def build_clip(init_temperature: Positive = 0.07): ...
    >>> losses.build("clip", init_temperature=0.1)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}
        self._specs: dict[str, _Spec] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._builders:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._builders))}"
            )
        return self._builders[name]

    def build(self, name: str, **params: Any) -> T:
        """Call the builder ``name`` with ``params`` after :func:`check_params` validated them."""
        fn = self.get(name)
        if name not in self._specs:
            self._specs[name] = _spec(fn)
        return fn(**check_params(fn, params, f"{self.kind} {name!r}", self._specs[name]))

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
