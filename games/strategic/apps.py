"""The strategic games as LangGraph apps for `langgraph dev` (langgraph.json): one compiled graph per registered
strategic game, each thread one game.

Seats come from the run's context (`context_schema` = `Seats`): `{"players": ["cfr", "human"], "base_url": ...}`,
default a human in seat 0 and random bots in the others. The seats are recorded in the graph state when the game
starts, so a later run of the thread (the resume of a human move, which need not repeat the context) keeps them. A
human seat pauses the run with an interrupt; resume it with the move (`Command(resume="<BET>")`). All game state is
in the graph state: with a checkpointer (langgraph dev brings its own) a game survives the process that started it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stratagem.agents.base import Agent
from stratagem.games.graph import GraphConfig, build_graph
from stratagem.games.registry import game_names, get_game_spec, make_game

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


@dataclass
class Seats:
    """The per-run settings of a game app (its LangGraph context)."""

    players: list[str] = field(default_factory=list, metadata={"help": "Agent spec of each seat (llm:MODEL, random, "
                               "mcts:N, cfr, human); empty: human in seat 0, random in the others. Read when a game "
                               "starts; later runs of the thread keep the game's seats."})
    base_url: str = field(default=DEFAULT_BASE_URL, metadata={"help": "OpenAI-compatible endpoint of llm: seats."})


def _seats(context: Any) -> Seats:
    if context is None:
        return Seats()
    if isinstance(context, Seats):
        return context
    if isinstance(context, Mapping):
        unknown = set(context) - {"players", "base_url"}
        if unknown:
            raise ValueError(f"unknown context field(s) {sorted(unknown)}; expected players, base_url")
        players = context.get("players") or []
        if isinstance(players, str):
            players = players.split(",")
        return Seats(players=[p.strip() for p in players], base_url=context.get("base_url") or DEFAULT_BASE_URL)
    raise ValueError(f"context must be a Seats or a mapping, got {type(context).__name__}")


class AppSeating:
    """The `Seating` of a game app: seats from the run's context, agents made once per (specs, endpoint)."""

    context_schema = Seats

    def __init__(self, game: str, keep: int = 16):
        self.game = game
        self.num_players = make_game(game).info.num_players
        self._agents: OrderedDict[tuple, list[Agent]] = OrderedDict()
        self.keep = keep

    def players(self, context: Any) -> list[str]:
        players = list(_seats(context).players) or ["human"] + ["random"] * (self.num_players - 1)
        if len(players) != self.num_players:
            raise ValueError(f"context players: {self.game} needs {self.num_players} seats, got {players}")
        return players

    def agents(self, players: list[str], context: Any) -> Sequence[Agent]:
        from stratagem.agents import make_agent

        base_url = _seats(context).base_url
        key = (tuple(players), base_url)
        if key not in self._agents:
            try:
                self._agents[key] = [make_agent(s, base_url=base_url if s.startswith("llm:") else None, seed=i,
                                                game=self.game) for i, s in enumerate(players)]
            except ValueError as e:
                raise ValueError(f"context players {players}: {e}") from e
            while len(self._agents) > self.keep:  # bots hold little; LLM agents an HTTP client each
                self._agents.popitem(last=False)
        self._agents.move_to_end(key)
        return self._agents[key]


def build_app(name: str, checkpointer: Any = None):
    """The LangGraph app of strategic game `name`: seats from each run's context, the finished Episode in the final
    state (`episode`). Without a checkpointer here, `langgraph dev` supplies its own."""
    spec = get_game_spec(name)
    if spec.kind != "strategic":
        raise ValueError(f"{name} is a {spec.kind} game; build_app serves strategic games")
    return build_graph(lambda: make_game(name), AppSeating(name), GraphConfig(episode_in_state=True),
                       checkpointer=checkpointer)


# one module attribute per registered strategic game (what langgraph.json names)
for _name in game_names("strategic"):
    globals()[_name] = build_app(_name)
