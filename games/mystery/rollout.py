"""Playing murder-mystery episodes: one game with any agents (`play_episode`), or many games with language-model
players and judge over an OpenAI-compatible endpoint (`collect_mystery_episodes`, what the training loop calls).
Both play the mystery as a `Game` (mystery.py) through the games' one graph and rollout."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stratagem.agents import Agent, close_agents
from stratagem.agents.llm import LLMAgent, LLMAgentConfig
from stratagem.games.core import Episode, Turn
from stratagem.games.graph import play
from stratagem.games.mystery.game import CIVILIAN, CULPRIT, GAME, MysteryConfig, MysteryGame
from stratagem.games.mystery.graph import Players, agent_for
from stratagem.games.mystery.library import load_script, shipped_scripts
from stratagem.games.mystery.mystery import Mystery
from stratagem.games.mystery.structured import StructuredLLMAgent
from stratagem.games.mystery.summary import (
    ContextBudgetError,
    check_budget,
    context_length,
    endpoint_context,
    hf_token_counter,
    llm_ask,
    prepare_summaries,
)
from stratagem.games.rollout import collect_episodes
from stratagem.models import resolve

__all__ = ["collect_mystery_episodes", "load_script", "make_llm_agent", "play_episode", "shipped_scripts"]


def make_llm_agent(base_url: str, model: str, max_tokens: int, api_key: str | None = None,
                   temperature: float | None = None, structured: bool = True) -> Agent:
    """An LLM agent for mystery seats or the judge; with `structured`, acts with a closed set of choices are
    requested with their JSON schema (see structured.py)."""

    kw: dict[str, Any] = {"base_url": base_url, "model": model, "max_tokens": max_tokens}
    if api_key is not None:
        kw["api_key"] = api_key
    if temperature is not None:
        kw["temperature"] = temperature
    return (StructuredLLMAgent if structured else LLMAgent)(LLMAgentConfig(**kw))


async def script_summaries(script: Any, cfg: MysteryConfig, base_url: str, model: str,
                           api_key: str | None = None) -> dict[str, list[str]] | None:
    """The characters' summaries by the served `model` within cfg.summary_tokens (None when that is None), after
    checking that no game request can exceed the context (the smaller of cfg.tokenizer's model's and the one the
    endpoint grants `model`; summary.check_budget)."""
    if cfg.summary_tokens is None and cfg.protocol != "mirage":
        return None

    model_dir = resolve(cfg.tokenizer)
    served = await endpoint_context(base_url, model, api_key)  # a server may grant less than the model's own
    context = min(context_length(model_dir), served or context_length(model_dir))
    check_budget(cfg.summary_tokens or 0, cfg, context)
    count = hf_token_counter(model_dir)
    if cfg.protocol == "mirage":
        # MIRAGE summarises a character only when the whole six-part script passes 2 x its budget
        long = mirage_long_characters(script, cfg, count)
        if not long:
            return {}
        if cfg.summary_tokens is None:
            raise ContextBudgetError(f"{script.name}: the scripts of {', '.join(sorted(long))} pass "
                                     f"full_script_tokens={cfg.full_script_tokens}; set summary_tokens (MIRAGE: 1500)")
    budget = cfg.summary_tokens
    assert budget is not None  # None returned early (or raised, under mirage) above
    ask, close = llm_ask(base_url, model, api_key)
    try:
        out = await prepare_summaries(script, ask, f"{model}@{Path(model_dir).name}", budget,
                                      count, context)
    finally:
        await close()
    return {n: v for n, v in out.items() if n in long} if cfg.protocol == "mirage" else out


def mirage_long_characters(script: Any, cfg: MysteryConfig, count) -> set[str]:
    """The characters whose whole script (every stage, as the sheet shows it) passes cfg.full_script_tokens."""

    game = MysteryGame.new(script, 0, cfg)
    last = len(script.stages) - 1
    return {n for n in script.characters if count(game.character_sheet(n, last)) > cfg.full_script_tokens}


async def play_episode(script: str, players: Players, judge: Agent | dict[str, Agent],
                       config: MysteryConfig | None = None, seed: int = 0,
                       on_turn: Callable[[Turn], None] | None = None,
                       summaries: dict[str, list[str]] | None = None, evaluator: Agent | None = None,
                       summariser: Agent | None = None, count_tokens: Callable[[str], int] | None = None) -> Episode:
    """Play one game to the end through the games' one graph (no human seats: those need the mystery app and a
    checkpointer, see graph.py). `players`: one agent for every seat or character -> agent; `judge`: the judge, or
    under the mirage protocol side -> agent; `evaluator`, `summariser`: mirage's other referees (mystery.py)."""
    cfg = config or MysteryConfig()
    if cfg.human_seats:
        raise ValueError("play_episode cannot seat humans; build the graph with a checkpointer instead")
    game = Mystery.deal(script, seed, cfg, summaries, count_tokens)
    return await play(game, seat_agents(game.script, players), seed, referees=referees_of(judge, evaluator, summariser),
                      on_turn=on_turn)


