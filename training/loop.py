"""The iterative self-play loop, top to bottom:

    for k in 1..K:
        roll out M episodes with the current policy (`base` for k = 1, then adapter iter-(k-1)) on the vLLM server
        compute per-turn advantages (mars / grpo / rae) or MARO labels
        update the LoRA adapter
        save adapter iter-k with the optimizer and RNG state, hot-load it into vLLM, verify the server samples it
        log metrics, commit the iteration

A run directory (run_store.py) makes it resumable after a kill at any moment; a vLLM crash during a rollout is
detected, the server restarted (when this loop owns it) and the iteration retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from stratagem import faults
from stratagem.agents.sampling import SamplingConfig
from stratagem.config import ConfigError, check as check_config, from_dict as config_from_dict
from stratagem.config import to_dict as config_to_dict
from stratagem.games.base import ReplyFormat, RewardConfig
from stratagem.games.core import Episode
from stratagem.games.metrics import episode_metrics
from stratagem.games.mystery.game import MysteryConfig
from stratagem.integrations.vllm_server import ServerConfig
from stratagem.training.distributed import DistributedConfig
from stratagem.training.advantages import AdvantageConfig, get_advantage
from stratagem.training.losses import MAROConfig, PPOConfig, maro_labels
from stratagem.training.run_store import RunStore
from stratagem.training.samples import build_batch
from stratagem.training.trainer import LoRATrainer, TrainerConfig, resolve_dtype

MYSTERY = "mystery"
log = logging.getLogger(__name__)


def known_algos() -> tuple[str, ...]:
    """The values `loop.algo` takes: every registered advantage estimator (paired with `loop.loss`), and every
    registered loss that needs no advantages (maro)."""
    from stratagem.training.advantages import advantage_names
    from stratagem.training.objectives import loss_names

    return tuple(advantage_names()) + tuple(loss_names(uses_advantages=False))


@dataclass
class LoopConfig:
    preset: str = field(default="laptop", metadata={"help": "The preset this config was built on (stratagem/presets/"
                        "NAME.yaml; set by `stratagem train --preset NAME` and recorded in the run's config.yaml)."})
    algo: str = field(default="mars", metadata={"help": "mars (the paper's formula), marshal (as MARSHAL's code "
                      "computes it), grpo or rae (an advantage estimator, trained with `loss`; any registered "
                      "estimator) or maro (a loss that needs no advantages; any such registered loss)."})
    loss: str = field(default="ppo", metadata={"help": "The loss an advantage estimator's advantages train "
                      "(training.objectives registry; ppo: MARS's clipped surrogate with dual clip and k3 KL)."})
    games: list[str] = field(default_factory=lambda: ["tictactoe"], metadata={"help": "Games to train on (registered "
                             "game names, e.g. tictactoe, kuhn_poker, mini_hanabi, mystery); the episodes of an "
                             "iteration are split evenly over them."})
    iterations: int = field(default=2, metadata={"help": "Iterations (rollout + update) to run in total.", "min": 1})
    episodes_per_iteration: int = field(default=8, metadata={"help": "Episodes rolled out per iteration (at least "
                                        "one per game).", "min": 1})
    model: str = field(default="default", metadata={"help": "Base model: registered name, local directory or hub "
                       "id."})
    base_url: str | None = field(default=None, metadata={"help": "Use this running vLLM server (it must serve the "
                                 "same base model as `base`, with runtime LoRA loading); none: start one."})
    seed: int = field(default=0, metadata={"help": "Run seed: trainer init, sampling seeds, MARO recipients."})
    concurrency: int = field(default=8, metadata={"help": "Games in flight at once during a rollout.", "min": 1})
    opponents: list[str] = field(default_factory=list, metadata={"help": "Agent specs for seats 1.. (e.g. random, "
                                 "mcts:50, llm:iter-2 for a frozen adapter); empty: self-play, every seat learns. "
                                 "With opponents only the policy's seat is trained (see policy_seat)."})
    policy_seat: str = field(default="first", metadata={"help": "Where the policy sits against loop.opponents: "
                             "'first' (seat 0 in every game) or 'alternate' (seat 0 in even games, the last seat in "
                             "odd ones, the opponents filling the other seats in order; MARSHAL's fixed-opponent runs "
                             "play half their games each way).", "choices": ("first", "alternate")})
    mystery_script: str = field(default="lighthouse", metadata={"help": "Script played when games has 'mystery' "
                                "(a shipped script's name or a folder)."})
    rollout_retries: int = field(default=2, metadata={"help": "Times an iteration's rollout is retried after the "
                                 "vLLM server died (restarted first when this run started it).", "min": 0})
    eval_episodes: int = field(default=0, metadata={"help": "Before the first iteration and after the last, play "
                               "this many games per seat order of each strategic training game against "
                               "eval_opponent with the starting and the final policy, in the run's reply protocol; "
                               "the comparison (illegal-act rate, win rate, normalized return, 95% intervals) is "
                               "printed and saved in RUN/eval/ (0: off).", "min": 0})
    eval_opponent: str = field(default="random", metadata={"help": "Opponent of that evaluation: an agent spec, "
                               "'auto' (the paper's: MCTS, CFR, Nash on Leduc, self for Hanabi), 'marshal' (MARSHAL's "
                               "evaluation: MCTS 100 and 1000 on tic-tac-toe, 10 and 100 on Connect Four) or GAME=SPEC "
                               "pairs, SPEC|SPEC for several opponents of one game (stratagem eval games --help)."})
    trackers: list[str] = field(default_factory=list, metadata={"help": "Experiment trackers beside TensorBoard: "
                                "wandb, mlflow (each needs its package installed; see training/trackers.py). "
                                "Empty: TensorBoard only."})
    eval_exact: bool = field(default=False, metadata={"help": "Before the first iteration and after the last, "
                             "also evaluate the starting and the final policy exactly on the evaluated poker games "
                             "(stratagem eval exact: the policy's table, exploitability, exact returns against CFR and "
                             "Nash); saved in RUN/eval/exact-*.json. Needs a protocol without thinking."})
    eval_games: list[str] = field(default_factory=list, metadata={"help": "Strategic games of that evaluation "
                                  "(empty: the run's training games; MARSHAL evaluates the held-out ones too)."})
    policy_weights: str = field(default="auto", metadata={"help": "How the server samples the current policy iter-k: "
                                "'lora' hot-loads it as an adapter (vLLM's LoRA path, about a third of base speed on "
                                "a CPU); 'merged' merges it into the base weights and reloads them in place (base "
                                "speed, one merge + reload per iteration; needs a server this run starts, no frozen "
                                "adapter opponents and no mystery, whose judge is the base model); 'auto': merged "
                                "where allowed and serving runs on the CPU, else lora (a GPU serves LoRA fast). "
                                "Either way the server's copy is verified.", "choices": ("auto", "lora", "merged")})


@dataclass
class RunConfig:
    """Everything a training run reads, one typed section per component. `from_dict` (YAML) and the flags of
    `stratagem train` are generated from these dataclasses (stratagem.config); `validate` checks the whole config,
    names included, before any model or server starts."""

    loop: LoopConfig = field(default_factory=LoopConfig, metadata={"help": "The loop: games, iterations, opponents, "
                             "server use."})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "Sampling of the policy's "
                                     "replies in strategic games."})
    reply: ReplyFormat = field(default_factory=ReplyFormat, metadata={"help": "Reply format of strategic games."})
    rewards: RewardConfig = field(default_factory=RewardConfig, metadata={"help": "Reward constants of strategic "
                                  "games."})
    mystery: MysteryConfig = field(default_factory=MysteryConfig, metadata={"help": "The murder mystery (when "
                                   "loop.games has 'mystery')."})
    trainer: TrainerConfig = field(default_factory=TrainerConfig, metadata={"help": "The LoRA trainer."})
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig, metadata={"help": "Advantage options."})
    ppo: PPOConfig = field(default_factory=PPOConfig, metadata={"help": "Clipped policy loss options."})
    maro: MAROConfig = field(default_factory=MAROConfig, metadata={"help": "MARO loss options."})
    server: ServerConfig = field(default_factory=ServerConfig, metadata={"help": "The vLLM server a run starts "
                                 "when loop.base_url is not given (its model is loop.model; memory share, tensor "
                                 "parallelism, sleep mode)."})
    distributed: DistributedConfig = field(default_factory=DistributedConfig, metadata={"help": "Several trainer "
                                           "processes (under torchrun / accelerate launch): strategy, backend, "
                                           "collective timeout."})

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RunConfig":
        """Nested sections by name (missing ones keep their defaults), then `validate`. An unknown section or
        field, a wrong type or a bad value is a ConfigError (a ValueError) naming its dotted path."""
        out = config_from_dict(cls, d)
        out.validate()
        return out

    def validate(self) -> None:
        """Check the whole config, as `from_dict` does and also after fields were set in code: types and ranges of
        every field, then the names against their registries (algo, games, opponent agent specs, the mystery
        script) and the combinations. Loads no model and contacts no server."""
        check_config(self)
        lc = self.loop
        from stratagem.preset import preset_names

        if lc.preset not in preset_names():
            raise ConfigError(f"loop.preset: must be one of {', '.join(preset_names())}, got {lc.preset!r}")
        algos = known_algos()
        if lc.algo not in algos:
            raise ConfigError(f"loop.algo: must be one of {', '.join(algos)}, got {lc.algo!r}")
        if not lc.games:
            raise ConfigError("loop.games: must name at least one game")
        from stratagem.training.trackers import check_trackers

        try:
            check_trackers(lc.trackers)
        except ValueError as e:
            raise ConfigError(f"loop.trackers: {e}") from None
        from stratagem.training.objectives import loss_names

        if lc.loss not in loss_names(uses_advantages=True):
            raise ConfigError(f"loop.loss: must be one of {', '.join(loss_names(uses_advantages=True))}, got "
                              f"{lc.loss!r}")
        if self.ppo.old_logprobs == "endpoint" and self.sampling.temperature != 1.0:
            raise ConfigError("ppo.old_logprobs: 'endpoint' needs sampling.temperature 1 (the server reports "
                              f"log-probs of the untempered distribution), got {self.sampling.temperature}; use "
                              "'trainer'")
        from stratagem.games.registry import game_names, make_game

        names = tuple(dict.fromkeys(game_names() + (MYSTERY,)))
        for i, g in enumerate(lc.games):
            if g not in names:
                raise ConfigError(f"loop.games[{i}]: unknown game {g!r}; expected one of {', '.join(names)}")
            if lc.games.index(g) != i:
                raise ConfigError(f"loop.games[{i}]: {g!r} is listed twice")
        strategic = game_names("strategic")
        for i, g in enumerate(lc.eval_games):
            if g not in strategic:
                raise ConfigError(f"loop.eval_games[{i}]: {g!r} is not a strategic game; expected one of "
                                  f"{', '.join(strategic)}")
        if lc.eval_exact:
            from stratagem.integrations.exact_eval import EXACT_GAMES

            if not any(g in EXACT_GAMES for g in (lc.eval_games or lc.games)):
                raise ConfigError(f"loop.eval_exact: evaluates {', '.join(EXACT_GAMES)}, and the evaluated games "
                                  f"({', '.join(lc.eval_games or lc.games)}) have none; add one to loop.eval_games")
            if self.reply.think:
                raise ConfigError("loop.eval_exact: a thinking reply (reply.think) has no table of action "
                                  "probabilities; turn one of them off")
        if lc.eval_episodes > 0:
            from stratagem.integrations.games_eval import GamesEvalConfig, plan

            try:  # the opponents of every evaluated game, before hours of training
                plan(GamesEvalConfig(games=[g for g in (lc.eval_games or lc.games) if g in strategic],
                                     opponent=lc.eval_opponent))
            except ValueError as e:
                raise ConfigError(f"loop.eval_opponent: {e}") from None
        if lc.episodes_per_iteration < len(lc.games):
            raise ConfigError(f"loop.episodes_per_iteration: must be >= the number of games ({len(lc.games)}), got "
                              f"{lc.episodes_per_iteration}")
        if lc.algo == "maro" and lc.episodes_per_iteration < 2:
            raise ConfigError("loop.episodes_per_iteration: MARO needs >= 2 episodes per mini-batch (its reference "
                              "point z0 pairs a prompt with a response from another episode), so at least 2 per "
                              f"iteration; got {lc.episodes_per_iteration}")
        if MYSTERY in lc.games:
            from stratagem.games.mystery.library import script_dir

            try:
                script_dir(lc.mystery_script)
            except FileNotFoundError as e:
                raise ConfigError(f"loop.mystery_script: {e}") from None
        if lc.policy_seat != "first" and not lc.opponents:
            raise ConfigError(f"loop.policy_seat: {lc.policy_seat!r} places the policy among loop.opponents, and "
                              "there are none (self-play trains every seat)")
        if lc.opponents:
            from stratagem.agents import check_agent_spec

            for g in lc.games:
                if g == MYSTERY:
                    continue
                seats = make_game(g).info.num_players
                if len(lc.opponents) != seats - 1:
                    raise ConfigError(f"loop.opponents: {g} has {seats} seats, so it needs {seats - 1} opponent(s) "
                                      f"for seats 1..; got {len(lc.opponents)}")
                for i, spec in enumerate(lc.opponents):
                    try:
                        check_agent_spec(spec, game=g)
                    except ValueError as e:
                        raise ConfigError(f"loop.opponents[{i}]: {e}") from None
        if self.reply.think and any(x in ("\n", ">") for x in self.sampling.stop):
            raise ConfigError(f"sampling.stop: reply.think runs each reply to the end of its turn, so a stop string "
                              f"{self.sampling.stop} would cut its thinking short; give sampling.stop: []")
        if self.reply.context_tokens is not None and self.server.max_model_len is not None \
                and self.server.max_model_len < self.reply.context_tokens and not lc.base_url:
            raise ConfigError(f"server.max_model_len: the server this run starts must hold reply.context_tokens="
                              f"{self.reply.context_tokens} tokens, got {self.server.max_model_len}")
        rw = self.rewards
        if rw.length_max_tokens <= rw.length_min_tokens:
            raise ConfigError(f"rewards.length_max_tokens: must exceed rewards.length_min_tokens "
                              f"({rw.length_min_tokens}), got {rw.length_max_tokens}")
        try:
            merged_policy(lc, can_reload=True, on_cpu=True)  # merged with the mystery or adapter opponents: fail early
        except ValueError as e:
            raise ConfigError(f"loop.policy_weights: {e}") from None
        _check_model(lc.model)


def _check_model(model: str) -> None:
    """loop.model is a registered name, a model directory or a hub id ("org/name"); a path that is none of these is
    an error now, not after the server started."""
    from pathlib import PurePath

    from stratagem.models import REGISTRY

    if model == "default" or model in REGISTRY:
        return
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ConfigError(f"loop.model: {p} is not a model directory (no config.json)")
        return
    hub_id = model.count("/") == 1 and not model.startswith(("/", ".", "~")) and len(PurePath(model).parts) == 2
    if not hub_id:
        raise ConfigError(f"loop.model: {model!r} is neither a registered model ({', '.join(REGISTRY)}), a model "
                          "directory nor a hub id (org/name)")


def adapter_name(iteration: int) -> str:
    """Served name of the policy after iteration k (`base` before the first update)."""
    return "base" if iteration == 0 else f"iter-{iteration}"


def merged_policy(cfg: LoopConfig, can_reload: bool, on_cpu: bool) -> bool:
    """Whether this run samples its policy from merged weights (see LoopConfig.policy_weights). `can_reload`: the
    server is one this run manages and may replace its weights."""
    blockers = ([] if can_reload else ["the server cannot reload its weights (let the run start it)"]) \
        + (["the mystery's judge is the base model"] if MYSTERY in cfg.games else []) \
        + (["an opponent is a served adapter"] if any(o.startswith("llm:") for o in cfg.opponents) else [])
    if cfg.policy_weights == "merged" and blockers:
        raise ValueError("policy_weights=merged is not possible here: " + "; ".join(blockers))
    return cfg.policy_weights == "merged" or (cfg.policy_weights == "auto" and not blockers and on_cpu)


class PolicyServer:
    """Puts policy iter-k on the server and verifies it there: as a LoRA adapter named iter-k, or merged into the
    weights the server serves as `base`. `served(k)` is the model name that samples iter-k."""

    def __init__(self, server: Any, store: RunStore, merged: bool, endpoints: Any = None):
        self.server, self.store, self.merged = server, store, merged
        self.endpoints = endpoints  # an integrations.servers.EndpointGroup: install on and verify every endpoint

    def served(self, k: int) -> str:
        return "base" if self.merged else adapter_name(k)

    def install(self, k: int) -> dict[str, Any]:
        faults.point("install")
        path = self.store.adapter_dir(k)
        if self.endpoints is not None:
            return self.endpoints.install(adapter_name(k), path)
        if self.merged:
            return self.server.load_policy_weights(path, adapter_name(k))
        name = self.server.load_adapter(adapter_name(k), path, replace=True)
        return self.server.verify_adapter(name, path) or {}


def episodes_per_game(cfg: LoopConfig) -> dict[str, int]:
    base, extra = divmod(cfg.episodes_per_iteration, len(cfg.games))
    return {g: base + (i < extra) for i, g in enumerate(cfg.games)}


# ---- rollouts: the seam tests replace -----------------------------------------------------------------------

# rollout(game, policy_model, n, seed, on_episode) -> episodes, in seed order
Rollout = Callable[[str, str, int, int, Callable[[Episode], None]], Awaitable[list[Episode]]]


def default_rollout(cfg: Any, base_url: str, pool: Any = None) -> Rollout:
    """Every game through its registered rollout (`get_game_spec(game).rollout`): strategic games with LLM agents
    on the server (self-play, or seat 0 against the opponents), the mystery with every character played by the
    policy. `cfg` is the run config (each game's rollout reads the sections it needs). With `pool` (an
    stratagem.endpoints.EndpointPool) the games are spread over its endpoints one game at a time (game i is a
    one-game job with seed + i), by load, and a dead endpoint's games are replayed on the others."""
    from stratagem.games.registry import RolloutJob, get_game_spec

    loop = getattr(cfg, "loop", cfg)

    async def rollout(game: str, model: str, n: int, seed: int, on_episode: Callable[[Episode], None]) -> list[Episode]:
        if pool is not None:
            async def play_one(url: str, i: int) -> Episode:
                return (await default_rollout(cfg, url)(game, model, 1, seed + i, lambda ep: None))[0]

            def done(ep: Episode, url: str) -> None:
                ep.metrics["endpoint"] = url
                on_episode(ep)

            return await pool.run(n, play_one, concurrency=loop.concurrency, on_result=done)
        job = RolloutJob(game=game, policy=model, n=n, seed=seed, base_url=base_url, run=cfg,
                         concurrency=loop.concurrency, on_episode=on_episode)
        return await get_game_spec(game).rollout(job)

    return rollout


