"""Self-play rollouts: many games at once against the vLLM server, recorded as Episodes training can read.

Games run as asyncio tasks, at most `concurrency` in flight, so the server's continuous batching sees many requests
at once. A server error mid-game retries that game from the start with the same seed; a partial game is never
returned or saved. Every game, the mystery included, is played this way (its own rollout seats its agents and
referees); `rollout_strategic` is the registered rollout of every strategic game (what the training loop calls
through `get_game_spec(game).rollout`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stratagem.agents import close_agents, make_agent
from stratagem.agents.base import Agent
from stratagem.concurrency import map_concurrent
from stratagem.endpoints import SERVER_ERRORS, RetriesExhausted
from stratagem.games.core import Episode, Turn
from stratagem.games.graph import play
from stratagem.games.registry import RolloutJob, make_game


class RolloutError(RetriesExhausted):
    """A game that met a server error on every one of its tries."""


async def play_with_retries(game: str, agents: Sequence[Agent], seed: int, config: Any = None,
                            retries: int = 2, params: dict[str, Any] | None = None, *,
                            referees: Mapping[str, Agent] | None = None,
                            on_turn: Callable[[Turn], Any] | None = None) -> Episode:
    """One complete game; on a server error the whole game is replayed (up to `retries` times). `config` is the
    game's settings (a GameConfig, the mystery's MysteryConfig), `referees` do its referee tasks (games/base.py)."""
    for attempt in range(retries + 1):
        try:
            return await play(make_game(game, config, **(params or {})), agents, seed=seed, referees=referees,
                              on_turn=on_turn)
        except SERVER_ERRORS as e:
            if attempt == retries:
                raise RolloutError(f"{game} seed {seed}: server error on every one of {retries + 1} tries: {e}") from e
            await asyncio.sleep(min(2.0 ** attempt, 10.0))
    raise AssertionError("unreachable")


async def collect_episodes(game: str, agents: list[Agent], n: int, concurrency: int = 8, *, seed: int = 0,
                           config: Any = None, on_episode: Callable[[Episode], Any] | None = None,
                           retries: int = 2, params: dict[str, Any] | None = None,
                           only: list[int] | None = None, referees: Mapping[str, Agent] | None = None,
                           on_turn: Callable[[Turn], Any] | None = None) -> list[Episode]:
    """Play `n` games of `game` (game i with seed `seed + i`; with `only`, just games i in it: the rest of a resumed
    evaluation), at most `concurrency` at once; returns them in seed order. `on_episode(ep)` is called as each finishes (in finishing order), e.g. to append it to a JSONL file.
    Every turn of an LLM seat carries prompt / completion token ids, log-probs, its reward and `adapter` (the served
    model name that sampled it)."""
    if n < 0 or concurrency < 1:
        raise ValueError(f"collect_episodes: need n >= 0 and concurrency >= 1, got n={n}, concurrency={concurrency}")

    async def one(i: int) -> Episode:
        ep = await play_with_retries(game, agents, seed + i, config, retries, params, referees=referees,
                                     on_turn=on_turn)
        ep.id = ep.id or f"{game}-{seed + i}"
        return ep

    return await map_concurrent(one, range(n) if only is None else sorted(only), concurrency, on_episode)


async def rollout_strategic(job: RolloutJob) -> list[Episode]:
    """The training rollout of a strategic game: self-play with the policy in every seat, or the policy against the
    run's opponents (`job.opponents`, or per game `job.opponents_for(seed)`: league play): in seat 0, or
    (`loop.policy_seat: alternate`) first in even-seeded games and last in odd ones. Each game against opponents
    records the policy's seat in `metrics["policy_seat"]`."""
    # a server started with --api-key refuses requests without it
    llm, game_cfg, opponents = job.sampling.agent_kwargs(job.api_key), job.game_config, job.opponents

    def agent(spec: str, seat_seed: int) -> Agent:
        # sampling is left unseeded: identical opening prompts must still give different replies
        return make_agent(spec, base_url=job.base_url, seed=seat_seed, game=job.game,
                          **(llm if spec.startswith("llm:") else {}))

    if not opponents and job.opponents_for is None:
        roles = make_game(job.game).info.roles
        # per-role adapters: each seat samples its role's adapter
        seats = [agent(f"llm:{job.role_policies[r]}", job.seed) for r in roles] if job.role_policies \
            else [agent(f"llm:{job.policy}", job.seed)] * len(roles)
        try:
            return await collect_episodes(job.game, seats, job.n, concurrency=job.concurrency, seed=job.seed,
                                          config=game_cfg, on_episode=job.on_episode)
        finally:
            await close_agents(seats)
    policy = agent(f"llm:{job.policy}", job.seed)
    # games grouped by their opponents and the policy's place: first, or (alternating) last in odd-seeded games
    plans: dict[tuple[tuple[str, ...], bool], list[int]] = {}
    for i in range(job.n):
        specs = tuple(job.opponents_for(job.seed + i) if job.opponents_for else opponents)
        plans.setdefault((specs, job.policy_seat == "alternate" and (job.seed + i) % 2 == 1), []).append(i)
    groups = []
    for (specs, last), games in plans.items():
        others = [agent(spec, job.seed + 1 + i) for i, spec in enumerate(specs)]
        groups.append((len(others), [*others, policy], games) if last else (0, [policy, *others], games))

    def marked(seat: int) -> Callable[[Episode], Any]:
        def mark(ep: Episode) -> Any:  # before the episode is saved: the learner reads it back from the store
            ep.metrics["policy_seat"] = seat
            return job.on_episode(ep) if job.on_episode else None
        return mark

    share = max(1, job.concurrency // len(groups))
    try:
        parts = await asyncio.gather(*(collect_episodes(job.game, seats, job.n, concurrency=share, seed=job.seed,
                                                        config=game_cfg, on_episode=marked(seat), only=games)
                                       for seat, seats, games in groups))
    finally:
        await close_agents([a for _, seats, _ in groups for a in seats])
    return sorted((ep for part in parts for ep in part), key=lambda ep: ep.seed)
