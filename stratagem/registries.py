"""A registry of named objects of one kind (advantage estimators, losses, label producers), the one mechanism behind
each `register_*` / `get_*` / `unregister_*` / `*_names` of the training package (after verl's registries)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from stratagem.plugins import load_plugins

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects by name. Registering the same object again is a no-op, another one under a taken name an error;
    the entry points of plugin group `plugins` (stratagem.plugins) are loaded on the first lookup."""

    def __init__(self, kind: str, plugins: str):
        self.kind, self.plugins = kind, plugins
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove `name` (tests that register one of their own); an unknown name is a no-op."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        load_plugins(self.plugins)
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {sorted(self._items)}") from None

    def items(self) -> dict[str, T]:
        """Every registered object by name, plugins included."""
        load_plugins(self.plugins)
        return dict(self._items)
