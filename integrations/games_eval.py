"""Game evaluation as MARS reports it: each model plays every strategic game against the paper's opponent and the
normalized return of its seat is reported with the model moving first and second separately (competitive games),
or as a team with itself (cooperative games), each with a 95% interval.

The model replies in the training protocol: the forced reply prefix, stop strings, open answers, reply length and
sampling of `agents.sampling.SamplingConfig` and `games.base.ReplyFormat` (their defaults are what `stratagem train`
uses; `--run RUN_DIR` takes them from a run's config.yaml). Win, draw, illegal act and normalized return are those
of `stratagem.games.metrics`.

Default opponents (`opponent: auto`), as in MARS's released evaluation (MARSHAL):
- tic-tac-toe and Connect Four: OpenSpiel's MCTS with 100 simulations and 10 random rollouts per leaf (the paper
  also reports tic-tac-toe against 1000 simulations and Connect Four against 10: `--mcts-simulations N` or
  `--opponent tictactoe=mcts:1000,...`);
- Kuhn poker: the CFR average policy; Leduc hold'em: an exact Nash equilibrium (OpenSpiel's sequence-form LP,
  exploitability 1e-10; solved once and cached; agents/equilibrium.py);
- Hanabi (cooperative): the model with itself.

`opponent: marshal` is MARSHAL's stand-alone evaluation (examples/model_game_eval/agentic_rollout_eval.yaml): two
opponents where the paper has two (tic-tac-toe against MCTS 100 and 1000, Connect Four against MCTS 10 and 100),
CFR on Kuhn, the Nash table on Leduc, Hanabi with itself. A game with several opponents reports the first under the
game's name and each further one as `GAME@SPEC`; the summary names every bot's own exploitability where it has one
(CFR, Nash), so a reader sees how close to an equilibrium the poker opponents are.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stratagem.agents import close_agents
from stratagem.agents.bots import CFR_GAMES, cfr_policy, policy_exploitability
from stratagem.agents.equilibrium import nash_exploitability
from stratagem.agents.sampling import SamplingConfig
from stratagem.config import ConfigError, from_dict
from stratagem.files import Journal, atomic_write
from stratagem.games.base import GameConfig, ReplyFormat
from stratagem.games.core import Episode
from stratagem.games.metrics import seat_summary
from stratagem.games.registry import game_names, get_game_spec, make_game, role_model

PAPER_OPPONENTS: dict[str, str] = {"tictactoe": "mcts:100", "connect_four": "mcts:100", "kuhn_poker": "cfr",
                                   "leduc_poker": "nash", "mini_hanabi": "self", "simple_hanabi": "self"}
# MARSHAL's evaluation tags: TicTacToe-{first,second}-{100,1000}, Connect4-{first,second}-{10,100}, KuhnPoker (cfr),
# LeducPoker (ne), MiniHanabi, SimpleHanabi
OPPONENT_SETS: dict[str, str] = {
    "marshal": "tictactoe=mcts:100|mcts:1000,connect_four=mcts:10|mcts:100,kuhn_poker=cfr,leduc_poker=nash"}
BOT_KINDS = ("random", "mcts", "cfr", "nash")


def _all_games() -> list[str]:
    return list(game_names("strategic"))


@dataclass
class GamesEvalConfig:
    models: list[str] = field(default_factory=lambda: ["base"], metadata={"help": "Served model / adapter names."})
    games: list[str] = field(default_factory=_all_games, metadata={"help": "Games to play (default: all six "
                             "strategic games)."})
    opponent: str = field(default="auto", metadata={"help": "Opponent: 'auto' (MARS's: mcts:100 on tic-tac-toe and "
                          "Connect Four, cfr on Kuhn, nash on Leduc, the model itself on Hanabi), 'marshal' "
                          "(MARSHAL's evaluation: also mcts:1000 on tic-tac-toe and mcts:10 on Connect Four), one "
                          "agent spec for every competitive game (mcts:N, cfr, nash, random), 'self' (the model on "
                          "both seats), or GAME=SPEC pairs separated by commas, SPEC|SPEC for several opponents of "
                          "one game (games left out get 'auto'). Cooperative games always pair the model with "
                          "itself."})
    mcts_simulations: int | None = field(default=None, metadata={"help": "Simulations of the 'auto' MCTS opponent "
                                         "(None: 100, as MARS; the paper also uses 1000 on tic-tac-toe and 10 on "
                                         "Connect Four).", "min": 1})
    episodes: int = field(default=10, metadata={"help": "Games per model, game and seat order.", "min": 1})
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "OpenAI-compatible endpoint."})
    api_key: str | None = field(default=None, metadata={"help": "Bearer token for the endpoint (a server started "
                                "with --api-key)."})
    out: str | None = field(default=None, metadata={"help": "Directory for the episodes (JSONL) and summary.json."})
    concurrency: int = field(default=8, metadata={"help": "Games in flight at once.", "min": 1})
    seed: int = field(default=0, metadata={"help": "Seed of the first game; game i uses seed + i (bots are seeded "
                      "from it; model sampling is not, as in training)."})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "Sampling of the model's "
                                     "replies (the training protocol's by default)."})
    reply: ReplyFormat = field(default_factory=ReplyFormat, metadata={"help": "Reply format (the training "
                               "protocol's by default)."})
    per_role: bool = field(default=False, metadata={"help": "The models are per-role policies (a run trained with "
                           "trainer.adapters per_role): model M plays each seat with its role's adapter, served as "
                           "M-ROLE (iter-3-X, iter-3-O); base stays base."})


# ---- the reply protocol of a run ----------------------------------------------------------------------------

# fields an older run config kept in its `loop` section
_LEGACY_LOOP = {"sampling": ("max_tokens", "temperature", "top_p", "top_k", "stop"),
                "reply": ("response_prefix", "open_answer", "think")}


def run_protocol(run_dir: str | Path) -> tuple[SamplingConfig, ReplyFormat]:
    """The sampling and reply format a training run used, from RUN_DIR/config.yaml: its `sampling` and `reply`
    sections (fields of SamplingConfig / ReplyFormat), or the same fields in an older run's `loop` section; what the
    file does not say keeps the default. A field of the wrong type or out of range is an error naming it."""

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"--run {run_dir}: no config.yaml there (expected a run directory of `stratagem train`)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(raw).__name__}")
    out = []
    for name, cls in (("sampling", SamplingConfig), ("reply", ReplyFormat)):
        values: dict[str, Any] = {}
        loop = raw.get("loop") or {}
        values.update({k: loop[k] for k in _LEGACY_LOOP[name] if k in loop})
        values.update(raw.get(name) or {})
        try:
            out.append(from_dict(cls, values, path=name))
        except ConfigError as e:
            raise ValueError(f"{path}: {e}") from None
    return out[0], out[1]


def parse_stop(values: list[str]) -> list[str]:
    """Stop strings from the command line: backslash escapes decoded (so '\\n' is a newline); 'none' clears."""
    if [v.strip().lower() for v in values] == ["none"]:
        return []
    return [codecs.decode(v, "unicode_escape") for v in values]


# ---- opponents ----------------------------------------------------------------------------------------------

def opponents_for(config: GamesEvalConfig, game: str, perfect_information: bool,
                  cooperative: bool = False) -> list[str]:
    """The opponent specs of `game` under `config.opponent` (see GamesEvalConfig.opponent), each checked: agent
    specs, or ['self']."""
    if cooperative:
        return ["self"]
    spec = OPPONENT_SETS.get(config.opponent.strip(), config.opponent.strip())
    if "=" in spec:
        pairs = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in spec.split(",") if p.strip())}
        spec = pairs.get(game, "auto")
    specs = [s.strip() for s in spec.split("|") if s.strip()]
    if not specs:
        raise ValueError(f"--opponent {config.opponent!r}: no opponent for {game}")
    if len(set(specs)) != len(specs):
        raise ValueError(f"--opponent {config.opponent!r}: {game} names an opponent twice ({spec})")
    return [_check_opponent(config, game, s, perfect_information) for s in specs]


def opponent_for(config: GamesEvalConfig, game: str, perfect_information: bool, cooperative: bool = False) -> str:
    """The first (main) opponent spec of `game`: the one reported under the game's own name."""
    return opponents_for(config, game, perfect_information, cooperative)[0]


