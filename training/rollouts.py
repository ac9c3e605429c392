"""Where each iteration's episodes come from: every game of the iteration played on the run's servers by its
registered rollout, retried after a server crash, each episode written to the store as it finishes; with
loop.async_rollout, the next iteration's games played in the background during the update (`Rollouts`)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from stratagem import faults
from stratagem.endpoints import EndpointPool, PoolStats
from stratagem.games.base import GameConfig
from stratagem.games.core import Episode
from stratagem.games.registry import RolloutJob, get_game_spec, make_game, role_model
from stratagem.training.league import draw_opponents, policies_in_play
from stratagem.training.policies import PolicyServer, adapter_name, policy_version
from stratagem.training.run_config import MYSTERY, LoopConfig, RunConfig, game_roles
from stratagem.training.run_store import RunStore

log = logging.getLogger(__name__)


def episodes_per_game(cfg: LoopConfig) -> dict[str, int]:
    base, extra = divmod(cfg.episodes_per_iteration, len(cfg.games))
    return {g: base + (i < extra) for i, g in enumerate(cfg.games)}


# ---- rollouts: the seam tests replace -----------------------------------------------------------------------

# rollout(game, policy_model, n, seed, on_episode) -> episodes, in seed order
Rollout = Callable[[str, str, int, int, Callable[[Episode], None]], Awaitable[list[Episode]]]


def default_rollout(cfg: RunConfig, base_url: str, pool: EndpointPool | None = None) -> Rollout:
    """Every game through its registered rollout (`get_game_spec(game).rollout`): strategic games with LLM agents
    on the server (self-play, or seat 0 against the opponents), the mystery with every character played by the
    policy; each gets the run's settings as a typed `rollout_job`. With `pool` (several endpoints) the games are spread over its endpoints one game at a time (game i is a
    one-game job with seed + i), by load, and a dead endpoint's games are replayed on the others."""
    async def rollout(game: str, model: str, n: int, seed: int, on_episode: Callable[[Episode], None]) -> list[Episode]:
        if pool is not None:
            async def play_one(url: str, i: int) -> Episode:
                return (await default_rollout(cfg, url)(game, model, 1, seed + i, lambda ep: None))[0]

            def done(ep: Episode, url: str) -> None:
                ep.metrics["endpoint"] = url
                on_episode(ep)

            return await pool.run(n, play_one, concurrency=cfg.loop.concurrency, on_result=done)
        return await get_game_spec(game).rollout(rollout_job(cfg, game, model, n, seed, base_url, on_episode))

    return rollout


def rollout_job(cfg: RunConfig, game: str, policy: str, n: int, seed: int, base_url: str,
                on_episode: Callable[[Episode], Any] | None = None) -> RolloutJob:
    """The run's settings for one game's rollout, typed: the policy's sampling and the server's key, the reply
    format and rewards, the opponents and the policy's seat, and the game's own section of the config."""
    spec, lc = get_game_spec(game), cfg.loop
    opponents_for = None
    if lc.league.pool:  # the learner is adapter iter-(k-1) (league play serves LoRA adapters: never merged)
        k = 1 + policy_version(policy)
        seats = make_game(game).info.num_players - 1

        def opponents_for(s: int) -> list[str]:
            return draw_opponents(lc.league, k, s, seats, policy)
    # per-role adapters: the learner's seats sample their role's adapter (the base model before the first update)
    role_policies = {r: role_model(policy, r) for r in game_roles(game)} if cfg.trainer.adapters == "per_role" else {}
    return RolloutJob(game=game, policy=policy, n=n, seed=seed, base_url=base_url, concurrency=lc.concurrency,
                      role_policies=role_policies,
                      on_episode=on_episode, sampling=cfg.sampling, api_key=cfg.server.api_key,
                      game_config=GameConfig(rewards=cfg.rewards, reply=cfg.reply), opponents=list(lc.opponents),
                      opponents_for=opponents_for, policy_seat=lc.policy_seat,
                      section=getattr(cfg, spec.config_section) if spec.config_section else None,
                      params={"script": lc.mystery_script} if game == MYSTERY else {})


