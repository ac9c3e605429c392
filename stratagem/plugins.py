"""Games, advantage estimators and losses from other installed packages, through entry points.

A package registers its own with entry points in these groups (pyproject.toml of the plugin):

    [project.entry-points."stratagem.games"]
    liars_dice = "my_games.liars_dice:SPEC"         # a GameSpec (or a list of them), or a module that registers
    [project.entry-points."stratagem.advantages"]
    my_adv = "my_rl.advantages"                      # a module whose import registers (register_advantage)
    [project.entry-points."stratagem.losses"]
    my_loss = "my_rl.losses:MyLoss"                  # the registered class (its module's import registers it)

Each registry loads its group once, on first use, so `stratagem train --games liars_dice --algo my_adv`, `play`,
`eval games` and `langgraph.json` accept them with no change to Stratagem. A plugin that fails to load is an error
naming the entry point and its package.
"""

from __future__ import annotations

import importlib.metadata
import types
from collections.abc import Callable
from typing import Any

GROUPS = {"games": "stratagem.games", "advantages": "stratagem.advantages", "losses": "stratagem.losses"}
_loaded: set[str] = set()


class PluginError(RuntimeError):
    pass


def load_plugins(kind: str) -> list[str]:
    """Load the entry points of group `kind` (games, advantages, losses) once; returns the names loaded now."""
    group = GROUPS[kind]
    if group in _loaded:
        return []
    _loaded.add(group)
    names = []
    for ep in importlib.metadata.entry_points(group=group):
        where = f"entry point {ep.name} = {ep.value!r} (group {group}, package {_dist(ep)})"
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001  any failure in a third-party import is reported as the plugin's
            raise PluginError(f"{where} failed to load: {type(e).__name__}: {e}") from e
        if kind in _accept and not isinstance(obj, types.ModuleType):  # a module's import registered its objects
            _accept[kind](obj, where)
        names.append(ep.name)
    return names


# what registers an entry point's object of each kind, set by the registry that owns the kind (this module sits
# below the registries, so it cannot import them)
_accept: dict[str, Callable[[Any, str], None]] = {}


def on_load(kind: str, accept: Callable[[Any, str], None]) -> None:
    """`accept(obj, where)` registers an object that an entry point of group `kind` names (not a module); it raises
    PluginError (with `where`, the entry point's description) for an object it cannot take."""
    _accept[kind] = accept


def _dist(ep: importlib.metadata.EntryPoint) -> str:
    d = getattr(ep, "dist", None)
    return f"{d.name} {d.version}" if d is not None else "unknown"


def reset_plugins() -> None:
    """Forget which groups were loaded (tests that put a plugin on sys.path)."""
    _loaded.clear()