def _check_opponent(config: GamesEvalConfig, game: str, spec: str, perfect_information: bool) -> str:
    if spec == "auto":
        spec = PAPER_OPPONENTS.get(game) or ("mcts:100" if perfect_information else "")
        if not spec:
            raise ValueError(f"--opponent auto has no default opponent for {game}; name one (GAME=SPEC)")
        if spec.startswith("mcts:") and config.mcts_simulations is not None:
            spec = f"mcts:{config.mcts_simulations}"
    kind, _, arg = spec.partition(":")
    if spec != "self" and kind not in BOT_KINDS and kind != "llm":
        raise ValueError(f"--opponent {spec!r} for {game}: expected auto, self, llm:MODEL or one of "
                         f"{', '.join(BOT_KINDS)} (mcts:N)")
    if kind == "mcts" and not perfect_information:
        raise ValueError(f"opponent {spec!r} cannot play {game}: MCTS needs perfect information (use cfr or auto)")
    if kind in ("cfr", "nash"):
        if game not in CFR_GAMES:
            raise ValueError(f"opponent {kind!r} cannot play {game}: {kind} policies exist for "
                             f"{', '.join(CFR_GAMES)}")
    return spec


def opponent_exploitability(game: str, spec: str) -> float | None:
    """OpenSpiel's exploitability of a tabular poker bot (cfr, nash; cached tables), None for any other."""
    kind = spec.partition(":")[0]
    if kind == "nash":
        return nash_exploitability(game)
    if kind == "cfr":
        return policy_exploitability(game, cfr_policy(game))
    return None