class Prefetch:
    """One rollout in a background thread (loop.async_rollout): `play(buffer, stop)` runs there while the trainer
    updates, its episodes kept in `buffer` as they finish instead of written to the store. `join` waits for it,
    re-raises its error and says how long it made the loop wait; `stop` (set when the run ends) keeps it from
    restarting the servers."""

    def __init__(self, play: Callable[[list[Episode], threading.Event], Any], k: int):
        self.k, self.stop = k, threading.Event()
        self.buffer: list[Episode] = []
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = self.finished = time.perf_counter()
        self.thread = threading.Thread(target=self._run, args=(play,), name=f"rollout-{k}", daemon=True)
        self.thread.start()

    def _run(self, play: Callable[[list[Episode], threading.Event], Any]) -> None:
        try:
            self.result = play(self.buffer, self.stop)
        except BaseException as e:  # noqa: BLE001  handed to the loop's thread by join
            self.error = e
        finally:
            self.finished = time.perf_counter()

    def join(self) -> dict[str, float]:
        """Wait for the rollout. rollout_wait_s: how long the loop waited for it after the update; overlap_s: how
        much of it ran beside the update (its rollout time hidden)."""
        t0 = time.perf_counter()
        self.thread.join()
        if self.error is not None:
            raise self.error
        return {"rollout_wait_s": time.perf_counter() - t0, "overlap_s": min(t0, self.finished) - self.started}


