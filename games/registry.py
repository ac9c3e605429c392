"""Every game by name, in one registry: the CLI's game names, the training games, the LangGraph apps of
`langgraph.json` and the conformance tests all read it.

A game is one `GameSpec` passed to `register_game`: its factory (a fresh game), its graph builder, its rollout
(what the training loop calls), whether it is one of the MARS training games, a one-line help and, for
`langgraph dev`, the module attribute of its LangGraph app. The built-in games register themselves when their
package is imported (`stratagem.games.strategic`, `stratagem.games.mystery`); the registry imports those packages
on first use, so `get_game_spec("tictactoe")` works without importing anything else first. A game defined outside
the package is one `register_game(GameSpec(...))` call, or an entry point of its package (stratagem.plugins).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stratagem.agents.sampling import SamplingConfig
from stratagem.games.base import GameConfig
from stratagem.plugins import PluginError, load_plugins, on_load

if TYPE_CHECKING:
    from stratagem.games.core import Episode

KINDS = ("strategic", "social")
# the packages whose import registers the built-in games (each calls register_game for its own games)
BUILTIN_PACKAGES = ("stratagem.games.strategic", "stratagem.games.mystery")


@dataclass
class RolloutJob:
    """What the training loop asks of a game's rollout: `n` finished episodes of `game`, game i seeded `seed + i`,
    the learner's seats sampled from the served model `policy` at `base_url` with `sampling` (and `api_key`, when
    the server wants one), at most `concurrency` games at once, `on_episode(ep)` called as each one finishes. The
    run's settings arrive typed: a strategic game reads `game_config` (reply format, rewards), `opponents` and
    `policy_seat` (or, in league play, `opponents_for(seed)`: the opponents of the game with that seed); a game
    with its own section of the run config (GameSpec.config_section) gets it as `section`,
    and its parameters (the mystery's `script`) as `params`."""

    game: str
    policy: str
    n: int
    seed: int
    base_url: str
    concurrency: int = 8
    on_episode: Callable[[Episode], Any] | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    api_key: str | None = None
    game_config: GameConfig = field(default_factory=GameConfig)
    opponents: list[str] = field(default_factory=list)
    opponents_for: Callable[[int], list[str]] | None = None
    # per-role adapters: the served model of each role's seats (role_model); empty: `policy` in every seat
    role_policies: dict[str, str] = field(default_factory=dict)
    policy_seat: str = "first"
    section: Any = None
    params: dict[str, Any] = field(default_factory=dict)


def role_model(policy: str, role: str) -> str:
    """The served name of role `role`'s adapter of policy `policy` under per-role adapters (iter-3-X); the base
    model is every role's before the first update."""
    return policy if policy == "base" else f"{policy}-{role}"


@dataclass(frozen=True)
class GameSpec:
    """One registered game.

    - `factory(config=None, **params)` returns a fresh game object (the `Game` interface of games/base.py for a
      strategic game).
    - `build_graph(...)` compiles the game's LangGraph graph (for a strategic game `games.graph.build_graph`:
      `build_graph(game_or_factory, agents, config=None, checkpointer=None)`).
    - `rollout(job: RolloutJob)` plays `job.n` episodes for training and returns them in seed order.
    - `training`: one of the games MARS trains on (the default of `--games`; the others are held out).
    - `app`: "module:attribute" of the game's LangGraph app (a compiled graph or a graph factory) that
      `langgraph.json` lists; None: not served.
    - `check(workdir=None)`: the game's conformance check; None: `games.testing.check_game(name)`, which needs the
      `Game` interface.
    - `config_section`: the section of the run config that holds the game's own settings (`RunConfig.<section>`,
      handed to its rollout as `RolloutJob.section`); None: the strategic games' shared sections.
    """

    name: str
    kind: str
    factory: Callable[..., Any]
    build_graph: Callable[..., Any]
    rollout: Callable[[RolloutJob], Awaitable[list[Episode]]]
    training: bool = False
    help: str = ""
    app: str | None = None
    check: Callable[..., Any] | None = None
    config_section: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum() or self.name != self.name.lower():
            raise ValueError(f"GameSpec.name must be lower-case letters, digits and '_', got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"GameSpec {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for attr in ("factory", "build_graph", "rollout"):
            if not callable(getattr(self, attr)):
                raise ValueError(f"GameSpec {self.name!r}: {attr} must be callable, got {getattr(self, attr)!r}")
        if self.app is not None and self.app.count(":") != 1:
            raise ValueError(f"GameSpec {self.name!r}: app must be 'module:attribute', got {self.app!r}")


_GAMES: dict[str, GameSpec] = {}
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for package in BUILTIN_PACKAGES:
            importlib.import_module(package)
    load_plugins("games")  # games of other installed packages (entry points), after the built-in ones; once


def _accept_plugin(obj: Any, where: str) -> None:
    for spec in obj if isinstance(obj, (list, tuple)) else [obj]:
        if not isinstance(spec, GameSpec):
            raise PluginError(f"{where} names {type(spec).__name__}, not a GameSpec, a list of them or a module "
                              "that registers its games")
        register_game(spec)  # the same spec twice is a no-op


on_load("games", _accept_plugin)


def register_game(spec: GameSpec, *, replace: bool = False) -> GameSpec:
    """Add `spec` to the registry and return it. A second game of the same name is an error unless `replace`."""
    if not isinstance(spec, GameSpec):
        raise TypeError(f"register_game expects a GameSpec, got {type(spec).__name__}")
    if spec.name in _GAMES and not replace and _GAMES[spec.name] is not spec:
        raise ValueError(f"a game named {spec.name!r} is already registered; pass replace=True to replace it")
    _GAMES[spec.name] = spec
    return spec


def unregister_game(name: str) -> GameSpec:
    """Remove a game (tests that register one of their own clean up with this)."""
    _load_builtins()
    if name not in _GAMES:
        raise ValueError(f"unknown game {name!r}; expected one of {', '.join(_GAMES)}")
    return _GAMES.pop(name)


def get_game_spec(name: str) -> GameSpec:
    """The spec of game `name`; an unknown name is an error listing the registered ones."""
    _load_builtins()
    try:
        return _GAMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown game {name!r}; expected one of {', '.join(_GAMES)}") from None


def game_names(kind: str | None = None, *, training: bool | None = None) -> tuple[str, ...]:
    """Registered game names in registration order, optionally only those of one kind ("strategic", "social")
    and / or only training (True) or held-out (False) games."""
    _load_builtins()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return tuple(n for n, s in _GAMES.items()
                 if (kind is None or s.kind == kind) and (training is None or s.training == training))


def game_specs() -> tuple[GameSpec, ...]:
    """Every registered spec, in registration order."""
    _load_builtins()
    return tuple(_GAMES.values())


def make_game(name: str, config: Any = None, **params: Any) -> Any:
    """A fresh game of `name`: the spec's `factory(config, **params)`. For strategic games `config` is a
    `GameConfig` and `params` override the OpenSpiel parameters the game declares (the Hanabi sizes)."""
    return get_game_spec(name).factory(config, **params)


def __getattr__(name: str) -> Any:
    # computed on access, so a game registered later is included
    if name == "GAME_NAMES":  # the games `stratagem play` takes a --players list for (strategic)
        return game_names("strategic")
    if name == "TRAINING_GAMES":
        return game_names(training=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
