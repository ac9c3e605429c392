"""The iterative self-play loop, top to bottom:

    for k in 1..K:
        roll out M episodes with the current policy (`base` for k = 1, then adapter iter-(k-1)) on the vLLM server
        compute per-turn advantages (mars / grpo / rae) or MARO labels
        update the LoRA adapter
        save adapter iter-k with the optimizer and RNG state, hot-load it into vLLM, verify the server samples it
        log metrics, commit the iteration

A run directory (run_store.py) makes it resumable after a kill at any moment; a vLLM crash during a rollout is
detected, the server restarted (when this loop owns it) and the iteration retried. With loop.async_rollout the
rollout of iteration k+1 overlaps the update of iteration k (`Rollouts`, rollouts.py), one policy version stale,
and the old log-probs of its episodes are those of the adapter that sampled them (`BehaviourWeights`,
policies.py).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stratagem.config import ConfigError
from stratagem.endpoints import PoolStats
from stratagem.games.core import Episode
from stratagem.games.metrics import episode_metrics
from stratagem.integrations.servers import as_serving, open_serving
from stratagem.models import resolve
from stratagem.training.advantages import advantage_names, get_advantage
from stratagem.training.compare import evaluate_exact, evaluate_policy, print_comparison, print_exact_comparison
from stratagem.training.distributed import Distributed, init_distributed
from stratagem.training.league import league_metrics
from stratagem.training.objectives import NoReferencePairs, Targets, get_labels, get_loss
from stratagem.training.policies import BehaviourWeights, PolicyServer, adapter_name
from stratagem.training.rollouts import (
    Rollout,
    Rollouts,
    default_rollout,
    episodes_per_game,
    rollout_job,
)
from stratagem.training.run_config import (
    MYSTERY,
    LoopConfig,
    RunConfig,
    known_algos,
    merged_policy,
    resumed,
    run_roles,
)
from stratagem.training.run_store import RunStore
from stratagem.training.samples import build_batch
from stratagem.training.trackers import Trackers
from stratagem.training.trainer import LoRATrainer, resolve_dtype

# the loop's parts that live beside it, named here too (callers and tests import them from the loop)
__all__ = ["BehaviourWeights", "LoopConfig", "PolicyServer", "RunConfig", "adapter_name", "default_rollout",
           "episode_metrics", "episodes_per_game", "known_algos", "learner_for", "merged_policy", "rollout_job",
           "run_training", "update"]
log = logging.getLogger(__name__)


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


def _print_summary(m: dict[str, Any]) -> None:
    keys = [k for k in m if k.startswith(("return/", "win_rate/", "illegal_rate/"))]
    parts = [f"{k}={m[k]:.3f}" for k in keys] + [f"{k}={m[k]:.3g}" for k in ("loss", "kl", "tokens_per_s") if k in m]
    log.info("iteration %d (%d episodes, rollout %.0fs, update %.0fs): %s", m["iteration"], m["episodes"],
             m["rollout_s"], m["update_s"], " ".join(parts))