class Rollouts:
    """Where each iteration's episodes come from (rank 0). Strictly alternating, the default: iteration k's games
    are played when its turn comes, with policy iter-(k-1), each episode written to the store as it finishes. With
    loop.async_rollout, iteration k+1's games are played in the background (a `Prefetch`) while iteration k updates,
    with the policy on the servers then, iter-(k-1), one version stale; iter-k is installed only once they are done
    (a policy merged into the served weights would change under running games), and their episodes stay in memory
    until iteration k has committed (its commit records the episode log's length), then are written. A kill loses
    them: the resume plays that iteration again, synchronously, with the then-current policy."""

    def __init__(self, rollout: Rollout, lc: LoopConfig, store: RunStore, policies: PolicyServer, progress: bool):
        self.rollout, self.lc, self.store, self.policies, self.progress = rollout, lc, store, policies, progress
        self.ahead: Prefetch | None = None  # the rollout overlapping the update, until iteration k+1 takes it
        self.rollout_s = 0.0  # the rollout of the episodes taken last: its wall time
        self.pool_stats: PoolStats | None = None  # and its games per endpoint

    def take(self, k: int) -> list[Episode]:
        """Iteration k's episodes: those played during the last update (written to the store now: iteration k-1
        has committed), or else played now with policy iter-(k-1)."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead.k == k:
            for ep in ahead.buffer:
                self.store.append_episode(ep)
            (episodes, self.pool_stats), self.rollout_s = ahead.result, ahead.finished - ahead.started
            return episodes
        t0 = time.perf_counter()
        episodes, self.pool_stats = self._play(k, k - 1, self.store.append_episode, self.store.rollback, None)
        self.rollout_s = time.perf_counter() - t0
        return episodes

    def overlap(self, k: int) -> None:
        """Iteration k's update begins. With async_rollout, before the last iteration: iteration k+1's games start
        in the background with the policy on the servers, iter-(k-1); else the engine sleeps through the update
        (when it shares the GPU)."""
        if self.lc.async_rollout and k < self.lc.iterations:
            self.ahead = Prefetch(lambda buffer, stop: self._play(k + 1, k - 1, buffer.append, buffer.clear, stop),
                                  k + 1)
        else:
            self.policies.serving.sleep()

    def ready(self) -> dict[str, float]:
        """The servers free for iter-k: the rollout that overlapped the update finished (its timings), or the
        engine awake again."""
        if self.ahead is not None:
            return self.ahead.join()
        self.policies.serving.wake()
        return {"rollout_wait_s": 0.0, "overlap_s": 0.0} if self.lc.async_rollout else {}

    def close(self) -> None:
        """The run ends (or fails): a rollout still in flight may no longer restart the servers; its episodes,
        never written, are dropped."""
        if self.ahead is not None:
            self.ahead.stop.set()

    def _play(self, k: int, j: int, write: Callable[[Episode], None], drop: Callable[[], Any],
              stop: threading.Event | None) -> tuple[list[Episode], PoolStats | None]:
        episodes = rollout_with_retries(self.rollout, self.lc, self.policies, k, j, write, drop, self.progress, stop)
        pool = self.policies.serving.pool
        return episodes, pool.stats if pool is not None else None


def rollout_with_retries(rollout: Rollout, lc: LoopConfig, policies: PolicyServer, k: int, j: int,
                          write: Callable[[Episode], None], drop: Callable[[], Any], progress: bool,
                          stop: threading.Event | None = None) -> list[Episode]:
    """All games of iteration k, played with policy iter-j (k - 1; k - 2 for a rollout that overlaps the update,
    loop.async_rollout). Each episode goes to `write` as it finishes: the store (uncommitted until the iteration
    commits), or a prefetch's buffer. If the server died, what was written is dropped (`drop`), the server restarted
    (when the run may) with policy iter-j, and the rollout tried again, at most lc.rollout_retries times; never once
    `stop` is set (the run is ending and stops its servers)."""
    serving = policies.serving
    if serving.pool is not None:
        serving.pool.stats = PoolStats()  # games per endpoint, this rollout
    for attempt in range(lc.rollout_retries + 1):
        try:
            policies.ensure(policies_in_play(lc.league, k))
            return asyncio.run(_rollout_all(rollout, lc, write, policies.served(j), j, k, progress))
        except Exception as e:  # noqa: BLE001  only a dead server is retried; anything else is re-raised below
            if serving.alive() or attempt == lc.rollout_retries or (stop is not None and stop.is_set()):
                raise
            if not serving.can_restart:
                raise RuntimeError(f"the vLLM server at {serving.base_url} went down during iteration {k} and this "
                                   "run did not start it; restart it and pass --resume") from e
            log.warning("vLLM server died during iteration %d (%r); restarting and retrying the iteration", k, e)
            drop()
            policies.restart()
            if j:
                policies.install(j)
    raise AssertionError("unreachable")


async def _rollout_all(rollout: Rollout, lc: LoopConfig, write: Callable[[Episode], None], served: str, j: int,
                       k: int, progress: bool) -> list[Episode]:
    """Iteration k's games with policy iter-j. `served` is the model name that samples it (`base` when the policy is
    merged into the weights); turns it sampled are recorded as sampled by iter-j, and each episode records it as its
    behaviour_policy with its staleness (versions behind iter-(k-1), the policy iteration k trains)."""
    from rich.progress import Progress

    policy, per_game = adapter_name(j), episodes_per_game(lc)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"iteration {k}: rollout with {policy}", total=sum(per_game.values()))

        def on_episode(ep: Episode) -> None:
            ep.iteration = k
            ep.metrics.update(behaviour_policy=policy, staleness=k - 1 - j)
            for t in ep.turns:
                if t.adapter == served:
                    t.adapter = policy
            for seat in ep.seats:  # the seat's agent names the policy too, not the served name that sampled it
                if seat.agent == f"llm:{served}":
                    seat.agent = f"llm:{policy}"
            faults.point("rollout.episode")
            write(ep)
            bar.advance(task)

        episodes: list[Episode] = []
        for gi, (game, n) in enumerate(per_game.items()):
            # distinct sampling seeds per (run seed, iteration, game), the same on every retry and resume
            seed = lc.seed * 1_000_000 + k * 10_000 + gi * 1_000
            episodes += await rollout(game, served, n, seed, on_episode)
    return episodes
