"""The LangGraph apps that `langgraph dev` serves (langgraph.json): seats from the environment, per game."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stratagem.games.graph import initial_state
from stratagem.games.strategic import apps


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(apps, "_graphs", {})
    for k in ("STRATAGEM_PLAYERS", "STRATAGEM_PLAYERS_KUHN_POKER"):
        monkeypatch.delenv(k, raising=False)


def test_langgraph_json_names_every_factory():
    spec = json.loads((Path(__file__).resolve().parents[1] / "langgraph.json").read_text())["graphs"]
    strategic = {name for name, path in spec.items() if path.startswith("./games/strategic/apps.py:")}
    assert strategic == {"tictactoe", "kuhn_poker", "mini_hanabi", "connect_four", "leduc_poker", "simple_hanabi"}
    assert all(callable(getattr(apps, name)) for name in strategic)


async def test_a_seat_that_suits_one_game_does_not_break_the_others(monkeypatch):
    monkeypatch.setenv("STRATAGEM_PLAYERS", "mcts:10,random")
    ttt = apps.tictactoe({})
    assert apps.tictactoe({}) is ttt  # built once: the game objects of its threads live with it
    cfg = {"configurable": {"thread_id": "t1"}}
    out = await ttt.ainvoke(initial_state(), cfg)
    assert out["seat"] is None and len(out["returns"]) == 2
    with pytest.raises(ValueError, match="STRATAGEM_PLAYERS_KUHN_POKER"):
        apps.kuhn_poker({})
    monkeypatch.setenv("STRATAGEM_PLAYERS_KUHN_POKER", "cfr,random")
    out = await apps.kuhn_poker({}).ainvoke(initial_state(), cfg)
    assert sum(out["returns"]) == pytest.approx(0.0)
