"""What a registered component is, read from its code: parameters, spec id, description, card.

:func:`describe` turns one entry of a :class:`~contrastkit.core.registry.Registry` into a
:class:`Component`: its parameters (name, type with range, default) from the builder's signature
and annotations, the spec ids its docstring (or its module's) names (``L-CLIP``, ``E-ZEROSHOT``…),
and a one-line description (the docstring's first sentence). :func:`format_listing` and
:func:`format_card` render them for ``contrastkit list --verbose`` and ``contrastkit explain``;
:func:`close_matches` suggests names for a typo. Nothing here knows which registries exist: the
command layer passes them in.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
import typing
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from contrastkit.core.registry import _UNCHECKED, Registry, _bounds, _members, _resolve_hints, _split

__all__ = [
    "Component",
    "Param",
    "close_matches",
    "describe",
    "format_card",
    "format_listing",
    "spec_ids",
    "summary",
    "type_label",
]

_ID = r"[LESTD]-[A-Z0-9]+(?:-[A-Z0-9]+)*(?![\w-])"  # L-CLIP, E-ZEROSHOT, L-AM-NTXENT, D-TEXT-AUG…
_RUN = rf"{_ID}(?:\s*(?:,|/|\+|and)\s*{_ID})*"  # "L-DCL, L-DCLW", "E-WINOGROUND + E-GROUPMATCH"
_LEADING = re.compile(rf"^\s*({_RUN})")
_SPEC_MENTION = re.compile(rf"\b[Ss]pec(?:\s+ids?)?:?\s+({_RUN})")
_ANY_ID = re.compile(rf"(?<![\w-]){_ID}")
_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One configurable parameter: ``type`` in words (``float > 0``), ``default`` as Python source."""

    name: str
    type: str
    default: str | None  # None: required

    def __str__(self) -> str:
        typed = f"{self.name}: {self.type}" if self.type else self.name
        return f"{typed}  (required)" if self.default is None else f"{typed} = {self.default}"


@dataclass(frozen=True)
class Component:
    """A registered builder, described: what :func:`format_listing` and :func:`format_card` print."""

    kind: str  # the registry's kind: "loss", "tower", "evaluation task"…
    name: str
    module: str  # where the builder is defined
    target: str  # module.qualname of the builder
    params: tuple[Param, ...]
    spec_ids: tuple[str, ...]
    summary: str
    doc: str
    module_doc: str


def _clean(text: str) -> str:
    """Docstring markup as plain text: ``:func:`f``` → ``f``, double backquotes dropped."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"(?<!`)``(?!`)", "", text)  # not the ``` of a code fence


def summary(doc: str, width: int = 110) -> str:
    """The first sentence of ``doc``'s first paragraph, markup removed, cut at ``width``."""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z])", _clean(para), maxsplit=1)[0]
    return first if len(first) <= width else first[: width - 1].rstrip() + "…"


def _declared(doc: str) -> list[str]:
    """Spec ids ``doc`` claims as its own: a leading run (``L-CLIP — …``) or after ``spec``/``Spec id:``."""
    runs = [m.group(1) for m in (_LEADING.match(doc), *_SPEC_MENTION.finditer(doc)) if m]
    return list(dict.fromkeys(i for run in runs for i in _ANY_ID.findall(run)))


