"""Name → builder registries, so every component is selectable from a config.

A :class:`Registry` maps a name (``"clip"``, ``"timm"``) to a callable. ``build`` checks the keyword
arguments against the callable's signature before calling it, so a typo in a config
(``temprature: 0.1``) fails with the valid parameter names instead of a ``TypeError`` deep inside.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from contrastkit.core.errors import ConfigError, UnknownNameError

__all__ = ["Registry", "check_kwargs"]

T = TypeVar("T")


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


class Registry(Generic[T]):
    """A named collection of builders returning ``T``.

    >>> losses = Registry("loss")
    >>> @losses.register("clip")
    ... def build_clip(init_temperature: float = 0.07): ...
    >>> losses.build("clip", init_temperature=0.1)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

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
        fn = self.get(name)
        check_kwargs(fn, params, f"{self.kind} {name!r}")
        return fn(**params)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
