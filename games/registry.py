"""The games by name: `make_game(name, config=None, **params)`."""

from __future__ import annotations

from typing import Any

from stratagem.games.base import Game, GameConfig
from stratagem.games.strategic.board import ConnectFour, TicTacToe
from stratagem.games.strategic.hanabi import MiniHanabi, SimpleHanabi
from stratagem.games.strategic.poker import KuhnPoker, LeducPoker

GAMES: dict[str, type] = {g.name: g for g in (TicTacToe, KuhnPoker, MiniHanabi, ConnectFour, LeducPoker,
                                               SimpleHanabi)}
GAME_NAMES: tuple[str, ...] = tuple(GAMES)
TRAINING_GAMES: tuple[str, ...] = ("tictactoe", "kuhn_poker", "mini_hanabi")
HELD_OUT_GAMES: tuple[str, ...] = ("connect_four", "leduc_poker", "simple_hanabi")


def make_game(name: str, config: GameConfig | None = None, **params: Any) -> Game:
    """A fresh game; `params` override the OpenSpiel parameters of games that declare some (the Hanabi sizes)."""
    try:
        cls = GAMES[name]
    except KeyError:
        raise ValueError(f"unknown game {name!r}; expected one of {', '.join(GAME_NAMES)}") from None
    return cls(config, **params)
