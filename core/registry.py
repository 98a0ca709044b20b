"""One generic registry: specs name entries by key; nothing in a spec is ever imported or called."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of implementations, filled by decorators at import time."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator: file ``entry`` under ``key`` (each key once)."""

        def add(entry: T) -> T:
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = entry
            return entry

        return add

    def get(self, key: str) -> T:
        """The entry for ``key``; a KeyError that lists the known keys otherwise."""
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {key!r}; known: {sorted(self._entries)}") from None

    def keys(self) -> list[str]:
        """Registered keys, sorted."""
        return sorted(self._entries)