def policy_seat_of(ep: Episode) -> int:
    """The policy's seat in a game against opponents, as the rollout recorded it (older runs: seat 0)."""
    return int(ep.metrics.get("policy_seat", 0))


def learner_for(cfg: LoopConfig) -> Callable[[Episode, int], bool]:
    """Self-play trains every seat; against opponents only the policy's seat. The mystery is always full
    self-play."""
    if not cfg.opponents:
        return lambda ep, seat: True
    return lambda ep, seat: ep.game == MYSTERY or seat == policy_seat_of(ep)


# ---- metrics ------------------------------------------------------------------------------------------------

def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return 0.0, 0.0
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


# ---- one update -------------------------------------------------------------------------------------------------

def update(trainer: LoRATrainer, cfg: RunConfig, episodes: list[Episode], iteration: int,
           adv_state: dict[str, Any]) -> dict[str, float]:
    """Advantages (estimator `algo`, loss `loss`) or per-act labels (a loss without advantages, such as maro) for
    the batch, then one trainer update through the loss's objective. Returns its metrics."""
    from stratagem.training.advantages import advantage_names
    from stratagem.training.objectives import NoReferencePairs, get_loss

    lc, tc = cfg.loop, cfg.trainer
    learner = learner_for(lc)
    loss_name = lc.loss if lc.algo in advantage_names() else lc.algo
    objective_cls = get_loss(loss_name)
    objective = objective_cls(getattr(cfg, objective_cls.config_section) if objective_cls.config_section else None)
    stats: dict[str, float] = {}
    if not objective_cls.uses_advantages:
        rng = random.Random(lc.seed * 1_000_003 + iteration)  # recipients drawn with the run's seed, per iteration
        labels = maro_labels(episodes, learner, cfg.maro, rng)
        batch = build_batch(episodes, lambda i, j: (i, j) in labels, pack=tc.pack, max_seq_len=tc.max_seq_len)
        desirable = [labels[(a.episode, a.turn)] for a in batch.acts]
        targets: Any = (desirable, episodes, rng)  # mismatched pairs are drawn per mini-batch
    else:
        adv = get_advantage(lc.algo)(episodes, learner, cfg.advantage, adv_state)
        batch = build_batch(episodes, lambda i, j: adv[i][j] is not None, pack=tc.pack, max_seq_len=tc.max_seq_len)
        targets = [float(adv[a.episode][a.turn]) for a in batch.acts]
        stats["adv_mean"], stats["adv_std"] = _mean_std(targets)
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
    return stats


