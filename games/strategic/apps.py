"""The strategic games as LangGraph apps for `langgraph dev` (see langgraph.json): each thread is one game.
Seats come from $STRATAGEM_PLAYERS (default `human,random`; `llm:MODEL` seats use $STRATAGEM_BASE_URL); a human
seat pauses the run with an interrupt, resumed with the move."""

from __future__ import annotations

import os

from langgraph.checkpoint.memory import InMemorySaver

from stratagem.agents import make_agent
from stratagem.games.graph import build_graph
from stratagem.games.registry import make_game


def _app(name: str):
    specs = os.environ.get("STRATAGEM_PLAYERS", "human,random").split(",")
    base_url = os.environ.get("STRATAGEM_BASE_URL", "http://127.0.0.1:8000/v1")
    agents = [make_agent(s, base_url=base_url if s.startswith("llm:") else None, seed=i, game=name)
              for i, s in enumerate(specs)]
    # `langgraph dev` supplies its own persistence; a plain import (tests, scripts) gets an in-memory one
    saver = None if os.environ.get("LANGGRAPH_API_URL") or os.environ.get("LANGSMITH_LANGGRAPH_API_VARIANT") \
        else InMemorySaver()
    return build_graph(lambda: make_game(name), agents, checkpointer=saver)


tictactoe = _app("tictactoe")
kuhn_poker = _app("kuhn_poker")
mini_hanabi = _app("mini_hanabi")
connect_four = _app("connect_four")
leduc_poker = _app("leduc_poker")
simple_hanabi = _app("simple_hanabi")