def model_agent(model: str, config: GamesEvalConfig) -> Any:
    """The evaluated model's agent: unseeded sampling in the training protocol."""
    from stratagem.agents import make_agent

    return make_agent(f"llm:{model}", base_url=config.base_url, **config.sampling.agent_kwargs(config.api_key))


def _agent(spec: str, config: GamesEvalConfig, game: str, seed: int) -> Any:
    from stratagem.agents import make_agent

    if spec.startswith("llm:"):
        return make_agent(spec, base_url=config.base_url, **config.sampling.agent_kwargs(config.api_key))
    return make_agent(spec, seed=seed, game=game)


# ---- the plan -----------------------------------------------------------------------------------------------

@dataclass
class Matchup:
    """One set of games to play: the agent specs by seat, and which seat is reported under which label (first /
    second for a competitive game, team for a cooperative one)."""

    model: str
    game: str
    specs: list[str]
    seats: dict[str, int]
    opponent: str
    utility: tuple[float, float]
    cooperative: bool
    key: str = ""  # reported under: the game for its first opponent, GAME@SPEC for each further one

    def __post_init__(self) -> None:
        self.key = self.key or self.game


def plan(config: GamesEvalConfig) -> list[Matchup]:
    """Every matchup of the evaluation, checked before anything is played."""

    if config.episodes < 1:
        raise ValueError(f"GamesEvalConfig.episodes must be >= 1, got {config.episodes}")
    if config.mcts_simulations is not None and config.mcts_simulations < 1:
        raise ValueError(f"GamesEvalConfig.mcts_simulations must be >= 1, got {config.mcts_simulations}")
    out = []
    for game in config.games:
        if get_game_spec(game).kind != "strategic":
            raise ValueError(f"{game}: `eval games` plays the strategic games; the murder mystery has its own "
                             "evaluation (`stratagem eval mystery`)")
        g = make_game(game)
        if g.info.num_players != 2:
            raise ValueError(f"{game}: game evaluation expects a two-player game")
        utility = (float(g.spiel.min_utility()), float(g.spiel.max_utility()))
        cooperative = g.info.cooperative
        opponents = opponents_for(config, game, g.info.perfect_information, cooperative)
        for model in config.models:
            me = f"llm:{model}"
            for k, opponent in enumerate(opponents):
                key = game if k == 0 else f"{game}@{opponent}"
                if cooperative:
                    out.append(Matchup(model, game, [me, me], {"team": 0}, me, utility, True, key))
                elif opponent == "self":
                    out.append(Matchup(model, game, [me, me], {"first": 0, "second": 1}, me, utility, False, key))
                else:
                    out += [Matchup(model, game, [me, opponent], {"first": 0}, opponent, utility, False, key),
                            Matchup(model, game, [opponent, me], {"second": 1}, opponent, utility, False, key)]
    return out


