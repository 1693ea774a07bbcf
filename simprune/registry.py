"""A small name -> factory registry whose errors list what is known."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually factories) for configs and the command line.

    ``fill`` names the module whose import registers the entries (``"simprune.frameworks"`` for the
    framework registry, which the config layer below the frameworks owns): it is imported the first
    time the registry is read, so that a lower layer can hold a registry an upper layer fills
    without importing it.
    """

    def __init__(self, kind: str, fill: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._fill = fill

    def _filled(self) -> dict[str, T]:
        if self._fill is not None:
            module, self._fill = self._fill, None
            importlib.import_module(module)
        return self._items

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")``."""

        def add(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> T:
        """Remove ``name`` (e.g. a test's temporary entry) and return what was registered."""
        if name not in self._items:
            raise KeyError(f"{self.kind} {name!r} is not registered")
        return self._items.pop(name)

    def get(self, name: str) -> T:
        """The object registered as ``name``; a ``KeyError`` naming the known ones otherwise."""
        if name not in self._filled():
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}.{hint}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._filled())

    def __contains__(self, name: object) -> bool:
        return name in self._filled()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