def _norm(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", text.upper())


def spec_ids(fn: Callable[..., Any], name: str, alone: bool = False) -> tuple[str, ...]:
    """The spec ids of builder ``fn`` registered as ``name``: those its docstring declares, else the
    id of its module's docstring that spells ``name`` (``hn_nce`` → ``L-HNNCE``), else — when
    ``alone`` (the only component of its registry in that module) — the ids the module declares."""
    own = _declared(inspect.getdoc(fn) or "")
    if own:
        return tuple(own)
    module_doc = _module_doc(fn)
    named = [i for i in _ANY_ID.findall(module_doc) if _norm(i.split("-", 1)[1]) == _norm(name)]
    if named:
        return (named[0],)
    return tuple(_declared(module_doc)) if alone else ()


def _module_doc(fn: Callable[..., Any]) -> str:
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    return inspect.cleandoc(module.__doc__ or "") if module else ""


def _type_name(ann: Any) -> str:
    if ann is type(None):
        return "None"
    if ann is Any:
        return "Any"
    if isinstance(ann, str):
        return ann
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is None:
        return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
    inner = ", ".join(
        "..."
        if a is Ellipsis
        else "[" + ", ".join(map(type_label, a)) + "]"
        if isinstance(a, list)
        else type_label(a)
        for a in args
    )
    return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if args else _type_name(origin)


def type_label(ann: Any) -> str:
    """An annotation in short words: ``Annotated[float, Gt(0)]`` → ``float > 0``,
    ``PositiveInt | None`` → ``int >= 1 | None``, ``Literal['cls', 'mean']`` → ``'cls' | 'mean'``."""
    members = _members(ann)
    if len(members) > 1:
        return " | ".join(dict.fromkeys(type_label(m) for m in members))
    base, meta = _split(ann)
    bounds = _bounds(meta)
    name = _type_name(base)
    return f"{name} {bounds}" if bounds else name


def _params(fn: Callable[..., Any], runtime: Collection[str]) -> tuple[Param, ...]:
    sig = inspect.signature(fn)
    target = fn.__init__ if inspect.isclass(fn) else fn  # type: ignore[misc]
    hints = _resolve_hints(target, sig)
    out = []
    for name, p in sig.parameters.items():
        if name in _UNCHECKED or name in runtime or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in hints:
            kind = type_label(hints[name])
        else:
            kind = "" if p.annotation is _MISSING else _type_name(p.annotation)
        out.append(Param(name, kind, None if p.default is _MISSING else repr(p.default)))
    return tuple(out)


def describe(registry: Registry[Any], name: str, runtime: Collection[str] = ()) -> Component:
    """Component ``name`` of ``registry``; parameters in ``runtime`` (filled in by the caller at run
    time, e.g. a data set's ``split``) are left out, as are ``self``/``context``/``*args``/``**kw``."""
    fn = registry.get(name)
    module = getattr(fn, "__module__", None)
    alone = sum(getattr(registry.get(n), "__module__", None) == module for n in registry.names()) == 1
    doc = inspect.getdoc(fn) or ""
    return Component(
        kind=registry.kind,
        name=name,
        module=str(module),
        target=f"{module}.{getattr(fn, '__qualname__', name)}",
        params=_params(fn, runtime),
        spec_ids=spec_ids(fn, name, alone),
        summary=summary(doc),
        doc=doc,
        module_doc=_module_doc(fn),
    )


def format_listing(components: Iterable[Component], verbose: bool = False) -> str:
    """One name per line; ``verbose``: name, spec ids and description, then one line per parameter."""
    lines = []
    for c in components:
        if not verbose:
            lines.append(c.name)
            continue
        ids = f"  [{', '.join(c.spec_ids)}]" if c.spec_ids else ""
        lines.append(f"{c.name}{ids}  {c.summary}".rstrip())
        lines.extend(f"    {p}" for p in c.params)
    return "\n".join(lines)


def format_card(c: Component) -> str:
    """Everything known about ``c``: header, spec ids, parameters, its docstring and its module's
    (markup removed)."""
    lines = [f"{c.name} — {c.kind} ({c.target})"]
    if c.spec_ids:
        lines.append(f"spec id{'s' if len(c.spec_ids) > 1 else ''}: {', '.join(c.spec_ids)}")
    lines.append("parameters:" if c.params else "parameters: none")
    lines.extend(f"  {p}" for p in c.params)
    lines += ["", _clean(c.doc) or "(no docstring)"]
    if c.module_doc:
        lines += ["", f"module {c.module}:", _clean(c.module_doc)]
    return "\n".join(lines)


def close_matches(name: str, names: Iterable[str], n: int = 5, cutoff: float = 0.5) -> list[str]:
    """Up to ``n`` of ``names`` that look like ``name`` (``difflib``, ignoring case and ``-``/``_``),
    best first."""
    by_key = {_key(x): x for x in names}
    return [by_key[k] for k in difflib.get_close_matches(_key(name), list(by_key), n=n, cutoff=cutoff)]


def _key(name: str) -> str:
    return name.lower().replace("-", "_")
