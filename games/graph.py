"""Any Stratagem game as a compiled LangGraph StateGraph: a referee node routes, by conditional edges, to the node of
the seat to act; each seat node asks its agent and hands the reply to the game. The game object holds the rules
state; the graph state carries only the act count, who moves next and, at the end, the returns, so a step costs
little beyond the agent.

With a checkpointer a game can be paused and resumed (the human agent pauses with a LangGraph interrupt): resume
with the same compiled graph and thread id, since the game object lives with the graph. Given a game factory
instead of a game, the graph keeps one game per thread id, so a server (`langgraph dev`) can run many at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypedDict

import openai
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from stratagem.agents.base import Agent
from stratagem.games.base import Game
from stratagem.games.core import Episode, Reply, Seat


@dataclass
class GraphConfig:
    """How a game graph runs."""

    seed: int = field(default=0, metadata={"help": "Seed the game is reset with when the graph starts."})
    recursion_limit_margin: int = field(default=10, metadata={"help": "Graph steps allowed beyond two per turn of "
                                        "the game's maximum length."})


class PlayState(TypedDict, total=False):
    acts: int
    seat: int | None
    returns: list[float]


def build_graph(game: Game | Callable[[], Game], agents: Sequence[Agent], config: GraphConfig | None = None,
                checkpointer: Any = None):
    """A compiled graph that plays one game with `agents[i]` in seat i. Invoke it with `initial_state()` (which
    resets the game with `config.seed`); afterwards `episode_of(game, agents)` packs the result. `game` may be a
    factory (`lambda: make_game("tictactoe")`): then each thread id gets its own game."""
    settings = config or GraphConfig()
    games: dict[str, Game] = {}
    single = game if isinstance(game, Game) else None
    proto = single or game()
    if len(agents) != proto.info.num_players:
        raise ValueError(f"{proto.info.name} needs {proto.info.num_players} agents, got {len(agents)}")

    def game_of(cfg: RunnableConfig | None) -> Game:
        if single is not None:
            return single
        thread = ((cfg or {}).get("configurable") or {}).get("thread_id", "")
        if thread not in games:
            games[thread] = game()
        return games[thread]

    # async nodes: a sync node would run in a worker thread, a costly hop per step
    async def referee(state: PlayState, config: RunnableConfig) -> dict[str, Any]:
        g = game_of(config)
        if not state.get("acts"):  # a fresh run; a resumed one re-enters at the interrupted seat node, not here
            g.reset(settings.seed)
        seat = g.current_seat()
        return {"seat": seat} if seat is not None else {"seat": None, "returns": g.outcomes()}

    def seat_node(seat: int, agent: Agent):
        async def act(state: PlayState, config: RunnableConfig) -> dict[str, Any]:
            g = game_of(config)
            obs = g.observe(seat)
            try:
                reply = await agent.act(obs)
            except openai.BadRequestError as e:
                if "maximum context length" not in str(e):
                    raise
                # the seat's chat outgrew the model's context: an over-long turn (game data, not a crash)
                reply = Reply(text="", finish_reason="length")
            g.step(seat, reply)
            return {"acts": state.get("acts", 0) + 1}

        return act

    async def route(state: PlayState) -> str:
        return END if state["seat"] is None else f"seat_{state['seat']}"

    sg = StateGraph(PlayState)
    sg.add_node("referee", referee)
    for i, agent in enumerate(agents):
        sg.add_node(f"seat_{i}", seat_node(i, agent))
        sg.add_edge(f"seat_{i}", "referee")
    sg.add_edge(START, "referee")
    sg.add_conditional_edges("referee", route, [END, *(f"seat_{i}" for i in range(len(agents)))])
    return sg.compile(checkpointer=checkpointer, name=proto.info.name).with_config(recursion_limit=2 * proto.info.max_turns + settings.recursion_limit_margin)


def initial_state() -> PlayState:
    return {"acts": 0, "seat": None}


def episode_of(game: Game, agents: Sequence[Agent]) -> Episode:
    seats = [Seat(index=i, role=game.info.roles[i], agent=a.name) for i, a in enumerate(agents)]
    return game.episode(seats)


async def play(game: Game, agents: Sequence[Agent], seed: int = 0) -> Episode:
    """Play one game through its graph and return the Episode."""
    graph = build_graph(game, agents, GraphConfig(seed=seed))
    await graph.ainvoke(initial_state())
    return episode_of(game, agents)
