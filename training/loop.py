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
import dataclasses
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from stratagem.games.core import Episode
from stratagem.training.advantages import AdvantageConfig, get_advantage
from stratagem.training.losses import MAROConfig, PPOConfig, maro_labels, mismatched_pairs
from stratagem.training.run_store import RunStore
from stratagem.training.samples import build_batch, mismatched_samples
from stratagem.training.trainer import LoRATrainer, TrainerConfig

ALGOS = ("mars", "grpo", "rae", "maro")
MYSTERY = "mystery"


@dataclass
class LoopConfig:
    algo: str = field(default="mars", metadata={"help": "mars, grpo or rae (advantage estimator + clipped policy "
                      "loss) or maro (MARO loss)."})
    games: list[str] = field(default_factory=lambda: ["tictactoe"], metadata={"help": "Games to train on (strategic "
                             "game names, or 'mystery'); the episodes of an iteration are split evenly over them."})
    iterations: int = field(default=2, metadata={"help": "Iterations (rollout + update) to run in total."})
    episodes_per_iteration: int = field(default=8, metadata={"help": "Episodes rolled out per iteration."})
    model: str = field(default="default", metadata={"help": "Base model: registered name or local directory."})
    base_url: str | None = field(default=None, metadata={"help": "Use this running vLLM server (it must serve the "
                                 "same base model as `base`, with runtime LoRA loading); none: start one."})
    seed: int = field(default=0, metadata={"help": "Run seed: trainer init, sampling seeds, MARO recipients."})
    concurrency: int = field(default=8, metadata={"help": "Games in flight at once during a rollout."})
    max_tokens: int = field(default=48, metadata={"help": "Longest model reply in a strategic game."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the policy."})
    response_prefix: str = field(default="<answer>{legal_prefix}", metadata={"help": "Forced start of every "
                                 "strategic-game reply; {legal_prefix} is the start all legal actions share (the "
                                 "default model writes almost no well-formed answer without it)."})
    stop: list[str] = field(default_factory=lambda: [">", "\n"], metadata={"help": "Stop strings of a "
                            "strategic-game reply, kept in the reply. Every action ends with '>', so the reply ends "
                            "with the action and nothing after it is sampled or trained (see open_answer)."})
    open_answer: bool = field(default=True, metadata={"help": "Accept an answer left unclosed at the end of the "
                              "reply (what the '>' stop string produces); off: require <answer>...</answer>."})
    rewards: dict[str, Any] = field(default_factory=dict, metadata={"help": "RewardConfig overrides of the strategic "
                                    "games, e.g. {length_penalty: 0.05, length_free_tokens: 4}."})
    opponents: list[str] = field(default_factory=list, metadata={"help": "Agent specs for seats 1.. (e.g. random, "
                                 "mcts:50, llm:iter-2 for a frozen adapter); empty: self-play, every seat learns. "
                                 "With opponents only seat 0 is trained."})
    mystery_script: str = field(default="lighthouse", metadata={"help": "Script played when games has 'mystery'."})
    mystery: dict[str, Any] = field(default_factory=dict, metadata={"help": "MysteryConfig overrides, e.g. "
                                    "{rounds: 1, player_max_tokens: 32}."})
    rollout_retries: int = field(default=2, metadata={"help": "Times an iteration's rollout is retried after the "
                                 "vLLM server died (restarted first when this run started it)."})
    max_lora_rank: int = field(default=16, metadata={"help": "--max-lora-rank of a server this run starts (raised "
                               "to the trainer's rank if smaller)."})
    policy_weights: str = field(default="auto", metadata={"help": "How the server samples the current policy iter-k: "
                                "'lora' hot-loads it as an adapter (vLLM's LoRA path, about a third of base speed on "
                                "a CPU); 'merged' merges it into the base weights and reloads them in place (base "
                                "speed, one merge + reload per iteration; needs a server this run starts, no frozen "
                                "adapter opponents and no mystery, whose judge is the base model); 'auto': merged "
                                "where allowed and serving runs on the CPU, else lora (a GPU serves LoRA fast). "
                                "Either way the server's copy is verified."})


@dataclass
class RunConfig:
    loop: LoopConfig = field(default_factory=LoopConfig, metadata={"help": "The loop."})
    trainer: TrainerConfig = field(default_factory=TrainerConfig, metadata={"help": "The LoRA trainer."})
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig, metadata={"help": "Advantage options."})
    ppo: PPOConfig = field(default_factory=PPOConfig, metadata={"help": "Clipped policy loss options."})
    maro: MAROConfig = field(default_factory=MAROConfig, metadata={"help": "MARO loss options."})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Nested sections by name; an unknown section or field is an error naming it."""
        out = cls()
        for section, values in (d or {}).items():
            if section not in {f.name for f in dataclasses.fields(cls)}:
                raise ValueError(f"unknown config section {section!r}; expected one of "
                                 f"{[f.name for f in dataclasses.fields(cls)]}")
            target = getattr(out, section)
            names = {f.name for f in dataclasses.fields(target)}
            for k, v in (values or {}).items():
                if k not in names:
                    raise ValueError(f"unknown field {section}.{k}; expected one of {sorted(names)}")
                setattr(target, k, v)
        out.validate()
        return out

    def validate(self) -> None:
        lc = self.loop
        if lc.algo not in ALGOS:
            raise ValueError(f"algo must be one of {', '.join(ALGOS)}; got {lc.algo!r}")
        if lc.algo != "maro":
            get_advantage(lc.algo)
        if not lc.games:
            raise ValueError("games must name at least one game")
        if lc.policy_weights not in ("auto", "lora", "merged"):
            raise ValueError(f"policy_weights must be auto, lora or merged; got {lc.policy_weights!r}")
        merged_policy(lc, can_reload=True, on_cpu=True)  # merged with the mystery or adapter opponents: fail early
        if lc.iterations < 1 or lc.episodes_per_iteration < len(lc.games):
            raise ValueError(f"need iterations >= 1 and episodes_per_iteration >= number of games ({len(lc.games)}); "
                             f"got {lc.iterations} and {lc.episodes_per_iteration}")


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

    def __init__(self, server: Any, store: RunStore, merged: bool):
        self.server, self.store, self.merged = server, store, merged

    def served(self, k: int) -> str:
        return "base" if self.merged else adapter_name(k)

    def install(self, k: int) -> dict[str, Any]:
        path = self.store.adapter_dir(k)
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


def default_rollout(cfg: LoopConfig, base_url: str) -> Rollout:
    """Strategic games through `collect_episodes` with LLM agents on the server (self-play, or seat 0 against
    `cfg.opponents`); the mystery through `collect_mystery_episodes` with every character played by the policy."""

    async def rollout(game: str, model: str, n: int, seed: int, on_episode: Callable[[Episode], None]) -> list[Episode]:
        if game == MYSTERY:
            from stratagem.games.mystery.game import MysteryConfig
            from stratagem.games.mystery.rollout import collect_mystery_episodes

            return await collect_mystery_episodes(cfg.mystery_script, n, base_url=base_url, player_model=model,
                                                  judge_model="base", config=MysteryConfig(**cfg.mystery),
                                                  concurrency=cfg.concurrency, seed=seed, on_episode=on_episode)
        from stratagem.agents import close_agents, make_agent
        from stratagem.games.base import GameConfig, ReplyFormat, RewardConfig
        from stratagem.games.registry import make_game
        from stratagem.training.rollout import collect_episodes

        extra = {"stop": list(cfg.stop), "include_stop_str_in_output": True} if cfg.stop else {}

        def agent(spec: str, seat_seed: int):
            # sampling is left unseeded: identical opening prompts must still give different replies
            llm = dict(max_tokens=cfg.max_tokens, temperature=cfg.temperature, extra_body=extra) \
                if spec.startswith("llm:") else {}
            return make_agent(spec, base_url=base_url, seed=seat_seed, game=game, **llm)

        policy = agent(f"llm:{model}", seed)
        if cfg.opponents:
            seats = [policy] + [agent(spec, seed + 1 + i) for i, spec in enumerate(cfg.opponents)]
        else:
            seats = [policy] * make_game(game).info.num_players
        game_cfg = GameConfig(rewards=RewardConfig(**cfg.rewards), reply=ReplyFormat(response_prefix=cfg.response_prefix,
                                                                              open_answer=cfg.open_answer))
        try:
            return await collect_episodes(game, seats, n, concurrency=cfg.concurrency, seed=seed, config=game_cfg,
                                          on_episode=on_episode)
        finally:
            await close_agents(seats)

    return rollout


def learner_for(cfg: LoopConfig) -> Callable[[Episode, int], bool]:
    """Self-play trains every seat; against opponents only seat 0. The mystery is always full self-play."""
    if not cfg.opponents:
        return lambda ep, seat: True
    return lambda ep, seat: ep.game == MYSTERY or seat == 0


# ---- metrics ------------------------------------------------------------------------------------------------

def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Per (game, role): mean return and win rate; per game: the share of model turns that were illegal."""
    ret: dict[str, list[float]] = defaultdict(list)
    win: dict[str, list[float]] = defaultdict(list)
    illegal: dict[str, list[float]] = defaultdict(list)
    for ep in episodes:
        for s in ep.seats:
            key = f"{ep.game}/{s.role}"
            ret[key].append(float(ep.returns[s.index]))
            won = (s.faction == ep.winning_faction) if ep.winning_faction is not None else s.index in ep.winners
            win[key].append(float(won))
        for t in ep.turns:
            if t.completion_token_ids is not None:
                illegal[ep.game].append(float(not t.legal))
    out: dict[str, float] = {}
    for k, v in ret.items():
        out[f"return/{k}"] = sum(v) / len(v)
        out[f"win_rate/{k}"] = sum(win[k]) / len(win[k])
    for g, v in illegal.items():
        out[f"illegal_rate/{g}"] = sum(v) / len(v)
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return 0.0, 0.0
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


# ---- one update -------------------------------------------------------------------------------------------------

def update(trainer: LoRATrainer, cfg: RunConfig, episodes: list[Episode], iteration: int,
           adv_state: dict[str, Any]) -> dict[str, float]:
    """Advantages or MARO labels for the batch, then one trainer update. Returns its metrics."""
    lc, tc = cfg.loop, cfg.trainer
    learner = learner_for(lc)
    if lc.algo == "maro":
        rng = random.Random(lc.seed * 1_000_003 + iteration)  # recipients drawn with the run's seed, per iteration
        labels = maro_labels(episodes, learner, cfg.maro, rng)
        batch = build_batch(episodes, lambda i, j: (i, j) in labels, pack=tc.pack, max_seq_len=tc.max_seq_len)
        desirable = [labels[(a.episode, a.turn)] for a in batch.acts]
        mism = mismatched_samples(episodes, batch, mismatched_pairs(len(batch.acts)))
        stats = trainer.maro_step(batch, desirable, mism, cfg.maro)
    else:
        adv = get_advantage(lc.algo)(episodes, learner, cfg.advantage, adv_state)
        batch = build_batch(episodes, lambda i, j: adv[i][j] is not None, pack=tc.pack, max_seq_len=tc.max_seq_len)
        act_adv = [float(adv[a.episode][a.turn]) for a in batch.acts]
        m, sd = _mean_std(act_adv)
        stats = {"adv_mean": m, "adv_std": sd, **trainer.ppo_step(batch, act_adv, cfg.ppo)}
    stats["trained_acts"] = float(len(batch.acts))
    stats["dropped_acts"] = float(batch.dropped)
    return stats


# ---- the loop ---------------------------------------------------------------------------------------------------

def run_training(cfg: RunConfig, out: str | Path, *, resume: bool = False, server: Any = None,
                 rollout: Rollout | None = None, progress: bool = True) -> RunStore:
    """Run (or resume) a training run in `out`. `server` is a VLLMServer to use (default: attach to
    cfg.loop.base_url, else start one); `rollout` replaces the default rollout (tests)."""
    from stratagem.models import resolve

    store = RunStore(out)
    if resume:
        saved = RunConfig.from_dict(store.read_config())
        saved.loop.iterations = cfg.loop.iterations  # a resume may extend the run, or use another server
        saved.loop.base_url = cfg.loop.base_url
        cfg = saved
        done = store.rollback()["iteration"]
    else:
        cfg.validate()
        store.create(cfg.to_dict())
        done = 0
    lc = cfg.loop
    model_path = resolve(lc.model)

    import torch

    on_cpu = not torch.cuda.is_available()
    started = None
    if server is None:
        from stratagem.integrations.vllm_server import VLLMServer

        if lc.base_url:
            server = VLLMServer.attach(lc.base_url, model_path=model_path)
        else:
            started = server = VLLMServer(model=model_path, max_lora_rank=max(lc.max_lora_rank, cfg.trainer.rank),
                                          weight_reload=merged_policy(lc, True, on_cpu))
            server.start()
    owned = server if getattr(server, "_owned", False) else None  # only a server we manage can be restarted
    can_reload = owned is not None and getattr(getattr(server, "config", None), "weight_reload", False)
    policies = PolicyServer(server, store, merged_policy(lc, can_reload, on_cpu))
    rollout = rollout or default_rollout(lc, server.base_url)

    trainer = LoRATrainer(model_path, cfg.trainer, seed=lc.seed,
                          adapter_path=store.adapter_dir(done) if done else None)
    adv_state: dict[str, Any] = {}
    if done:
        saved_state = store.load_state(done)
        trainer.load_state_dict(saved_state["trainer"])
        adv_state = saved_state["loop"]["advantage_state"]
        policies.install(done)

    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(store.tb_dir), purge_step=done + 1)
    try:
        for k in range(done + 1, lc.iterations + 1):
            policy = adapter_name(k - 1)

            # 1. rollout with the current policy (retried after a server crash)
            t0 = time.perf_counter()
            episodes = _rollout_with_retries(rollout, lc, store, server, owned, policies, k, progress)
            rollout_s = time.perf_counter() - t0

            # 2-3. advantages / labels and the update
            t1 = time.perf_counter()
            stats = update(trainer, cfg, episodes, k, adv_state)
            update_s = time.perf_counter() - t1

            # 4. save iter-k (adapter + optimizer + RNG), put it on the server, prove the server samples from it
            store.save_iteration(k, trainer, {"advantage_state": adv_state})
            t2 = time.perf_counter()
            check = policies.install(k)
            stats["install_s"] = time.perf_counter() - t2

            # 5. log and commit
            metrics = {"iteration": k, "policy": policy, "episodes": len(episodes), "rollout_s": rollout_s,
                       "update_s": update_s, **episode_metrics(episodes), **stats,
                       **{f"verify/{a}": float(b) for a, b in (check or {}).items() if isinstance(b, (int, float))}}
            store.commit(k, len(episodes), metrics)
            for key, v in metrics.items():
                if isinstance(v, (int, float)) and key != "iteration":
                    tb.add_scalar(key, v, k)
            tb.flush()
            if progress:
                _print_summary(metrics)
    finally:
        tb.close()
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
            print(f"vLLM server died during iteration {k} ({e!r}); restarting and retrying the iteration")
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
            store.append_episode(ep)
            bar.advance(task)

        episodes: list[Episode] = []
        for gi, (game, n) in enumerate(per_game.items()):
            # distinct sampling seeds per (run seed, iteration, game), the same on every retry and resume
            seed = lc.seed * 1_000_000 + k * 10_000 + gi * 1_000
            episodes += await rollout(game, served, n, seed, on_episode)
    return episodes


def _print_summary(m: dict[str, Any]) -> None:
    from rich.console import Console

    keys = [k for k in m if k.startswith(("return/", "win_rate/", "illegal_rate/"))]
    parts = [f"{k}={m[k]:.3f}" for k in keys] + [f"{k}={m[k]:.3g}" for k in ("loss", "kl", "tokens_per_s") if k in m]
    Console(stderr=True).print(f"[bold]iteration {m['iteration']}[/bold] ({m['episodes']} episodes, rollout "
                               f"{m['rollout_s']:.0f}s, update {m['update_s']:.0f}s): " + " ".join(parts))