# ---- the loop ---------------------------------------------------------------------------------------------------

def run_training(cfg: RunConfig, out: str | Path, *, resume: bool = False, resume_from: int | None = None,
                 server: Any = None, rollout: Rollout | None = None, progress: bool = True) -> RunStore:
    """Run (or resume) a training run in `out`. A resume first verifies the store (run_store.py) and continues after
    its last commit, or after iteration `resume_from` (rolled back to). `server` is a VLLMServer to use (default:
    attach to cfg.loop.base_url, several endpoints when it lists several, else start one from cfg.server); `rollout`
    replaces the default rollout (tests).

    Under `torchrun` / `accelerate launch` with N processes (training/distributed.py) rank 0 does everything
    below; the other ranks skip the server and the rollouts, receive each iteration's episodes from rank 0 and join
    the update (their share of the samples, gradients summed); only rank 0 writes to the run directory, which must
    be on a filesystem every node reads (a resume loads the adapter and optimizer state from it on every rank)."""
    from stratagem.models import resolve
    from stratagem.training.distributed import init_distributed

    dist = init_distributed(cfg.distributed)  # a single process without a launcher
    store = RunStore(out)
    if resume:
        saved = RunConfig.from_dict(store.read_config())
        saved.loop.iterations = cfg.loop.iterations  # a resume may extend the run, or use another server
        saved.loop.base_url = cfg.loop.base_url
        cfg = saved
        done = dist.broadcast_object(store.resume(resume_from)["iteration"] if dist.is_main else None)
    else:
        cfg.validate()
        if dist.is_main:
            store.create(cfg.to_dict(), trainer_dtype=str(resolve_dtype(cfg.trainer.dtype)).removeprefix("torch."))
        done = 0
    dist.barrier()
    lc = cfg.loop
    model_path = resolve(lc.model)

    import torch

    on_cpu = not torch.cuda.is_available()
    started = None
    endpoints = None
    if server is None and dist.is_main:
        from stratagem.endpoints import parse_endpoints
        from stratagem.integrations.servers import EndpointGroup
        from stratagem.integrations.vllm_server import VLLMServer

        urls = parse_endpoints(lc.base_url)
        if len(urls) > 1 or (urls and cfg.server.adapter_sync):
            server = endpoints = EndpointGroup(urls, model_path=model_path, api_key=cfg.server.api_key,
                                               sync=cfg.server.adapter_sync)
        elif urls:
            server = VLLMServer.attach(urls[0], model_path=model_path, api_key=cfg.server.api_key)
        else:
            import dataclasses

            # colocated: a GPU shared with this process's trainer gets the smaller memory share and sleep mode
            scfg = dataclasses.replace(cfg.server, model=model_path, adapters=dict(cfg.server.adapters),
                                       extra_args=list(cfg.server.extra_args),
                                       max_lora_rank=max(cfg.server.max_lora_rank, cfg.trainer.rank),
                                       weight_reload=cfg.server.weight_reload or merged_policy(lc, True, on_cpu),
                                       colocated=cfg.server.colocated or not on_cpu)
            started = server = VLLMServer(scfg)
            server.start()
    if server is not None and hasattr(server, "pool"):
        endpoints = server  # an EndpointGroup given by the caller
    owned = server if getattr(server, "_owned", False) else None  # only a server we manage can be restarted
    can_reload = owned is not None and getattr(getattr(server, "config", None), "weight_reload", False)
    policies = PolicyServer(server, store, merged_policy(lc, can_reload, on_cpu), endpoints) if dist.is_main else None
    if dist.is_main:
        rollout = rollout or default_rollout(cfg, server.base_url, endpoints.pool if endpoints else None)
    sleeps = started is not None and started.sleep_enabled

    trainer = LoRATrainer(model_path, cfg.trainer, seed=lc.seed, temperature=cfg.sampling.temperature,
                          adapter_path=store.adapter_dir(done) if done else None, total_iterations=lc.iterations)
    adv_state: dict[str, Any] = {}
    if done:
        saved_state = store.load_state(done)
        trainer.load_state_dict(saved_state["trainer"])
        adv_state = saved_state["loop"]["advantage_state"]
        if policies is not None:
            policies.install(done)

    tb = None
    if dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(store.tb_dir), purge_step=done + 1)
    trackers = None
    if dist.is_main and lc.trackers:
        from stratagem.training.trackers import Trackers

        trackers = Trackers(lc.trackers, store.root, cfg.to_dict())
    exact = lc.eval_exact and dist.is_main
    if exact and not (store.root / "eval" / "exact-before.json").is_file():
        from stratagem.training.compare import evaluate_exact

        evaluate_exact(cfg, trainer, adapter_name(done), "before", store.root / "eval")
    evaluating = lc.eval_episodes > 0 and dist.is_main
    if evaluating and not (store.root / "eval" / "before.json").is_file():
        from stratagem.training.compare import evaluate_policy

        # the policy this run starts from (the base model, or the adapter a resume starts from)
        evaluate_policy(cfg, server.base_url, policies.served(done), "before", store.root / "eval")
    try:
        for k in range(done + 1, lc.iterations + 1):
            policy = adapter_name(k - 1)

            # 1. rollout with the current policy (retried after a server crash); rank 0 plays, the others receive
            t0 = time.perf_counter()
            if endpoints is not None:
                from stratagem.endpoints import PoolStats

                endpoints.pool.stats = PoolStats()  # games per endpoint, this iteration
            episodes = _rollout_with_retries(rollout, lc, store, server, owned, policies, k, progress) \
                if dist.is_main else None
            episodes = dist.broadcast_object(episodes)
            rollout_s = time.perf_counter() - t0

            # 2-3. advantages / labels and the update (the engine sleeps meanwhile when it shares the GPU)
            if sleeps:
                started.sleep()
            t1 = time.perf_counter()
            stats = update(trainer, cfg, episodes, k, adv_state)  # metrics already summed over the ranks
            update_s = time.perf_counter() - t1

            # 4. save iter-k (adapter + optimizer + RNG), put it on the server, prove the server samples from it
            if not dist.is_main:
                dist.barrier()
                continue
            store.save_iteration(k, trainer, {"advantage_state": adv_state})
            if sleeps:
                torch.cuda.empty_cache()  # hand the trainer's cached blocks back before the engine reclaims its share
                started.wake_up()
            t2 = time.perf_counter()
            check = policies.install(k)
            stats["install_s"] = time.perf_counter() - t2
            if endpoints is not None:
                stats.update({f"endpoint_games/{u}": float(c) for u, c in endpoints.pool.stats.per_endpoint.items()})
                stats["games_moved"] = float(endpoints.pool.stats.moved)

            # 5. log and commit
            metrics = {"iteration": k, "policy": policy, "episodes": len(episodes), "rollout_s": rollout_s,
                       "trainer_dtype": str(trainer.dtype).removeprefix("torch."),
                       "update_s": update_s, **episode_metrics(episodes), **stats,
                       **{f"verify/{a}": float(b) for a, b in (check or {}).items() if isinstance(b, (int, float))}}
            store.commit(k, len(episodes), metrics)
            for key, v in metrics.items():
                if isinstance(v, (int, float)) and key != "iteration":
                    tb.add_scalar(key, v, k)
            tb.flush()
            if trackers is not None:
                trackers.log(metrics, k)
            if progress:
                _print_summary(metrics)
            dist.barrier()
        if evaluating:
            from stratagem.training.compare import evaluate_policy, print_comparison

            final = store.completed_iterations()
            after = evaluate_policy(cfg, server.base_url, policies.served(final), "after", store.root / "eval")
            before = json.loads((store.root / "eval" / "before.json").read_text())
            print_comparison(before, after, "start", adapter_name(final))
        if exact:
            from stratagem.training.compare import evaluate_exact, print_exact_comparison

            final = store.completed_iterations()
            after = evaluate_exact(cfg, trainer, adapter_name(final), "after", store.root / "eval")
            before = json.loads((store.root / "eval" / "exact-before.json").read_text())
            print_exact_comparison(before, after, "start", adapter_name(final))
    finally:
        if tb is not None:
            tb.close()
        if trackers is not None:
            trackers.close()
        if started is not None:
            started.stop()
    return store


