"""The strategic games as LangGraph apps for `langgraph dev` (see langgraph.json): each thread is one game.

Seats come from $STRATAGEM_PLAYERS_<GAME> (e.g. STRATAGEM_PLAYERS_KUHN_POKER=cfr,human), else $STRATAGEM_PLAYERS,
else `human,random`; `llm:MODEL` seats use $STRATAGEM_BASE_URL. A human seat pauses the run with an interrupt,
resumed with the move. Each name below is a graph factory: a game's graph is built on its first run, so seats that
only suit some games (mcts:N, cfr) do not stop the server from loading the others; it is kept, because the game
objects of its threads live with it.
"""

from __future__ import annotations

import os

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver

from stratagem.agents import make_agent
from stratagem.games.graph import build_graph
from stratagem.games.registry import make_game

_graphs: dict[str, object] = {}


def players(name: str) -> list[str]:
    spec = os.environ.get(f"STRATAGEM_PLAYERS_{name.upper()}") or os.environ.get("STRATAGEM_PLAYERS") \
        or "human,random"
    return [s.strip() for s in spec.split(",")]


def graph(name: str):
    """The compiled graph of game `name` with the seats the environment names (built once)."""
    if name not in _graphs:
        base_url = os.environ.get("STRATAGEM_BASE_URL", "http://127.0.0.1:8000/v1")
        try:
            agents = [make_agent(s, base_url=base_url if s.startswith("llm:") else None, seed=i, game=name)
                      for i, s in enumerate(players(name))]
        except ValueError as e:
            raise ValueError(f"{e} (set STRATAGEM_PLAYERS_{name.upper()} to seats for {name})") from e
        # `langgraph dev` supplies its own persistence; a plain import (tests, scripts) gets an in-memory one
        saver = None if os.environ.get("LANGGRAPH_API_URL") or os.environ.get("LANGSMITH_LANGGRAPH_API_VARIANT") \
            else InMemorySaver()
        _graphs[name] = build_graph(lambda: make_game(name), agents, checkpointer=saver)
    return _graphs[name]


def _factory(name: str):
    def factory(config: RunnableConfig):  # one config parameter: langgraph's graph-factory signature
        return graph(name)

    factory.__name__ = factory.__qualname__ = name
    return factory


tictactoe, kuhn_poker, mini_hanabi, connect_four, leduc_poker, simple_hanabi = (
    _factory(n) for n in ("tictactoe", "kuhn_poker", "mini_hanabi", "connect_four", "leduc_poker", "simple_hanabi"))