def seat_agents(script: Any, players: Players) -> list[Agent]:
    """The agent of each seat (in the script's character order)."""
    return [agent_for(players, n) for n in script.characters]


def referees_of(judge: Agent | Mapping[str, Agent], evaluator: Agent | None = None,
                summariser: Agent | None = None) -> dict[str, Agent]:
    """The mystery's referees by role (mystery.py): the judge or the sides' judges, the evaluator, the summariser."""
    out: dict[str, Agent] = dict(judge) if isinstance(judge, Mapping) else {"judge": judge}
    out.update({k: v for k, v in (("evaluator", evaluator), ("summariser", summariser)) if v is not None})
    return out


async def collect_mystery_episodes(script: str, n: int, *, base_url: str, player_model: str = "base",
                                   judge_model: str = "base", config: MysteryConfig | None = None,
                                   concurrency: int = 4, seed: int = 0, api_key: str | None = None,
                                   on_turn: Callable[[Turn], None] | None = None,
                                   on_episode: Callable[[Episode], None] | None = None,
                                   eval_model: str | None = None, eval_base_url: str | None = None,
                                   eval_api_key: str | None = None, retries: int = 2,
                                   faction_models: Mapping[str, str] | None = None) -> list[Episode]:
    """Play `n` games of `script` (a shipped name or a folder) with every seat played by `player_model` and the
    judge `judge_model`, both served at `base_url`; game i uses seed `seed + i`. At most `concurrency` games run
    at once (the server batches their requests); a game that meets a server error is replayed from its start
    (`retries` times; games/rollout.py, as every game). Returns the episodes in seed order.

    Under the mirage protocol, suspicion and trust are judged by the model of the speaker's side (here every seat
    is `player_model`, so it judges itself, as MIRAGE's self-play runs do), ICI and SCI by `eval_model` at
    `eval_base_url` (any OpenAI-compatible endpoint; default `judge_model` at `base_url`), and scripts and history
    are summarised by `judge_model` (MIRAGE's base model).

    `faction_models` (per-role adapters): the served model of each faction, culprit and civilian, for its
    characters' turns and, under the mirage protocol, its side's judging; `player_model` is then unused."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    cfg = config or MysteryConfig()
    s = load_script(script)  # fail on a bad script before any request
    summaries = await script_summaries(s, cfg, base_url, judge_model, api_key)
    models = dict(faction_models or {CULPRIT: player_model, CIVILIAN: player_model})
    if set(models) != {CULPRIT, CIVILIAN}:
        raise ValueError(f"faction_models: one model for each of {CULPRIT}, {CIVILIAN}; got {sorted(models)}")
    made = {m: make_llm_agent(base_url, m, cfg.player_max_tokens, api_key, cfg.player_temperature,
                              structured=cfg.structured_outputs) for m in dict.fromkeys(models.values())}
    sides = {f: made[m] for f, m in models.items()}
    seats = [sides[CULPRIT if c in s.culprits else CIVILIAN] for c in s.characters]
    judge = make_llm_agent(base_url, judge_model, cfg.judge_max_tokens, api_key, cfg.judge_temperature,
                           structured=cfg.structured_outputs)
    agents = [*made.values(), judge]
    referees: dict[str, Agent] = {"judge": judge}
    if cfg.protocol == "mirage":
        judging = {m: make_llm_agent(base_url, m, cfg.judge_max_tokens, api_key, cfg.judge_temperature,
                                     structured=cfg.structured_outputs) for m in dict.fromkeys(models.values())}
        judges = {f: judging[m] for f, m in models.items()}
        evaluator = make_llm_agent(eval_base_url or base_url, eval_model or judge_model, cfg.judge_max_tokens,
                                   eval_api_key if eval_base_url else api_key, cfg.judge_temperature,
                                   structured=cfg.structured_outputs)
        # a history summary may take half the history budget: the game goes on from it
        summariser = make_llm_agent(base_url, judge_model, max(64, cfg.history_tokens // 2), api_key,
                                    cfg.judge_temperature, structured=False)
        agents += [*judging.values(), evaluator, summariser]
        referees = {**judges, "evaluator": evaluator, "summariser": summariser}
    try:
        return await collect_episodes(GAME, seats, n, max(1, concurrency), seed=seed,
                                      config=cfg, on_episode=on_episode, retries=retries,
                                      params={"script": script, "summaries": summaries or {}},
                                      referees=referees, on_turn=on_turn)
    finally:
        await close_agents(agents)