def _rollout_with_retries(rollout: Rollout, lc: LoopConfig, store: RunStore, server: Any, owned: Any,
                          policies: PolicyServer, k: int, progress: bool) -> list[Episode]:
    """All games of iteration k. Episodes are appended to the store as they finish (uncommitted until the
    iteration commits). If the server died, the partial rollout is dropped, the server restarted (when owned)
    with the current adapter, and the rollout tried again, at most lc.rollout_retries times."""
    for attempt in range(lc.rollout_retries + 1):
        try:
            return asyncio.run(_rollout_all(rollout, lc, store, policies.served(k - 1), adapter_name(k - 1), k,
                                            progress))
        except Exception as e:  # noqa: BLE001  only a dead server is retried; anything else is re-raised below
            if server.alive() or attempt == lc.rollout_retries:
                raise
            if owned is None:
                raise RuntimeError(f"the vLLM server at {server.base_url} went down during iteration {k} and this "
                                   "run did not start it; restart it and pass --resume") from e
            log.warning("vLLM server died during iteration %d (%r); restarting and retrying the iteration", k, e)
            store.rollback()
            owned.restart()  # back to the base weights, no adapters
            if k > 1:
                policies.install(k - 1)
    raise AssertionError("unreachable")


async def _rollout_all(rollout: Rollout, lc: LoopConfig, store: RunStore, served: str, policy: str, k: int,
                       progress: bool) -> list[Episode]:
    """`served` is the model name that samples `policy` (`base` when the policy is merged into the weights); turns
    it sampled are recorded as sampled by `policy`."""
    from rich.progress import Progress

    per_game = episodes_per_game(lc)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"iteration {k}: rollout with {policy}", total=sum(per_game.values()))

        def on_episode(ep: Episode) -> None:
            ep.iteration = k
            for t in ep.turns:
                if t.adapter == served:
                    t.adapter = policy
            for seat in ep.seats:  # the seat's agent names the policy too, not the served name that sampled it
                if seat.agent == f"llm:{served}":
                    seat.agent = f"llm:{policy}"
            faults.point("rollout.episode")
            store.append_episode(ep)
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