async def run_games_eval(config: GamesEvalConfig, on_episode: Any = None,
                         before_model: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Play every matchup of `plan(config)` and summarize; episodes are committed to `config.out` as they end, and
    a rerun with the same `out` plays only the games not there yet (`resumed` counts the others). With
    `before_model`, the models are played one after the other and it is called before each one's first game (a
    server serving one policy at a time puts that model's weights in place)."""
    from stratagem.games.rollout import collect_episodes

    matchups = plan(config)
    if before_model is not None:
        matchups.sort(key=lambda mu: config.models.index(mu.model))
    current = None
    result: dict[str, Any] = {"opponent": config.opponent, "episodes": config.episodes,
                              "sampling": dataclasses.asdict(config.sampling),
                              "reply": dataclasses.asdict(config.reply), "models": {m: {} for m in config.models}}
    bots = {f"{mu.game}:{mu.opponent}": opponent_exploitability(mu.game, mu.opponent) for mu in matchups}
    result["opponent_exploitability"] = {k: v for k, v in bots.items() if v is not None}
    game_cfg = GameConfig(reply=config.reply)
    for mu in matchups:
        roles, served = make_game(mu.game).info.roles, {}  # one client per served name (self-play shares one)
        agents = []
        for i, s in enumerate(mu.specs):
            if s != f"llm:{mu.model}":
                agents.append(_agent(s, config, mu.game, config.seed + i))
                continue
            name = role_model(mu.model, roles[i]) if config.per_role else mu.model
            if name not in served:
                served[name] = model_agent(name, config)
            agents.append(served[name])
        label = "-".join(mu.seats)
        journal = Journal(results_path(config.out, mu.model, mu.key, label)) if config.out else None
        done = _played(journal, config.seed, config.episodes)
        todo = [i for i in range(config.episodes) if i not in done]
        try:
            if before_model is not None and todo and mu.model != current:
                before_model(mu.model)
                current = mu.model
            eps = await collect_episodes(mu.game, agents, config.episodes, config.concurrency, seed=config.seed,
                                         config=game_cfg, only=todo, on_episode=_sink(journal, on_episode))
        finally:
            await close_agents(agents)
        eps = sorted([*done.values(), *eps], key=lambda e: e.seed)
        result["resumed"] = result.get("resumed", 0) + len(done)
        for name, seat in mu.seats.items():
            summary = seat_summary(eps, seat, *mu.utility, mu.cooperative)
            result["models"][mu.model].setdefault(mu.key, {})[name] = {**summary, "opponent": mu.opponent}
    if config.out:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(config.out) / "summary.json", json.dumps(result, indent=2))
    return result


def results_path(out: str | Path, model: str, game: str, label: str) -> Path:
    """Episodes of one matchup (model, game or GAME@SPEC, seat order): a Journal, so a rerun with the same `out`
    resumes."""
    return Path(out) / model.replace("/", "_") / f"{game.replace(':', '-')}-{label}.jsonl"


def _played(journal: Journal | None, seed: int, n: int) -> dict[int, Episode]:
    """Games of this evaluation already in the journal, by index (game i has seed `seed + i`)."""
    if journal is None or not journal.path.exists():
        return {}
    eps = (Episode.from_dict(rec) for rec in journal.records())
    return {ep.seed - seed: ep for ep in eps if seed <= ep.seed < seed + n}


def _sink(journal: Journal | None, on_episode: Any) -> Any:
    if journal is None:
        return on_episode
    journal.path.parent.mkdir(parents=True, exist_ok=True)

    def write(ep: Episode) -> None:
        journal.append(ep.to_json())
        if on_episode:
            on_episode(ep)
    return write


def _ci(lo_hi: list[float] | None) -> str:
    return f"[{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]" if lo_hi else "[-]"


def results_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"strategic games ({result['episodes']} games per seat order; 95% intervals)")
    for col in ("model", "game", "seat", "opponent", "normalized return", "win rate", "illegal acts"):
        t.add_column(col)
    for model, games in result["models"].items():
        for game, seats in games.items():
            for label, s in seats.items():
                t.add_row(model, game, label, s["opponent"],
                          f"{s['normalized_return']:.3f} {_ci(s['normalized_return_ci95'])}",
                          f"{s['win_rate']:.2f} {_ci(s['win_rate_ci95'])}",
                          f"{s['illegal_rate']:.2f} {_ci(s['illegal_rate_ci95'])} of {s['model_turns']}")
    return t
