"""The configuration of a training run: one typed section per component (`RunConfig`), the loop's own section
(`LoopConfig`), and every check of the whole config (`RunConfig.validate`), run once before any model or server
starts. The flags of `stratagem train` and the YAML files are generated from these dataclasses (stratagem.config).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from stratagem.agents import check_agent_spec
from stratagem.agents.sampling import SamplingConfig
from stratagem.config import ConfigError
from stratagem.config import check as check_config
from stratagem.config import from_dict as config_from_dict
from stratagem.config import to_dict as config_to_dict
from stratagem.games.base import ReplyFormat, RewardConfig
from stratagem.games.mystery.game import MysteryConfig
from stratagem.games.mystery.library import script_dir
from stratagem.games.registry import game_names, make_game
from stratagem.integrations.exact_eval import EXACT_GAMES
from stratagem.integrations.games_eval import GamesEvalConfig, plan
from stratagem.integrations.vllm_server import ServerConfig
from stratagem.models import REGISTRY
from stratagem.preset import preset_names
from stratagem.training.advantages import AdvantageConfig, advantage_names
from stratagem.training.distributed import DistributedConfig
from stratagem.training.league import LeagueConfig
from stratagem.training.losses import MAROConfig, PPOConfig
from stratagem.training.objectives import loss_names
from stratagem.training.trackers import check_trackers
from stratagem.training.trainer import TrainerConfig, check_roles

MYSTERY = "mystery"
# tokens of '</think><answer>', the longest built-in action and '</answer>', as the default model tokenizes them
THINK_ANSWER_TAGS = 32
log = logging.getLogger(__name__)
# what a resume may change: the run may be extended, continue on another server, or overlap its rollouts with its
# updates or stop doing so (the episodes record the policy that sampled them); every other field is the run's
RESUMABLE = ("loop.iterations", "loop.base_url", "loop.async_rollout", "loop.max_staleness")


def resumed(saved: RunConfig, given: RunConfig) -> RunConfig:
    """The config a resume continues with: `saved` (the run's own), with `given`'s values of the RESUMABLE fields,
    checked again as a whole (a combination the run's own config did not have, such as async_rollout with
    per-role adapters, is refused)."""
    for path in RESUMABLE:
        section, name = path.split(".")
        setattr(getattr(saved, section), name, getattr(getattr(given, section), name))
    saved.validate()
    return saved


def known_algos() -> tuple[str, ...]:
    """The values `loop.algo` takes: every registered advantage estimator (paired with `loop.loss`), and every
    registered loss that needs no advantages (maro)."""
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
    eval_exact_every: int = field(default=0, metadata={"help": "Every N iterations, also evaluate the new policy "
                                  "iter-k exactly (as eval_exact does, by the trainer's own model, no server) and "
                                  "commit its numbers with the iteration's metrics (exact/GAME/exploitability, "
                                  "exact/GAME/vs_cfr, ...): the learner's exploitability over the run. 0: off.",
                                  "min": 0})
    league: LeagueConfig = field(default_factory=LeagueConfig, metadata={"help": "League play: each game's "
                                 "opponents drawn from the run's past policies and bots (training/league.py)."})
    eval_games: list[str] = field(default_factory=list, metadata={"help": "Strategic games of that evaluation "
                                  "(empty: the run's training games; MARSHAL evaluates the held-out ones too)."})
    policy_weights: str = field(default="auto", metadata={"help": "How the server samples the current policy iter-k: "
                                "'lora' hot-loads it as an adapter (vLLM's LoRA path, about a third of base speed on "
                                "a CPU); 'merged' merges it into the base weights and reloads them in place (base "
                                "speed, one merge + reload per iteration; needs a server this run starts, no frozen "
                                "adapter opponents and no mystery, whose judge is the base model); 'auto': merged "
                                "where allowed and serving runs on the CPU, else lora (a GPU serves LoRA fast). "
                                "Either way the server's copy is verified.", "choices": ("auto", "lora", "merged")})
    async_rollout: bool = field(default=False, metadata={"help": "Overlap each update with the next rollout: while "
                                "the trainer updates iteration k, the servers already play iteration k+1's games "
                                "with the newest policy installed (iter-(k-1)), at most max_staleness versions "
                                "behind the policy trained on them (episode metrics behaviour_policy and staleness). "
                                "The importance ratio's denominator stays the sampling policy's log-prob: "
                                "ppo.old_logprobs trainer scores a stale episode's turns under the LoRA weights of "
                                "the adapter that sampled them. The servers do not sleep during the update; iter-k "
                                "is installed once those games are done, and their episodes are written after "
                                "iteration k commits, so a kill loses them: the resume plays that iteration again, "
                                "synchronously, with the then-current policy. Off: rollout and update alternate. "
                                "Not with several trainer processes, trainer.adapters per_role, league play or "
                                "server.sleep_mode on."})
    max_staleness: int = field(default=1, metadata={"help": "With async_rollout: how many policy versions the "
                               "sampling policy may lag the one being trained. 1 (the only depth built so far): one "
                               "background rollout in flight, iteration k+1's games sampled by iter-(k-1).",
                               "min": 1, "max": 1})


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
    def from_dict(cls, d: dict[str, Any] | None) -> RunConfig:
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

        if lc.preset not in preset_names():
            raise ConfigError(f"loop.preset: must be one of {', '.join(preset_names())}, got {lc.preset!r}")
        algos = known_algos()
        if lc.algo not in algos:
            raise ConfigError(f"loop.algo: must be one of {', '.join(algos)}, got {lc.algo!r}")
        if not lc.games:
            raise ConfigError("loop.games: must name at least one game")

        try:
            check_trackers(lc.trackers)
        except ValueError as e:
            raise ConfigError(f"loop.trackers: {e}") from None

        if lc.loss not in loss_names(uses_advantages=True):
            raise ConfigError(f"loop.loss: must be one of {', '.join(loss_names(uses_advantages=True))}, got "
                              f"{lc.loss!r}")
        if self.ppo.old_logprobs == "endpoint" and self.sampling.temperature != 1.0:
            raise ConfigError("ppo.old_logprobs: 'endpoint' needs sampling.temperature 1 (the server reports "
                              f"log-probs of the untempered distribution), got {self.sampling.temperature}; use "
                              "'trainer'")
        if self.ppo.reference == "endpoint":
            if not self.ppo.reference_url:
                raise ConfigError("ppo.reference_url: 'endpoint' reference log-probs need the URL of a server of the "
                                  "unmodified base model (http://HOST:PORT/v1)")
            if self.trainer.temper_logprobs and self.sampling.temperature != 1.0:
                raise ConfigError("ppo.reference: 'endpoint' gives untempered log-probs (vLLM's prompt log-probs), "
                                  f"but the trainer scores at sampling.temperature {self.sampling.temperature}; set "
                                  "trainer.temper_logprobs false (as MARSHAL does) or use 'trainer'")

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
        if lc.eval_exact or lc.eval_exact_every:
            if not any(g in EXACT_GAMES for g in (lc.eval_games or lc.games)):
                raise ConfigError(f"loop.eval_exact(_every): evaluates {', '.join(EXACT_GAMES)}, and the evaluated games "
                                  f"({', '.join(lc.eval_games or lc.games)}) have none; add one to loop.eval_games")
            if self.reply.think:
                raise ConfigError("loop.eval_exact(_every): a thinking reply (reply.think) has no table of action "
                                  "probabilities; turn one of them off")
        if lc.eval_episodes > 0:
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
        if MYSTERY in lc.games and self.mystery.player_temperature not in (None, self.sampling.temperature):
            raise ConfigError(f"mystery.player_temperature: the trainer scores the policy's turns at "
                              f"sampling.temperature={self.sampling.temperature}, so the players must sample at it "
                              f"too; got {self.mystery.player_temperature} (leave it unset to follow sampling)")
        if MYSTERY in lc.games:
            try:
                script_dir(lc.mystery_script)
            except FileNotFoundError as e:
                raise ConfigError(f"loop.mystery_script: {e}") from None
        if lc.league.pool:
            if lc.opponents:
                raise ConfigError("loop.league.pool: league play draws every game's opponents from the pool, so "
                                  f"loop.opponents must be empty; got {lc.opponents}")
            if MYSTERY in lc.games:
                raise ConfigError("loop.league.pool: league play seats past policies in the strategic games; the "
                                  "mystery is full self-play (train it in a run of its own)")
            for g in lc.games:
                for i, spec in enumerate(lc.league.bots):
                    try:
                        check_agent_spec(spec, game=g)
                    except ValueError as e:
                        raise ConfigError(f"loop.league.bots[{i}]: {e}") from None
        elif lc.league.bots:
            raise ConfigError("loop.league.bots: bots join the league's pool, and league play is off "
                              "(loop.league.pool is 0)")
        if lc.policy_seat != "first" and not (lc.opponents or lc.league.pool):
            raise ConfigError(f"loop.policy_seat: {lc.policy_seat!r} places the policy among loop.opponents, and "
                              "there are none (self-play trains every seat)")
        if lc.opponents:
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
        sp = self.sampling
        if sp.constrain == "think_answer" and sp.max_tokens < 4 * sp.constrain_think_chars + THINK_ANSWER_TAGS:
            # the regex bounds characters, the budget counts tokens: a character can be 4 byte tokens, so a reply
            # that uses its whole reasoning budget can run out of tokens before its answer, a forfeit
            log.warning("sampling.max_tokens=%d may cut a think_answer reply short: %d reasoning characters can take "
                        "up to %d byte tokens, plus about %d for the tags and the action; raise max_tokens or lower "
                        "sampling.constrain_think_chars", sp.max_tokens, sp.constrain_think_chars,
                        4 * sp.constrain_think_chars, THINK_ANSWER_TAGS)
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
            # merged with the mystery, adapter opponents or per-role adapters: fail early
            merged_policy(lc, can_reload=True, on_cpu=True, per_role=self.trainer.adapters == "per_role")
        except ValueError as e:
            raise ConfigError(f"loop.policy_weights: {e}") from None
        if lc.async_rollout:
            if self.trainer.adapters == "per_role":
                raise ConfigError("loop.async_rollout: not with trainer.adapters per_role (each role's adapter "
                                  "would need its own stale weights and served names); use one shared adapter or "
                                  "turn async_rollout off")
            if lc.league.pool:
                raise ConfigError("loop.async_rollout: not with league play (loop.league.pool): its opponents are "
                                  "drawn for the iteration the learner's policy belongs to, which a stale policy "
                                  "would shift by one; turn one of them off")
            if self.server.sleep_mode == "on":
                raise ConfigError("loop.async_rollout: the servers play the next games during the update, so "
                                  "server.sleep_mode on (the engine asleep during the update) cannot hold; use "
                                  "sleep_mode auto or off")
        if self.trainer.adapters == "per_role":
            if lc.opponents or lc.league.pool:
                raise ConfigError("trainer.adapters: per_role trains each role's adapter on its own seats in "
                                  "self-play; loop.opponents and loop.league train one seat against others (use "
                                  "one shared adapter there)")
            try:
                check_roles(run_roles(self))
            except ValueError as e:
                raise ConfigError(str(e)) from None
            untrained = [g for g in lc.eval_games if not set(game_roles(g)) <= set(run_roles(self))]
            if untrained and (lc.eval_episodes > 0 or lc.eval_exact or lc.eval_exact_every):
                raise ConfigError(f"loop.eval_games: {', '.join(untrained)} seat roles that no per-role adapter of "
                                  f"this run trains (its roles: {', '.join(run_roles(self))})")
        _check_model(lc.model)


def _check_model(model: str) -> None:
    """loop.model is a registered name, a model directory or a hub id ("org/name"); a path that is none of these is
    an error now, not after the server started."""

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


def game_roles(game: str) -> tuple[str, ...]:
    """The adapter roles of a game's seats under per-role adapters (samples.adapter_role): the mystery's factions,
    else the game's own seat roles."""
    if game == MYSTERY:
        from stratagem.games.mystery.game import CIVILIAN, CULPRIT

        return (CULPRIT, CIVILIAN)
    return make_game(game).info.roles


def run_roles(cfg: RunConfig) -> list[str]:
    """The roles of a run's per-role adapters, over its games in order (games naming a role alike share it); empty
    with one shared adapter."""
    if cfg.trainer.adapters != "per_role":
        return []
    return list(dict.fromkeys(r for g in cfg.loop.games for r in game_roles(g)))


def merged_policy(cfg: LoopConfig, can_reload: bool, on_cpu: bool, *, per_role: bool = False) -> bool:
    """Whether this run samples its policy from merged weights (see LoopConfig.policy_weights). `can_reload`: the
    server is one this run manages and may replace its weights; `per_role`: trainer.adapters is per_role (each
    role's adapter served beside the others)."""
    blockers = ([] if can_reload else ["the server cannot reload its weights (let the run start it)"]) \
        + (["each role has its own adapter (trainer.adapters per_role)"] if per_role else []) \
        + (["the mystery's judge is the base model"] if MYSTERY in cfg.games else []) \
        + (["an opponent is a served adapter"] if any(o.startswith("llm:") for o in cfg.opponents) else []) \
        + (["league opponents are served adapters"] if cfg.league.pool else [])
    if cfg.policy_weights == "merged" and blockers:
        raise ValueError("policy_weights=merged is not possible here: " + "; ".join(blockers))
    return cfg.policy_weights == "merged" or (cfg.policy_weights == "auto" and not blockers and on_cpu)
