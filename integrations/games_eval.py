"""Held-out game evaluation as MARS reports it: each model plays games it was not trained on against a fixed
opponent (MCTS, CFR, random) or itself, and the normalized return is reported with the model moving first and
second separately (competitive games), or as a team (cooperative games, where the model fills every seat).

Normalized return of the model's seat: the rules engine's return mapped onto [0, 1] by the game's utility range
(a loss is 0, a win 1, a draw in between); a game ended by an illegal move counts 0 for the seat that made it and 1
for the other. Cooperative games: the team's score over the best possible score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratagem.agents import close_agents
from stratagem.games.core import Episode

GAME_SEATS = {"first": 0, "second": 1}


@dataclass
class GamesEvalConfig:
    models: list[str] = field(default_factory=lambda: ["base"], metadata={"help": "Served model / adapter names."})
    games: list[str] = field(default_factory=lambda: ["connect_four", "leduc_poker", "simple_hanabi"],
                             metadata={"help": "Games to play (held-out ones by default)."})
    opponent: str = field(default="auto", metadata={"help": "Opponent: 'auto' (mcts:N on perfect-information games, "
                          "cfr on poker), one agent spec for every game (mcts:N, cfr, random), 'self' (the model on "
                          "both seats), or GAME=SPEC pairs separated by commas. Cooperative games always pair the "
                          "model with itself."})
    mcts_simulations: int = field(default=25, metadata={"help": "Simulations of the 'auto' MCTS opponent."})
    episodes: int = field(default=10, metadata={"help": "Games per model, game and seat order."})
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "OpenAI-compatible endpoint."})
    out: str | None = field(default=None, metadata={"help": "Directory for the episodes (JSONL) and summary.json."})
    concurrency: int = field(default=8, metadata={"help": "Games in flight at once."})
    max_tokens: int | None = field(default=None, metadata={"help": "Longest reply of one move (None: the agent's)."})
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature (None: the agent's)."})
    seed: int = field(default=0, metadata={"help": "Seed of the first game; game i uses seed + i."})


def normalized_return(ep: Episode, seat: int, min_utility: float, max_utility: float, cooperative: bool) -> float:
    """The seat's result on [0, 1] (see the module docstring); exact for a hand-checkable episode."""
    raw = float(ep.metrics.get("raw_returns", [0.0] * len(ep.seats))[seat])
    if cooperative:
        return min(1.0, max(0.0, raw / max_utility)) if max_utility > 0 else 0.0
    if ep.end_reason == "illegal":
        return 1.0 if seat in ep.winners else 0.0
    span = max_utility - min_utility
    return (raw - min_utility) / span if span > 0 else 0.0


def summarize_seat(episodes: list[Episode], seat: int, lo: float, hi: float, cooperative: bool) -> dict[str, Any]:
    n = len(episodes)
    norm = [normalized_return(ep, seat, lo, hi, cooperative) for ep in episodes]
    return {"n": n, "normalized_return": sum(norm) / n if n else 0.0,
            "win_rate": sum(1 for ep in episodes if seat in ep.winners) / n if n else 0.0,
            "illegal_rate": sum(1 for ep in episodes if ep.end_reason == "illegal") / n if n else 0.0}


def opponent_for(config: GamesEvalConfig, game: str, perfect_information: bool) -> str:
    """The opponent spec of `game` under `config.opponent` (see GamesEvalConfig.opponent)."""
    spec = config.opponent.strip()
    if "=" in spec:
        pairs = {k.strip(): v for k, _, v in (p.partition("=") for p in spec.split(",") if p.strip())}
        if game not in pairs:
            raise ValueError(f"--opponent names no opponent for {game}: got {spec!r}, expected GAME=SPEC pairs")
        spec = pairs[game].strip()
    if spec == "auto":
        return f"mcts:{config.mcts_simulations}" if perfect_information else "cfr"
    if spec.startswith("mcts") and not perfect_information:
        raise ValueError(f"opponent {spec!r} cannot play {game}: MCTS needs perfect information (use cfr or auto)")
    return spec


def _agent(spec: str, config: GamesEvalConfig, game: str, seed: int) -> Any:
    from stratagem.agents import make_agent

    overrides = {k: v for k, v in (("max_tokens", config.max_tokens), ("temperature", config.temperature))
                 if v is not None}
    if spec.startswith("llm:"):
        return make_agent(spec, base_url=config.base_url, seed=seed, game=game, **overrides)
    return make_agent(spec, seed=seed, game=game)


@dataclass
class Matchup:
    """One (model, game, seat order) to play: the model's seat and both agent specs."""

    model: str
    game: str
    label: str  # first / second (competitive) or team (cooperative, the model on both seats)
    seat: int
    specs: list[str]
    utility: tuple[float, float]
    cooperative: bool


def plan(config: GamesEvalConfig) -> list[Matchup]:
    """Every matchup of the evaluation, checked before anything is played."""
    from stratagem.games.registry import make_game

    if config.episodes < 1:
        raise ValueError(f"GamesEvalConfig.episodes must be >= 1, got {config.episodes}")
    out = []
    for game in config.games:
        g = make_game(game)
        if g.info.num_players != 2:
            raise ValueError(f"{game}: held-out evaluation expects a two-player game")
        utility = (float(g.spiel.min_utility()), float(g.spiel.max_utility()))
        cooperative = g.info.cooperative
        opponent = "self" if cooperative else opponent_for(config, game, g.info.perfect_information)
        for model in config.models:
            me = f"llm:{model}"
            if opponent == "self":
                out.append(Matchup(model, game, "team", 0, [me, me], utility, cooperative))
            else:
                out += [Matchup(model, game, "first", 0, [me, opponent], utility, cooperative),
                        Matchup(model, game, "second", 1, [opponent, me], utility, cooperative)]
    return out


async def run_games_eval(config: GamesEvalConfig, on_episode: Any = None) -> dict[str, Any]:
    """Play every matchup of `plan(config)` and summarize; episodes are appended to `config.out` as they end."""
    from stratagem.training.rollout import collect_episodes

    result: dict[str, Any] = {"opponent": config.opponent, "episodes": config.episodes,
                              "models": {m: {} for m in config.models}}
    for mu in plan(config):
        agents = [_agent(s, config, mu.game, config.seed + i) for i, s in enumerate(mu.specs)]
        try:
            eps = await collect_episodes(mu.game, agents, config.episodes, config.concurrency, seed=config.seed,
                                         on_episode=_sink(config.out, mu.model, mu.game, mu.label, on_episode))
        finally:
            await close_agents(agents)
        summary = summarize_seat(eps, mu.seat, *mu.utility, mu.cooperative)
        result["models"][mu.model].setdefault(mu.game, {})[mu.label] = {**summary, "opponent": mu.specs[1 - mu.seat]}
    if config.out:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "summary.json").write_text(json.dumps(result, indent=2))
    return result


def _sink(out: str | None, model: str, game: str, label: str, on_episode: Any) -> Any:
    if out is None:
        return on_episode
    path = Path(out) / model.replace("/", "_") / f"{game}-{label}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(ep: Episode) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(ep.to_json() + "\n")
        if on_episode:
            on_episode(ep)
    return write


def results_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"held-out games ({result['episodes']} games per seat order)")
    for col in ("model", "game", "seat", "opponent", "normalized return", "win rate", "illegal"):
        t.add_column(col)
    for model, games in result["models"].items():
        for game, seats in games.items():
            for label, s in seats.items():
                t.add_row(model, game, label, s["opponent"], f"{s['normalized_return']:.3f}", f"{s['win_rate']:.2f}",
                          f"{s['illegal_rate']:.2f}")
    return t
