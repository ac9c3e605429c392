"""Any Stratagem game as a compiled LangGraph StateGraph: a referee node routes, by conditional edges, to the node of
the seat to act; each seat node asks its agent and hands the reply to the game.

All of a game's state is in the graph state: the seed, the seat specs and every reply the game was given (`acts`),
with the record of each referee task between them (a game's judges and helpers, games/base.py: the referee node
does a task when the game names one, before routing to the next seat).
A game is a deterministic function of those (its chance events come from the seed), so any node rebuilds the game
object by replaying the acts onto a fresh one; a checkpointer therefore persists a game and any graph built for the
same game resumes it (the human agent pauses with a LangGraph interrupt). Rebuilding is skipped while a game object
already holds exactly the state's acts (the usual case within one run), so a step costs little beyond the agent.

Seats are either fixed agents (`build_graph(game, [agent0, agent1])`) or a `Seating`, which reads the seat specs of
a new game from the run's LangGraph context (`context_schema`) and makes the agents (the LangGraph apps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, runtime_checkable

import openai
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from stratagem.agents.base import Agent
from stratagem.games.base import Game
from stratagem.games.core import Episode, Reply, Seat, Turn


@dataclass
class GraphConfig:
    """How a game graph runs."""

    seed: int = field(default=0, metadata={"help": "Seed the game is reset with when the input state names none."})
    recursion_limit_margin: int = field(default=10, metadata={"help": "Graph steps allowed beyond two per turn of "
                                        "the game's maximum length.", "min": 0})
    episode_in_state: bool = field(default=False, metadata={"help": "Put the finished Episode (as a dict) into the "
                                   "final state under `episode` (the apps do; a rollout reads the game object)."})


class PlayState(TypedDict, total=False):
    seed: int  # the game's seed (input; GraphConfig.seed when absent)
    players: list[str]  # the agent spec of each seat (recorded when the game starts)
    acts: list[dict[str, Any]]  # every reply given to the game, in order: {"seat": i, **Reply fields}, and each
    # referee task's outcome where it fell: {"referee": task, "record": {...}}
    seat: int | None  # the seat to act next; None once the game is over
    returns: list[float]  # per-seat returns, once the game is over
    episode: dict[str, Any]  # the finished Episode (GraphConfig.episode_in_state)


@runtime_checkable
class Seating(Protocol):
    """Seats chosen per run: `players(context)` gives the agent specs of a new game from the run's context (an
    instance of `context_schema`, or None), `agents(players, context)` the agents for those specs."""

    @property
    def context_schema(self) -> type: ...  # read-only, so an implementation may name a subclass's type

    def players(self, context: Any) -> list[str]: ...

    def agents(self, players: list[str], context: Any) -> Sequence[Agent]: ...


def act_record(seat: int, reply: Reply) -> dict[str, Any]:
    """The state's record of one reply."""
    return {"seat": seat, **dataclasses.asdict(reply)}


def reply_of(record: dict[str, Any]) -> Reply:
    """The Reply an act record holds."""
    return Reply(**{k: v for k, v in record.items() if k != "seat"})


def apply_act(game: Game, record: dict[str, Any]) -> None:
    """Give `game` one record of the state again: a seat's reply, or a referee task's outcome."""
    if "referee" in record:
        game.apply_referee(record["referee"], record["record"])
    else:
        game.step(record["seat"], reply_of(record))


def replay(game: Game, seed: int, acts: Sequence[dict[str, Any]]) -> Game:
    """`game` reset with `seed` and given every act of `acts` again: the state the acts led to."""
    game.reset(seed)
    for a in acts:
        apply_act(game, a)
    return game


class _Copy:
    """A game object and the acts it has been given since its reset with `seed` (None: not reset yet)."""

    def __init__(self, game: Game):
        self.game = game
        self.seed: int | None = None
        self.applied: list[dict[str, Any]] = []

    def matches(self, seed: int, acts: Sequence[dict[str, Any]]) -> bool:
        """Whether this copy is at a state that `acts` continue."""
        return (self.seed == seed and len(self.applied) <= len(acts)
                and all(a is b or a == b for a, b in zip(self.applied, acts)))

    def sync(self, seed: int, acts: Sequence[dict[str, Any]]) -> Game:
        if not self.matches(seed, acts):
            self.game.reset(seed)
            self.seed, self.applied = seed, []
        for a in acts[len(self.applied):]:
            apply_act(self.game, a)
            self.applied.append(a)
        return self.game


class _Games:
    """Game objects for the graph's nodes. A node takes one for its whole call (so runs of different threads never
    share one), brought to the state's acts, and gives it back; the graph state stays the only record."""

    def __init__(self, game: Game | Callable[[], Game], keep: int = 8):
        self.single: Game | None = game if isinstance(game, Game) else None
        self.factory: Callable[[], Game] | None = None if isinstance(game, Game) else game
        self.free: list[_Copy] = [_Copy(self.single)] if self.single is not None else []
        self.keep = keep

    def take(self, seed: int, acts: Sequence[dict[str, Any]]) -> _Copy:
        for i, c in enumerate(self.free):
            if c.matches(seed, acts):
                return self.free.pop(i)
        if self.free:
            return self.free.pop()
        if self.factory is None:
            assert self.single is not None  # _Games holds either a single game or a factory
            raise RuntimeError(f"{self.single.info.name}: one game object cannot play two runs at once; build the "
                               "graph with a game factory (lambda: make_game(name)) instead")
        return _Copy(self.factory())

    def give(self, copy: _Copy) -> None:
        if len(self.free) < self.keep:
            self.free.append(copy)


