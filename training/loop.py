"""The iterative self-play loop, top to bottom:

    for k in 1..K:
        roll out M episodes with the current policy (`base` for k = 1, then adapter iter-(k-1)) on the vLLM server
        compute per-turn advantages (mars / grpo / rae) or MARO labels
        update the LoRA adapter
        save adapter iter-k with the optimizer and RNG state, hot-load it into vLLM, verify the server samples it
        log metrics, commit the iteration

A run directory (run_store.py) makes it resumable after a kill at any moment; a vLLM crash during a rollout is
detected, the server restarted (when this loop owns it) and the iteration retried. With loop.async_rollout the
rollout of iteration k+1 overlaps the update of iteration k (`Rollouts`), one policy version stale, and the old
log-probs of its episodes are those of the adapter that sampled them (`BehaviourWeights`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch

from stratagem import faults
from stratagem.config import ConfigError
from stratagem.endpoints import EndpointPool, PoolStats
from stratagem.games.base import GameConfig
from stratagem.games.core import Episode
from stratagem.games.metrics import episode_metrics
from stratagem.games.registry import RolloutJob, get_game_spec, make_game, role_model
from stratagem.integrations.servers import Serving, as_serving, open_serving
from stratagem.models import resolve
from stratagem.training.advantages import advantage_names, get_advantage
from stratagem.training.compare import evaluate_exact, evaluate_policy, print_comparison, print_exact_comparison
from stratagem.training.distributed import Distributed, init_distributed
from stratagem.training.league import draw_opponents, league_metrics, policies_in_play
from stratagem.training.objectives import NoReferencePairs, Targets, get_labels, get_loss
from stratagem.training.run_config import (
    MYSTERY,
    LoopConfig,
    RunConfig,
    game_roles,
    known_algos,
    merged_policy,
    resumed,
    run_roles,
)
from stratagem.training.run_store import RunStore
from stratagem.training.samples import build_batch
from stratagem.training.trackers import Trackers
from stratagem.training.trainer import LoRATrainer, resolve_dtype

__all__ = ["LoopConfig", "RunConfig", "known_algos", "merged_policy", "run_training", "update"]
log = logging.getLogger(__name__)


def adapter_name(iteration: int) -> str:
    """Served name of the policy after iteration k (`base` before the first update)."""
    return "base" if iteration == 0 else f"iter-{iteration}"


def policy_version(name: str) -> int:
    """k of the policy named `name` (adapter_name's inverse: base is 0)."""
    return 0 if name == "base" else int(name.removeprefix("iter-"))


class PolicyServer:
    """Puts policy iter-k on the run's servers and verifies it there: as a LoRA adapter named iter-k, or merged into
    the weights served as `base`; with per-role adapters (`roles`), each role's as iter-k-ROLE, each verified.
    `served(k)` is the model name that samples iter-k (per role: the prefix of its roles' names)."""

    def __init__(self, serving: Serving, store: RunStore, merged: bool, roles: list[str] | None = None):
        self.serving, self.store, self.merged, self.roles = serving, store, merged, list(roles or [])
        self.installed: set[int] = set()  # adapters on the servers now (LoRA serving); a restart empties it

    def served(self, k: int) -> str:
        return "base" if self.merged else adapter_name(k)

    def install(self, k: int) -> dict[str, Any]:
        faults.point("install")
        if self.roles:
            checks = {r: self.serving.install(role_model(adapter_name(k), r), self.store.adapter_dir(k) / r,
                                              merged=False) for r in self.roles}
            check = {f"{r}/{key}": v for r, c in checks.items() for key, v in c.items()}
            for key in ("mean_abs_diff", "max_abs_diff"):  # the worst role's gap, under the shared names
                vals = [c[key] for c in checks.values() if isinstance(c.get(key), (int, float))]
                if vals:
                    check[key] = max(vals)
        else:
            check = self.serving.install(adapter_name(k), self.store.adapter_dir(k), merged=self.merged)
        self.installed = {k} if self.merged else self.installed | {k}
        return check

    def ensure(self, iterations: list[int]) -> None:
        """Put the adapters of these past iterations on the servers where they are not (league opponents, after a
        resume or a restart)."""
        for j in iterations:
            if j not in self.installed:
                self.install(j)

    def restart(self) -> None:
        self.serving.restart()  # back to the base weights, no adapters
        self.installed = set()


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


def policy_seat_of(ep: Episode) -> int:
    """The policy's seat in a game against opponents, as the rollout recorded it (older runs: seat 0)."""
    return int(ep.metrics.get("policy_seat", 0))


def learner_for(cfg: LoopConfig) -> Callable[[Episode, int], bool]:
    """Self-play trains every seat; against opponents (or in league play) only the policy's seat. The mystery is
    always full self-play."""
    if not cfg.opponents and not cfg.league.pool:
        return lambda ep, seat: True
    return lambda ep, seat: ep.game == MYSTERY or seat == policy_seat_of(ep)


# ---- where each iteration's episodes come from: alternating, or overlapping the update ---------------------------

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
        episodes = _rollout_with_retries(self.rollout, self.lc, self.policies, k, j, write, drop, self.progress, stop)
        pool = self.policies.serving.pool
        return episodes, pool.stats if pool is not None else None


class BehaviourWeights:
    """The LoRA weights of the recent policies, so that a stale episode's old log-probs (the importance ratio's
    denominator) are those of the adapter that sampled it (loop.async_rollout: iteration k's games are played by
    iter-(k-2) while iter-(k-1) trains). Kept in memory: the trainer's after each update, the newest
    max_staleness + 1; one not kept (iter-j, a resumed run's) is read from its adapter in the store."""

    def __init__(self, trainer: LoRATrainer, store: RunStore, done: int, keep: int):
        self.trainer, self.store, self.keep = trainer, store, keep
        self.saved: dict[int, dict[str, torch.Tensor]] = {}
        self.record(done)  # the trainer's weights now: iter-done's (at 0 the starting ones, LoRA's B zero: base)

    def record(self, k: int) -> None:
        """The trainer's weights are policy iter-k's (after iteration k's update)."""
        self.saved[k] = self.trainer.lora_snapshot()
        for j in [j for j in self.saved if j < k - self.keep]:
            del self.saved[j]

    def of(self, episodes: list[Episode]) -> dict[str, dict[str, torch.Tensor]]:
        """The weights of each older policy that sampled some of `episodes` (behaviour_policy of those with a
        staleness above 0), by its name, which build_batch puts in Sample.behaviour."""
        stale = {ep.metrics["behaviour_policy"] for ep in episodes if ep.metrics.get("staleness", 0) > 0}
        return {name: self.weights(name) for name in sorted(stale)}

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        j = policy_version(name)
        if j not in self.saved:
            self.saved[j] = self.trainer.read_lora_weights(self.store.adapter_dir(j)) if j else \
                {n: torch.zeros_like(p) for n, p in self.trainer.lora_snapshot().items()}  # base: no LoRA delta
        return self.saved[j]


# ---- metrics ------------------------------------------------------------------------------------------------

def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return 0.0, 0.0
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


# ---- one update -------------------------------------------------------------------------------------------------

def update(trainer: LoRATrainer, cfg: RunConfig, episodes: list[Episode], iteration: int,
           adv_state: dict[str, Any], behaviour: BehaviourWeights | None = None) -> dict[str, float]:
    """Advantages (estimator `algo`, loss `loss`) or per-act labels (a loss without advantages, such as maro) for
    the batch, then one trainer update through the loss's objective. Returns its metrics. `behaviour`
    (loop.async_rollout): the weights of the older policies that sampled stale episodes, for the objective's old
    log-probs (Targets.behaviour); the trainer's weights after the update are recorded in it as iter-k."""
    lc, tc = cfg.loop, cfg.trainer
    stale = behaviour.of(episodes) if behaviour is not None else None
    learner = learner_for(lc)
    loss_name = lc.loss if lc.algo in advantage_names() else lc.algo
    objective_cls = get_loss(loss_name)
    objective = objective_cls(getattr(cfg, objective_cls.config_section) if objective_cls.config_section else None)
    stats: dict[str, float] = {}
    if objective.labels is not None:  # per-act labels from the loss's own label producer (maro's)
        rng = random.Random(lc.seed * 1_000_003 + iteration)  # recipients drawn with the run's seed, per iteration
        labels = get_labels(objective.labels)(episodes, learner, objective.config, rng)
        batch = build_batch(episodes, lambda i, j: (i, j) in labels, pack=tc.pack, max_seq_len=tc.max_seq_len)
        # mismatched pairs are drawn per mini-batch, from these episodes with this rng
        targets = Targets(labels=[labels[(a.episode, a.turn)] for a in batch.acts], episodes=episodes, rng=rng,
                          behaviour=stale)
    else:
        adv = get_advantage(lc.algo)(episodes, learner, cfg.advantage, adv_state)
        batch = build_batch(episodes, lambda i, j: adv[i][j] is not None, pack=tc.pack, max_seq_len=tc.max_seq_len)
        values = [float(adv[a.episode][a.turn] or 0.0) for a in batch.acts]  # build_batch kept only the non-None
        targets = Targets(advantages=values, behaviour=stale)
        stats["adv_mean"], stats["adv_std"] = _mean_std(values)
    stats["stale_samples"] = float(sum(s.behaviour in (stale or {}) for s in batch.samples))
    if batch.dropped:  # counted in the metrics too: never a silent loss of training data
        log.warning("iteration %d: %d turn(s) longer than trainer.max_seq_len=%d tokens left out of the update; "
                    "raise trainer.max_seq_len (MARSHAL: 32768) to train them", iteration, batch.dropped,
                    tc.max_seq_len)
    try:
        stats.update(trainer.update(batch, objective, targets, iteration=iteration))
        stats["trained_acts"] = float(len(batch.acts))
    except NoReferencePairs as e:
        # draws and one-sided games can leave an iteration's labels in one episode: no update, said and counted,
        # rather than a run that dies at iteration k or a z0 of 0 that nobody sees
        log.warning("iteration %d: MARO update skipped: %s", iteration, e)
        stats.update({"trained_tokens": 0.0, "trained_acts": 0.0, "skipped_update": 1.0})
    stats["dropped_acts"] = float(batch.dropped)
    if behaviour is not None:
        behaviour.record(iteration)
    return stats


# ---- the loop ---------------------------------------------------------------------------------------------------

def run_training(cfg: RunConfig, out: str | Path, *, resume: bool = False, resume_from: int | None = None,
                 server: Any = None, rollout: Rollout | None = None, progress: bool = True) -> RunStore:
    """Run (or resume) a training run in `out`. A resume verifies the store (run_store.py) and continues after its
    last commit, or after iteration `resume_from` (rolled back to). `server`: the servers to use (a Serving, or a
    VLLMServer, restarted after a crash only when `owned`); by default those of cfg.loop.base_url, or one started
    from cfg.server. `rollout` replaces the default rollout (tests). Under `torchrun` / `accelerate launch`
    (training/distributed.py) rank 0 does everything; the other ranks receive each iteration's episodes and join
    the update (gradients summed); only rank 0 writes to the run directory (on a filesystem every node reads).
    With loop.async_rollout each update overlaps the next iteration's rollout (`Rollouts`)."""
    dist = init_distributed(cfg.distributed)  # a single process without a launcher
    cfg, store, done = _open_run(cfg, out, resume, resume_from, dist)
    lc, model_path = cfg.loop, resolve(cfg.loop.model)
    policies = _policy_server(cfg, store, model_path, server) if dist.is_main else None
    runlog = rollouts = None
    try:
        trainer = LoRATrainer(model_path, cfg.trainer, seed=lc.seed, temperature=cfg.sampling.temperature,
                              adapter_path=store.adapter_dir(done) if done else None, total_iterations=lc.iterations,
                              roles=run_roles(cfg))
        adv_state = _restore(store, trainer, done)
        behaviour = BehaviourWeights(trainer, store, done, lc.max_staleness) if lc.async_rollout else None
        if policies is not None:
            rollouts = Rollouts(rollout or default_rollout(cfg, policies.serving.base_url, policies.serving.pool),
                                lc, store, policies, progress)
            runlog = RunLog(store, cfg, done, progress)
            if done:
                policies.install(done)
            evaluate(cfg, store, trainer, policies, done, "before")
        for k in range(done + 1, lc.iterations + 1):
            # 1. iteration k's episodes: played now with the current policy (retried after a server crash), or
            #    (loop.async_rollout) those played during the last update; rank 0 plays, the others receive
            episodes = dist.broadcast_object(rollouts.take(k) if rollouts is not None else [])

            # 2-3. advantages / labels and the update; meanwhile the next iteration's games are played (async), or
            #      else the engine sleeps when it shares the GPU
            if rollouts is not None:
                rollouts.overlap(k)
            t1 = time.perf_counter()
            stats = update(trainer, cfg, episodes, k, adv_state, behaviour)  # metrics already summed over the ranks
            stats["update_s"] = time.perf_counter() - t1
            if dist.is_main and lc.eval_exact_every and k % lc.eval_exact_every == 0:
                stats.update(track_exact(cfg, store, trainer, k))

            # 4-5. save iter-k, put it on the server (once no game runs there) and verify it there, log and commit
            if rollouts is not None and runlog is not None:
                _commit(k, episodes, trainer, adv_state, stats, rollouts, runlog)
            dist.barrier()
        if policies is not None:
            evaluate(cfg, store, trainer, policies, store.completed_iterations(), "after")
    finally:
        if rollouts is not None:
            rollouts.close()  # first: a rollout still in flight must not restart the servers stopped below
        if runlog is not None:
            runlog.close()
        if policies is not None:
            policies.serving.stop()
    return store


def _policy_server(cfg: RunConfig, store: RunStore, model_path: str, server: Any) -> PolicyServer:
    """The run's servers (the caller's `server`, else those cfg names or one started here) with the way iter-k
    goes onto them (an adapter, or merged weights: LoopConfig.policy_weights)."""
    lc, on_cpu, per_role = cfg.loop, not torch.cuda.is_available(), cfg.trainer.adapters == "per_role"
    serving = as_serving(server) if server is not None else open_serving(
        cfg.server, lc.base_url, model_path, lora_rank=cfg.trainer.rank,
        weight_reload=merged_policy(lc, True, on_cpu, per_role=per_role), on_cpu=on_cpu)
    return PolicyServer(serving, store, merged_policy(lc, serving.can_reload, on_cpu, per_role=per_role),
                        run_roles(cfg))


def _commit(k: int, episodes: list[Episode], trainer: LoRATrainer, adv_state: dict[str, Any],
            stats: dict[str, float], rollouts: Rollouts, runlog: RunLog) -> None:
    """Iteration k's end: adapter iter-k with the optimizer and RNG state saved; the servers free (the rollout that
    overlapped the update finished, or the engine awake); iter-k installed on them and verified there, the metrics
    committed and logged."""
    store, policies = rollouts.store, rollouts.policies
    store.save_iteration(k, trainer, {"advantage_state": adv_state})
    stats.update(rollouts.ready(), rollout_s=rollouts.rollout_s)
    t0 = time.perf_counter()
    check = policies.install(k)
    stats["install_s"] = time.perf_counter() - t0
    metrics = iteration_metrics(k, episodes, trainer, stats, check, rollouts.pool_stats)
    store.commit(k, len(episodes), metrics)
    runlog.log(metrics, k)


def _open_run(cfg: RunConfig, out: str | Path, resume: bool, resume_from: int | None,
              dist: Distributed) -> tuple[RunConfig, RunStore, int]:
    """The run's config and store, and its last committed iteration. A new run checks its config and records it;
    a resume continues with the recorded config (RESUMABLE fields from `cfg`), after verifying the store and rolling
    back to its last commit (or to `resume_from`)."""
    store = RunStore(out)
    if resume:
        cfg = resumed(RunConfig.from_dict(store.read_config()), cfg)
    else:
        cfg.validate()
    if cfg.loop.async_rollout and dist.enabled:  # the one check that needs the launch, not just the config
        raise ConfigError(f"loop.async_rollout: not supported with several trainer processes yet ({dist.world_size} "
                          "here: rank 0 would play the next games beside the update's collectives, a schedule no "
                          "test covers); run one process, or turn async_rollout off")
    if resume:
        done = int(dist.broadcast_object(store.resume(resume_from)["iteration"] if dist.is_main else 0))
    else:
        if dist.is_main:
            store.create(cfg.to_dict(), trainer_dtype=str(resolve_dtype(cfg.trainer.dtype)).removeprefix("torch."))
        done = 0
    dist.barrier()
    return cfg, store, done


def _restore(store: RunStore, trainer: LoRATrainer, done: int) -> dict[str, Any]:
    """The optimizer and RNG state of iteration `done` into `trainer` (its adapter is loaded already); returns the
    advantage estimator's state."""
    if not done:
        return {}
    saved = store.load_state(done)
    trainer.load_state_dict(saved["trainer"])
    return saved["loop"]["advantage_state"]


def evaluate(cfg: RunConfig, store: RunStore, trainer: LoRATrainer, policies: PolicyServer, k: int,
             when: str) -> None:
    """Policy iter-k against loop.eval_opponent (loop.eval_episodes games) and exactly (loop.eval_exact), into
    RUN/eval/WHEN.json. `before`: the policy the run starts from (kept from an earlier start of the run when it is
    on record); `after`: the final policy, printed beside `before`."""
    lc, root = cfg.loop, store.root / "eval"
    if lc.eval_exact and (when == "after" or not (root / "exact-before.json").is_file()):
        exact = evaluate_exact(cfg, trainer, adapter_name(k), when, root)
        if when == "after":
            before = json.loads((root / "exact-before.json").read_text())
            print_exact_comparison(before, exact, "start", adapter_name(k))
    if lc.eval_episodes > 0 and (when == "after" or not (root / "before.json").is_file()):
        sampled = evaluate_policy(cfg, policies.serving.base_url, policies.served(k), when, root)
        if when == "after":
            print_comparison(json.loads((root / "before.json").read_text()), sampled, "start", adapter_name(k))


def track_exact(cfg: RunConfig, store: RunStore, trainer: LoRATrainer, k: int) -> dict[str, float]:
    """loop.eval_exact_every: policy iter-k (the trainer's weights after the update) evaluated exactly, into
    RUN/eval/exact-iter-K.json and, as exact/GAME/METRIC, into the iteration's metrics."""
    t0 = time.perf_counter()
    result = evaluate_exact(cfg, trainer, adapter_name(k), adapter_name(k), store.root / "eval")
    out = {"exact_s": time.perf_counter() - t0}
    for game, m in result["per_game"].items():
        out.update({f"exact/{game}/exploitability": m["exploitability"], f"exact/{game}/vs_cfr": m["vs_cfr"]["mean"],
                    f"exact/{game}/vs_nash": m["vs_nash"]["mean"], f"exact/{game}/illegal_prob": m["illegal_prob_mean"]})
    return out


def iteration_metrics(k: int, episodes: list[Episode], trainer: LoRATrainer, stats: dict[str, float],
                      check: dict[str, Any] | None, pool_stats: PoolStats | None) -> dict[str, Any]:
    """What iteration k commits: its episodes' metrics and how stale their policy was (staleness_mean: versions
    behind iter-(k-1), loop.async_rollout), the update's, the timings, the verification's gaps and, over several
    endpoints, the games each played in the rollout of these episodes (`pool_stats`)."""
    staleness = [float(ep.metrics.get("staleness", 0)) for ep in episodes]
    metrics: dict[str, Any] = {"iteration": k, "policy": adapter_name(k - 1), "episodes": len(episodes),
                               "trainer_dtype": str(trainer.dtype).removeprefix("torch."),
                               "staleness_mean": _mean_std(staleness)[0],
                               **episode_metrics(episodes), **league_metrics(episodes), **stats}
    metrics.update({f"verify/{a}": float(b) for a, b in (check or {}).items() if isinstance(b, (int, float))})
    if pool_stats is not None:
        metrics.update({f"endpoint_games/{u}": float(c) for u, c in pool_stats.per_endpoint.items()})
        metrics["games_moved"] = float(pool_stats.moved)
    return metrics


class RunLog:
    """Where each iteration's metrics go besides the store: TensorBoard (always), loop.trackers, the console."""

    def __init__(self, store: RunStore, cfg: RunConfig, done: int, progress: bool):
        from torch.utils.tensorboard import SummaryWriter  # deferred: its import is slow and only rank 0 logs

        self.tb = SummaryWriter(str(store.tb_dir), purge_step=done + 1)
        self.trackers = Trackers(cfg.loop.trackers, store.root, cfg.to_dict()) if cfg.loop.trackers else None
        self.progress = progress

    def log(self, metrics: dict[str, Any], k: int) -> None:
        for key, v in metrics.items():
            if isinstance(v, (int, float)) and key != "iteration":
                self.tb.add_scalar(key, v, k)
        self.tb.flush()
        if self.trackers is not None:
            self.trackers.log(metrics, k)
        if self.progress:
            _print_summary(metrics)

    def close(self) -> None:
        self.tb.close()
        if self.trackers is not None:
            self.trackers.close()


def _rollout_with_retries(rollout: Rollout, lc: LoopConfig, policies: PolicyServer, k: int, j: int,
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


def _print_summary(m: dict[str, Any]) -> None:
    keys = [k for k in m if k.startswith(("return/", "win_rate/", "illegal_rate/"))]
    parts = [f"{k}={m[k]:.3f}" for k in keys] + [f"{k}={m[k]:.3g}" for k in ("loss", "kl", "tokens_per_s") if k in m]
    log.info("iteration %d (%d episodes, rollout %.0fs, update %.0fs): %s", m["iteration"], m["episodes"],
             m["rollout_s"], m["update_s"], " ".join(parts))
