"""League play: the learner meets its own past adapters (and bots) instead of its current self.

At iteration k the learner is policy iter-(k-1); the pool is the newest `pool` policies before it (base, iter-1, ...,
iter-(k-2)), already saved and served. Each game's opponents are drawn once per seat from the game's seed, so a
retried or resumed iteration plays the same opponents, and they are recorded in the episode (each seat's `agent`,
and the learner's seat in `metrics["policy_seat"]`). Only the learner's seat trains. Draw of one opponent:

    with probability self_play:      the current policy itself (a frozen copy of this iteration's sampler)
    else with probability latest_prob: uniformly one of the newest `latest` policies of the pool
    else:                             uniformly one of the older ones or of `bots`
    (an empty group gives its draw to the other; an empty pool, at k = 1 without bots, gives the current policy)

`rating_table` rates every policy of a finished run against the bots, exactly, on the poker games: each pair's exact
expected return (both seat orders), as a score in [0, 1] over the game's return range, and an Elo fit of those scores
(Bradley-Terry, 400 points per factor 10 of the odds) anchored at the first bot, which is 0.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stratagem.integrations.exact_eval import (
    BOT_POLICIES,
    EXACT_GAMES,
    ExactEvalConfig,
    PolicyTable,
    expected_returns,
    run_exact_eval,
)
from stratagem.integrations.games_eval import run_protocol


@dataclass
class LeagueConfig:
    pool: int = field(default=0, metadata={"help": "League play: how many past policies (the newest before the "
                      "current one: base, iter-1, ...) the learner's opponents are drawn from, each game, per seat; "
                      "only the learner's seat trains. 0: off (self-play, or loop.opponents).", "min": 0})
    latest: int = field(default=1, metadata={"help": "The newest `latest` policies of the pool, drawn with "
                        "probability latest_prob; the older ones (and the bots) share the rest.", "min": 1})
    latest_prob: float = field(default=0.5, metadata={"help": "Probability that an opponent is one of the newest "
                               "`latest` policies of the pool (when there are older ones or bots).", "min": 0.0,
                               "max": 1.0})
    self_play: float = field(default=0.0, metadata={"help": "Probability that an opponent is the current policy "
                             "itself (sampled as the learner is, but not trained).", "min": 0.0, "max": 1.0})
    bots: list[str] = field(default_factory=list, metadata={"help": "Bot agent specs that join the older group of "
                            "the pool (e.g. random, mcts:50, cfr)."})


def pool(cfg: LeagueConfig, k: int) -> list[str]:
    """The served names of the past policies at iteration k (learner iter-(k-1)), oldest first."""
    names = ["base" if j == 0 else f"iter-{j}" for j in range(k - 1)]
    return names[-cfg.pool:] if cfg.pool else []


def draw_opponents(cfg: LeagueConfig, k: int, seed: int, seats: int, current: str) -> list[str]:
    """Agent specs of the `seats` opponents of the game seeded `seed` at iteration k (see the module's docstring):
    past policies as `llm:NAME`, bots as given, the current policy as `llm:current`."""
    rng = random.Random(f"league:{seed}")  # the game's seed fixes its opponents: retries and resumes agree
    past = [f"llm:{n}" for n in pool(cfg, k)]
    recent, older = past[-cfg.latest:], past[:-cfg.latest] + list(cfg.bots)
    out = []
    for _ in range(seats):
        if rng.random() < cfg.self_play or not (recent or older):
            out.append(f"llm:{current}")
        elif recent and (not older or rng.random() < cfg.latest_prob):
            out.append(rng.choice(recent))
        else:
            out.append(rng.choice(older))
    return out


def policies_in_play(cfg: LeagueConfig, k: int) -> list[int]:
    """The iterations whose adapters iteration k's opponents may use (base, iteration 0, needs none)."""
    return [int(n.removeprefix("iter-")) for n in pool(cfg, k) if n != "base"]


# ---- rating ---------------------------------------------------------------------------------------------------

def exact_win(game: str, a: PolicyTable, b: PolicyTable) -> float:
    """Exact win probability of `a` against `b` over both seat orders: P(a's return > 0) + P(tie) / 2, with chance
    and both policies weighted exactly (expected_returns of the outcome indicators)."""
    win = [expected_returns(game, [a, b], utility=_outcome)[0], expected_returns(game, [b, a], utility=_outcome)[1]]
    return sum(win) / 2


def _outcome(returns: list[float]) -> list[float]:
    return [1.0 if r > 0 else 0.5 if r == 0 else 0.0 for r in returns]


def elo(scores: dict[tuple[str, str], float], anchor: str, iterations: int = 200) -> dict[str, float]:
    """Elo ratings from pairwise scores s(a, b) in [0, 1] (s(b, a) = 1 - s(a, b) is implied): the Bradley-Terry fit
    P(a beats b) = 1 / (1 + 10 ** ((R_b - R_a) / 400)) maximising the likelihood of the scores as fractional wins
    (Newton's method; a ridge of 1e-9 on the log-odds keeps a player who wins every game finite), `anchor` at 0.

    Hand check: s(A, B) = 0.75 gives R_A - R_B = 400 log10(3) = 190.85; s(A, B) = s(B, C) = 0.75 and s(A, C) = 0.9
    are exactly Bradley-Terry with odds 3, 3 and 9, so R = 381.70, 190.85, 0 with C the anchor."""
    import numpy as np

    names = sorted({n for pair in scores for n in pair})
    if anchor not in names:
        raise ValueError(f"elo: the anchor {anchor!r} played no game")
    idx = {n: i for i, n in enumerate(names)}
    x = np.zeros(len(names))  # ratings in natural log-odds units: R = x * 400 / ln 10
    free = [i for i in range(len(names)) if i != idx[anchor]]
    for _ in range(iterations):
        grad, hess = -1e-9 * x, -1e-9 * np.eye(len(names))
        for (a, b), s in scores.items():
            i, j = idx[a], idx[b]
            p = 1 / (1 + math.exp(x[j] - x[i]))
            g, h = s - p, p * (1 - p)
            grad[i] += g
            grad[j] -= g
            hess[i, i] -= h
            hess[j, j] -= h
            hess[i, j] += h
            hess[j, i] += h
        step = np.linalg.solve(hess[np.ix_(free, free)], grad[free])
        x[free] -= step
        if np.abs(step).max() < 1e-12:
            break
    r = x * 400 / math.log(10)
    return {n: float(r[idx[n]]) for n in names}


def rating_table(game: str, tables: dict[str, PolicyTable], anchor: str) -> dict[str, Any]:
    """Every pair's exact expected return (the row policy's, both seat orders averaged), its score (that return
    mapped linearly from the game's return range to [0, 1]: an even game is 0.5) and exact win probability, and the
    Elo fit of the scores with `anchor` at 0: {"elo": {name: rating}, "return", "score", "win": {a: {b: x}}}.
    Elo rates chips, not wins: in poker a policy can win fewer hands and more chips (the CFR policy against the
    uniform random one in Kuhn poker)."""
    import pyspiel

    spiel = pyspiel.load_game(game)
    lo, hi = spiel.min_utility(), spiel.max_utility()
    names = list(tables)
    scores: dict[tuple[str, str], float] = {}
    out: dict[str, Any] = {key: {n: {} for n in names} for key in ("return", "score", "win")}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            first = expected_returns(game, [tables[a], tables[b]])[0]
            second = expected_returns(game, [tables[b], tables[a]])[1]
            r = (first + second) / 2
            w = exact_win(game, tables[a], tables[b])
            scores[(a, b)] = (r - lo) / (hi - lo)
            for key, ab, ba in (("return", r, -r), ("score", scores[(a, b)], 1 - scores[(a, b)]),
                                ("win", w, 1 - w)):  # zero-sum: b's is the mirror of a's
                out[key][a][b], out[key][b][a] = ab, ba
    out["elo"] = elo(scores, anchor)
    return out


def rate_run(run: str | Path, games: list[str], bots: list[str], *, every: int = 1, model_path: str | None = None,
             progress: Callable[[str, int], Callable[[], Any]] | None = None) -> dict[str, Any]:
    """The rating table of a run's policies (base, then every `every`-th adapter iter-K and the last) among `bots`
    (random, cfr, nash), exactly, per poker game: each policy's table scored by the run's base model (or
    `model_path`) with its
    adapter loaded here (tables cached in RUN/eval/exact, keyed by the adapter's weights), then `rating_table`
    with the first bot at Elo 0, and each policy's exploitability. Returns {"policies": [...], "anchor": bot,
    "games": {game: {"elo", "score", "return", "exploitability"}}}."""
    run = Path(run)
    bad = [g for g in games if g not in EXACT_GAMES] + [b for b in bots if b not in BOT_POLICIES]
    if bad or not bots:
        raise ValueError(f"rating: games among {', '.join(EXACT_GAMES)} and at least one bot among "
                         f"{', '.join(BOT_POLICIES)} (the anchor); got {', '.join(bad) or 'no bot'}")
    saved = yaml.safe_load((run / "config.yaml").read_text()) or {} if (run / "config.yaml").is_file() else {}
    per_role = (saved.get("trainer") or {}).get("adapters") == "per_role"  # a policy is its roles' adapters

    def trained(d: Path) -> bool:
        return (d / "adapter_config.json").is_file() or (per_role and any(d.glob("*/adapter_config.json")))
    done = sorted(int(d.name.removeprefix("iter-")) for d in (run / "adapters").glob("iter-*")
                  if d.name.removeprefix("iter-").isdigit() and trained(d))
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if not done:
        raise ValueError(f"{run}: no trained adapter in {run / 'adapters'} to rate")
    chosen = [k for k in done if k % every == 0 or k == done[-1]]
    policies = ["base"] + [f"iter-{k}" for k in chosen]
    sampling, reply = run_protocol(run)
    if model_path is None:
        model_path = str((saved.get("loop") or {}).get("model", "default"))
    if reply.think:
        raise ValueError("the run's protocol thinks before it answers (reply.think): no table to rate")
    cfg = ExactEvalConfig(models=list(bots) + policies, games=games, out=str(run / "eval" / "exact"),
                          sampling=sampling, reply=reply, source="trainer", model_path=model_path, run=str(run),
                          per_role=per_role)
    tables: dict[str, dict[str, PolicyTable]] = {}
    result = asyncio.run(run_exact_eval(cfg, progress, tables=tables))
    out: dict[str, Any] = {"policies": policies, "bots": list(bots), "anchor": bots[0], "games": {}}
    for game in games:
        rated = rating_table(game, {m: tables[m][game] for m in cfg.models}, bots[0])
        rated["exploitability"] = {m: result["models"][m][game]["exploitability"] for m in cfg.models}
        out["games"][game] = rated
    return out


def rating_rich_table(result: dict[str, Any], game: str) -> Any:
    """One game of `rate_run`'s result as a table, best Elo first."""
    from rich.table import Table  # deferred: rich is the console's, not the league's

    g = result["games"][game]
    t = Table(title=f"{game}: exact ratings of the run's policies among {', '.join(result['bots'])} "
                    f"(Elo, {result['anchor']} = 0; no sampling)")
    for col in ("policy", "Elo", "exploitability", *(f"score vs {b}" for b in result["bots"]),
                *(f"return vs {b}" for b in result["bots"])):
        t.add_column(col)
    for name in sorted(g["elo"], key=lambda n: -g["elo"][n]):
        t.add_row(name, f"{g['elo'][name]:+.0f}", f"{g['exploitability'][name]:.4f}",
                  *(f"{g['score'][name][b]:.3f}" if b != name else "-" for b in result["bots"]),
                  *(f"{g['return'][name][b]:+.4f}" if b != name else "-" for b in result["bots"]))
    return t


def league_metrics(episodes: list[Any]) -> dict[str, float]:
    """Per opponent (the agent specs of the other seats, joined by '+'): the games the learner played against it and
    its mean raw return there: league/games_vs/OPPONENT and league/return_vs/OPPONENT. Games without a recorded
    learner seat (self-play) count nothing."""
    by: dict[str, list[float]] = {}
    for ep in episodes:
        if "policy_seat" not in ep.metrics:
            continue
        seat = int(ep.metrics["policy_seat"])
        opponent = "+".join(s.agent for s in ep.seats if s.index != seat)
        raw = ep.metrics.get("raw_returns") or ep.returns
        by.setdefault(opponent, []).append(float(raw[seat]))
    out: dict[str, float] = {}
    for opponent, rs in sorted(by.items()):
        out[f"league/games_vs/{opponent}"] = float(len(rs))
        out[f"league/return_vs/{opponent}"] = sum(rs) / len(rs)
    return out