def build_graph(game: Game | Callable[[], Game], agents: Sequence[Agent] | Seating,
                config: GraphConfig | None = None, checkpointer: Any = None, *,
                referees: Mapping[str, Agent] | None = None, on_turn: Callable[[Turn], Any] | None = None):
    """A compiled graph that plays one game with `agents[i]` in seat i, or with the seats a `Seating` picks from
    each run's context. Invoke it with `initial_state(seed)`. Given a game object, that object follows the run
    (afterwards `episode_of(game, agents)` packs the result; one run at a time); given a factory
    (`lambda: make_game("tictactoe")`), any number of threads can run at once. `referees` (role -> agent) do the
    game's referee tasks; `on_turn(turn)` is called after every act (progress bars)."""
    settings = config or GraphConfig()
    helpers: Mapping[str, Agent] = referees or {}
    games = _Games(game)
    if games.single is not None:
        proto = games.single
    else:
        assert games.factory is not None  # _Games holds either a single game or a factory
        proto = games.factory()
    n = proto.info.num_players
    # exactly one of `seating` and `fixed` is set
    seating: Seating | None = agents if isinstance(agents, Seating) else None
    fixed: list[Agent] | None = None if isinstance(agents, Seating) else list(agents)
    if fixed is not None and len(fixed) != n:
        raise ValueError(f"{proto.info.name} needs {n} agents, got {len(fixed)}")

    def seed_of(state: PlayState) -> int:
        return int(state.get("seed", settings.seed))

    def agents_of(state: PlayState, runtime: Runtime) -> Sequence[Agent]:
        if fixed is not None:
            return fixed
        assert seating is not None
        return seating.agents(state["players"], runtime.context)

    # async nodes: a sync node would run in a worker thread, a costly hop per step
    async def referee(state: PlayState, runtime: Runtime) -> dict[str, Any]:
        acts = state.get("acts") or []
        out: dict[str, Any] = {}
        if not acts:  # a new game: record who plays it
            if fixed is not None:
                players = [getattr(a, "name", type(a).__name__) for a in fixed]
            else:
                assert seating is not None
                players = list(seating.players(runtime.context))
            if len(players) != n:
                raise ValueError(f"{proto.info.name} needs {n} players, got {len(players)}: {players}")
            out.update(seed=seed_of(state), players=players, acts=[])
        copy = games.take(seed_of(state), acts)
        try:
            g = copy.sync(seed_of(state), acts)
            done: list[dict[str, Any]] = []
            while (task := g.referee_task()) is not None:
                outcome = await g.referee(task, helpers)
                g.apply_referee(task, outcome)
                record: dict[str, Any] = {"referee": task, "record": outcome}
                copy.applied.append(record)
                done.append(record)
            if done:
                out["acts"] = [*acts, *done]
            seat = g.current_seat()
            if seat is not None:
                return {**out, "seat": seat}
            ep = g.episode(_seats(g, out.get("players") or state.get("players") or []))
            out.update(seat=None, returns=list(ep.returns))
            if settings.episode_in_state:
                out["episode"] = ep.to_dict()
            return out
        finally:
            games.give(copy)

    def seat_node(seat: int):
        async def act(state: PlayState, runtime: Runtime) -> dict[str, Any]:
            acts = state.get("acts") or []
            agent = agents_of(state, runtime)[seat]
            copy = games.take(seed_of(state), acts)
            try:
                obs = copy.sync(seed_of(state), acts).observe(seat)
                try:
                    reply = await agent.act(obs)
                except openai.BadRequestError as e:
                    if "maximum context length" not in str(e):
                        raise
                    # the seat's chat outgrew the model's context: an over-long turn (game data, not a crash)
                    reply = Reply(text="", finish_reason="length")
                record = act_record(seat, reply)
                turn = copy.game.step(seat, reply)
                copy.applied.append(record)
                if on_turn is not None:
                    on_turn(turn)
                return {"acts": [*acts, record]}
            finally:
                games.give(copy)

        return act

    async def route(state: PlayState) -> str:
        return END if state["seat"] is None else f"seat_{state['seat']}"

    sg = StateGraph(PlayState, context_schema=seating.context_schema if seating is not None else None)
    sg.add_node("referee", referee)
    for i in range(n):
        sg.add_node(f"seat_{i}", seat_node(i))
        sg.add_edge(f"seat_{i}", "referee")
    sg.add_edge(START, "referee")
    sg.add_conditional_edges("referee", route, [END, *(f"seat_{i}" for i in range(n))])
    return sg.compile(checkpointer=checkpointer, name=proto.info.name).with_config(
        recursion_limit=2 * proto.info.max_turns + settings.recursion_limit_margin)


def _seats(game: Game, players: Sequence[str]) -> list[Seat]:
    return [Seat(index=i, role=game.info.roles[i], agent=players[i] if i < len(players) else "")
            for i in range(game.info.num_players)]


def initial_state(seed: int | None = None) -> PlayState:
    """The input of a new game (seeded `seed`, else GraphConfig.seed)."""
    return {"acts": []} if seed is None else {"seed": seed, "acts": []}


def episode_of(game: Game, agents: Sequence[Agent]) -> Episode:
    seats = [Seat(index=i, role=game.info.roles[i], agent=a.name) for i, a in enumerate(agents)]
    return game.episode(seats)


async def play(game: Game, agents: Sequence[Agent], seed: int = 0, *, referees: Mapping[str, Agent] | None = None,
               on_turn: Callable[[Turn], Any] | None = None) -> Episode:
    """Play one game through its graph and return the Episode."""
    graph = build_graph(game, agents, GraphConfig(seed=seed), referees=referees, on_turn=on_turn)
    await graph.ainvoke(initial_state())
    return episode_of(game, agents)
