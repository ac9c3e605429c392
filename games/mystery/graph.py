"""The murder mystery's LangGraph app: one graph for any script, the script and the human seats named in each
run's input. (Training, evaluation and `play_episode` play the mystery as a `Game` through the one graph builder of
games/graph.py; this graph exists for what that one cannot do: choose the script per thread and pause a human
character with a free-text reply. Its nodes call the same `Mystery` for the rules and the referee.)

    START -> setup -> introduction* -> (converse -> answer?)* -> select* -> vote* -> judge -> END

(`select` is a forced investigation per player at the end of a stage, for scripts whose rules have one; a stage
may open with introductions again: rules.py.)

`setup` loads the script and deals the seats; each phase node performs exactly ONE act of one character (so a
human seat's `interrupt()` re-runs nothing but its own act on resume) and a conditional edge routes to the node of
the next act's phase; `judge` scores the game and writes the finished Episode into the state (`episode`).

Input: `{"script": NAME_OR_PATH, "seed": int, "human_seats": [character, ...], "summaries": {character:
[summary per stage]}}` (all optional; summaries come from summary.prepare_summaries). A human seat needs
a checkpointer: the graph stops with an interrupt carrying the character's observation and resumes with
`Command(resume=TEXT)`.

`app` is the graph for `langgraph.json` (no checkpointer; `langgraph dev` brings its own): its players and judge
are language models at `$STRATAGEM_BASE_URL` (default http://127.0.0.1:8000/v1) served as `$STRATAGEM_PLAYER_MODEL`
and `$STRATAGEM_JUDGE_MODEL` (default `base`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from stratagem.agents.base import Agent
from stratagem.games.core import Observation, Reply, Seat, Turn
from stratagem.games.mystery.game import (
    ANSWER,
    CONVERSE,
    INTRODUCTION,
    JUDGE,
    SELECT,
    VOTE,
    MysteryConfig,
    MysteryGame,
    MysteryState,
)
from stratagem.games.mystery.library import load_script
from stratagem.games.mystery.mystery import HUMAN, Mystery

DEFAULT_SCRIPT = "lighthouse"
PHASE_NODES = {INTRODUCTION: "introduction", CONVERSE: "converse", ANSWER: "answer", SELECT: "select", VOTE: "vote",
               JUDGE: "judge"}


class MysteryGraphState(TypedDict, total=False):
    script: str
    seed: int
    human_seats: list[str]
    summaries: dict[str, list[str]]
    game: dict[str, Any]
    episode: dict[str, Any]


Players = Agent | Mapping[str, Agent]


def agent_for(players: Players, name: str) -> Agent:
    if isinstance(players, Mapping):
        if name not in players:
            raise KeyError(f"no agent for character {name!r}; given: {', '.join(players)}")
        return players[name]
    return players


def human_reply(value: Any) -> Reply:
    """The resume value of a human seat: the reply text, or a mapping with `text`."""
    text = value.get("text", "") if isinstance(value, Mapping) else str(value)
    return Reply(text=text, model=HUMAN)


def build_graph(players: Players, judge: Agent | Mapping[str, Agent], config: MysteryConfig | None = None, *,
                checkpointer: Any = None, on_turn: Callable[[Turn], None] | None = None,
                evaluator: Agent | None = None, summariser: Agent | None = None,
                count_tokens: Callable[[str], int] | None = None):
    """Compile the game graph. `players`: one agent for every seat, or character name -> agent; `judge`: the
    agent that scores (see judge.py), or under the mirage protocol faction -> agent (each statement is judged by
    its speaker's side; mirage_judge.py); `evaluator`: mirage's evaluation model for ICI and SCI (default: the
    civilians' judge); `summariser`: the model that summarises the history once it passes `config.history_tokens`
    (mirage; default: the evaluator), counted by `count_tokens` (default: the tokenizer of `config.tokenizer`);
    `on_turn` is called after every act (progress bars)."""
    cfg = config or MysteryConfig()
    referees: dict[str, Agent] = dict(judge) if isinstance(judge, Mapping) else {"judge": judge}
    referees.update({k: v for k, v in (("evaluator", evaluator), ("summariser", summariser)) if v is not None})

    def setup(state: MysteryGraphState) -> dict[str, Any]:
        script = load_script(state.get("script") or DEFAULT_SCRIPT)
        humans = list(state.get("human_seats") or cfg.human_seats)
        unknown = [h for h in humans if h not in script.characters]
        if unknown:
            raise ValueError(f"human_seats {unknown} are not characters of {script.name} "
                             f"({', '.join(script.characters)})")
        game = Mystery.deal(script, int(state.get("seed", 0)), cfg, state.get("summaries"))
        return {"game": game.state.to_dict(), "human_seats": humans}

    def restore(state: MysteryGraphState) -> Mystery:
        return Mystery.restore(MysteryState.from_dict(state["game"]), cfg, count_tokens)

    async def act(state: MysteryGraphState) -> dict[str, Any]:
        game = restore(state)
        while (task := game.referee_task()) is not None:  # the history summary, due before an act
            game.apply_referee(task, await game.referee(task, referees))
        name = game.acting()
        obs: Observation = game.observation(game.retry_reason())
        if name in state.get("human_seats", []):
            reply = human_reply(interrupt({"character": name, "phase": obs.phase, "messages": obs.messages,
                                           "legal_actions": obs.legal_actions}))
        else:
            reply = await agent_for(players, name).act(obs)
        turn = game.apply(obs, reply, reply.model)
        if on_turn is not None:
            on_turn(turn)
        return {"game": game.state.to_dict()}

    async def judge_node(state: MysteryGraphState) -> dict[str, Any]:
        game = restore(state)
        if cfg.protocol != "mirage" and isinstance(judge, Mapping):
            raise TypeError(f"the {cfg.protocol} protocol takes one judge agent, not faction -> agent")
        while (task := game.referee_task()) is not None:
            game.apply_referee(task, await game.referee(task, referees))
        humans = state.get("human_seats", [])
        seats = [Seat(index=i, role=n, agent=HUMAN if n in humans else getattr(agent_for(players, n), "name", "agent"))
                 for i, n in enumerate(game.script.characters)]
        return {"episode": game.episode(seats).to_dict()}

    def route(state: MysteryGraphState) -> str:
        return PHASE_NODES[state["game"]["phase"]]

    g = StateGraph(MysteryGraphState)
    g.add_node("setup", setup)
    for phase in (INTRODUCTION, CONVERSE, ANSWER, SELECT, VOTE):
        g.add_node(PHASE_NODES[phase], act)
    g.add_node("judge", judge_node)
    g.add_edge(START, "setup")
    for node in ("setup", "introduction", "converse", "answer", "select", "vote"):
        g.add_conditional_edges(node, route, list(PHASE_NODES.values()))
    g.add_edge("judge", END)
    return g.compile(checkpointer=checkpointer, name="mystery")


def recursion_limit(script_name_or_path: str, config: MysteryConfig) -> int:
    """Enough LangGraph steps for the longest possible game (every act failing every re-ask)."""
    script = load_script(script_name_or_path)
    game = MysteryGame.new(script, 0, config)
    return game.max_acts() + 10


class _EndpointAgent:
    """An LLM agent configured from the environment, created on first use (so importing this module, as
    `langgraph dev` does, needs no server)."""

    def __init__(self, model_var: str, max_tokens: int, temperature: float | None = None):
        self.name = os.environ.get(model_var, "base")
        self._max_tokens, self._temperature = max_tokens, temperature
        self._agent: Agent | None = None

    async def act(self, observation: Observation) -> Reply:
        if self._agent is None:
            from stratagem.games.mystery.rollout import make_llm_agent

            self._agent = make_llm_agent(os.environ.get("STRATAGEM_BASE_URL", "http://127.0.0.1:8000/v1"),
                                         self.name, self._max_tokens, os.environ.get("STRATAGEM_API_KEY"),
                                         self._temperature)
        return await self._agent.act(observation)


app = build_graph(_EndpointAgent("STRATAGEM_PLAYER_MODEL", MysteryConfig().player_max_tokens),
                  _EndpointAgent("STRATAGEM_JUDGE_MODEL", MysteryConfig().judge_max_tokens,
                                 MysteryConfig().judge_temperature))
