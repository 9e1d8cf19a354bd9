"""Name -> factory registries with a decorator, and ``module:function`` for a user's own factory."""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, TypeVar

__all__ = ["Registry", "import_object"]

F = TypeVar("F", bound=Callable[..., Any])


def import_object(spec: str) -> Any:
    """The object named by ``package.module:attribute``; errors say what was looked for."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{spec!r}: expected 'module:function'")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"{spec!r}: cannot import module {module!r} ({e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{spec!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


class Registry:
    """Factories by name: ``@REG.register("name")`` adds one, ``REG.get("name")`` finds it.

    A name containing ``:`` that is not registered is imported as ``module:function``.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[F], F]:
        """Decorator adding ``fn`` under ``name`` (a second registration of a name is an error)."""

        def add(fn: F) -> F:
            if name in self._items and self._items[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            self._help[name] = help or (fn.__doc__ or "").strip().splitlines()[0] if (help or fn.__doc__) else ""
            return fn

        return add

    def get(self, name: str) -> Callable[..., Any]:
        """The factory for ``name``; an unknown name lists the known ones and the closest match."""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return import_object(name)
        close = difflib.get_close_matches(name, list(self._items), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._items))}, "
                       "or 'module:function' for your own")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        """Name -> one-line description."""
        return {n: self._help.get(n, "") for n in self.names()}

    def __contains__(self, name: str) -> bool:
        return name in self._items
