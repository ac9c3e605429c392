"""Episode metrics: the one definition of a win, a draw, an illegal act and the normalized return, per-(game, role)
summaries, and the 95% intervals reported with them. Training, `stratagem play`, `stratagem eval games` and the
benchmarks all count with these functions.

Definitions (seat `s` of episode `ep`):

- **win**: in a game with factions (the mystery) the seat's faction is `ep.winning_faction`; otherwise `s` is in
  `ep.winners` (the rules engine's winners; a cooperative team wins with a perfect score).
- **draw**: a competitive game that ended by its rules (`end_reason == "terminal"`) with no winner. A cooperative
  game has no draws, and a game ended by an illegal act is never a draw.
- **loss**: neither a win nor a draw.
- **model turn**: a turn sampled by a language model: its `completion_token_ids` is set (the endpoint returned the
  sampled tokens), or its seat's agent is a model (`Seat.agent` starts with ``llm:``; endpoints that return no
  token ids). Bot and human turns are not model turns.
- **illegal act**: a model turn whose `illegal_reason` is set (malformed, over-long, or naming no legal action).
  The **illegal rate** is illegal acts over model turns (a per-turn rate, not a per-episode one): a game ended by
  the model's third reply, illegal, counts 1 of 3.
- **normalized return** of a seat, on [0, 1]: competitive games map the rules engine's raw return linearly from the
  game's utility range (`min_utility` -> 0, `max_utility` -> 1: a tic-tac-toe loss 0, draw 0.5, win 1; Leduc
  winning 3 chips of [-13, 13] is 16/26); a game ended by an illegal act gives 0 to the seat that made it and 1 to
  the other seats. Cooperative games: the team's score over the best possible score (Hanabi: cards played over
  colors x ranks), and 0 when an illegal act ended the game (the score is forfeited, as when the team loses all
  its lives).

Intervals: `wilson_interval` for a rate k/n, `mean_interval` (Student's t) for a mean of per-episode values.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from stratagem.games.core import Episode, Turn
from stratagem.games.registry import get_game_spec, make_game

Z95 = 1.959964  # the standard normal's 97.5% quantile


# ---- one episode ------------------------------------------------------------------------------------------------

def seat_won(ep: Episode, seat: int) -> bool:
    """Whether `seat` won `ep` (its faction won, in games with factions)."""
    if ep.winning_faction is not None:
        return ep.seats[seat].faction == ep.winning_faction if seat < len(ep.seats) else False
    return seat in ep.winners


def is_draw(ep: Episode, cooperative: bool = False) -> bool:
    """Whether `ep` is a draw: a competitive game ended by its rules with no winner."""
    return not cooperative and ep.end_reason == "terminal" and not ep.winners and ep.winning_faction is None


def is_model_turn(ep: Episode, turn: Turn) -> bool:
    """Whether `turn` was sampled by a language model (see the module docstring)."""
    if turn.completion_token_ids is not None:
        return True
    seat = next((s for s in ep.seats if s.index == turn.seat), None)
    return seat is not None and seat.agent.startswith("llm:")


def is_illegal_act(ep: Episode, turn: Turn) -> bool:
    """A model turn whose reply was not a legal, well-formed action."""
    return turn.illegal_reason is not None and is_model_turn(ep, turn)


def illegal_counts(episodes: Iterable[Episode], seat: int | None = None, role: str | None = None) -> tuple[int, int]:
    """(illegal acts, model turns) over `episodes`: of every seat, or of one seat index and/or one role."""
    k = n = 0
    for ep in episodes:
        for t in ep.turns:
            if (seat is None or t.seat == seat) and (role is None or t.role == role) and is_model_turn(ep, t):
                n += 1
                k += t.illegal_reason is not None
    return k, n


def offender(ep: Episode) -> int | None:
    """The seat whose illegal act ended `ep` (None when it ended by its rules)."""
    if ep.end_reason != "illegal":
        return None
    bad = [t.seat for t in ep.turns if t.illegal_reason is not None]
    if bad:
        return bad[-1]
    others = [s.index for s in ep.seats if s.index not in ep.winners]  # recorded without turns: the non-winner
    return others[0] if len(others) == 1 else None


def normalized_return(ep: Episode, seat: int, min_utility: float, max_utility: float, cooperative: bool) -> float:
    """The seat's result on [0, 1] (see the module docstring)."""
    raw = float(ep.metrics.get("raw_returns", [0.0] * len(ep.seats))[seat])
    if ep.end_reason == "illegal":
        if cooperative:
            return 0.0
        return 0.0 if offender(ep) == seat else 1.0
    if cooperative:
        return min(1.0, max(0.0, raw / max_utility)) if max_utility > 0 else 0.0
    span = max_utility - min_utility
    if span <= 0:
        raise ValueError(f"normalized_return: utility range [{min_utility}, {max_utility}] is empty")
    return min(1.0, max(0.0, (raw - min_utility) / span))


@functools.cache
def is_cooperative(game: str) -> bool:
    """Whether the registered strategic game `game` is cooperative (False for the mystery, whose factions compete,
    and for a name the registry does not know)."""

    try:
        if get_game_spec(game).kind != "strategic":
            return False
    except ValueError:
        return False
    return bool(make_game(game).info.cooperative)


def utility_range(game: str) -> tuple[float, float, bool]:
    """(min utility, max utility, cooperative) of a registered strategic game, from its rules engine."""

    g = make_game(game)
    return float(g.spiel.min_utility()), float(g.spiel.max_utility()), bool(g.info.cooperative)


# ---- intervals --------------------------------------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (n = 0 gives (0, 1))."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_sd(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1 in the denominator); None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    return math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of `values` (sample standard deviation, n - 1 degrees of freedom); fewer than
    two values give (nan, nan): there is no spread to estimate."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    from scipy.stats import t as student_t

    m = sum(values) / n
    sd = sample_sd(values)
    assert sd is not None  # n >= 2
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return m - half, m + half


def rate(k: int, n: int) -> dict[str, Any]:
    """A rate with its counts and Wilson 95% interval (rate 0 when n = 0)."""
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else 0.0, "k": k, "n": n, "ci95": [lo, hi]}


def mean(values: Sequence[float]) -> dict[str, Any]:
    """A mean with its count, sample standard deviation and t 95% interval (mean 0 and no interval when empty; no
    sd or interval for fewer than two values)."""
    lo, hi = mean_interval(values)
    return {"mean": sum(values) / len(values) if values else 0.0, "n": len(values), "sd": sample_sd(values),
            "ci95": [lo, hi] if not math.isnan(lo) else None}


# ---- summaries --------------------------------------------------------------------------------------------------

@dataclass
class SeatResult:
    """One seat of one episode, as the summaries count it."""

    game: str
    role: str
    ret: float
    win: bool
    draw: bool


def seat_results(episodes: Iterable[Episode], cooperative: dict[str, bool] | None = None) -> list[SeatResult]:
    """Every (episode, seat) with its return, win and draw (`cooperative`: game -> bool; a game left out is looked
    up in the game registry, and counts as competitive when it is not registered there)."""
    out = []
    for ep in episodes:
        coop = (cooperative or {}).get(ep.game)
        coop = is_cooperative(ep.game) if coop is None else coop
        draw = is_draw(ep, coop)
        for s in ep.seats:
            out.append(SeatResult(ep.game, s.role, float(ep.returns[s.index]), seat_won(ep, s.index), draw))
    return out


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Flat metrics of a batch, as training logs them: per (game, role) `return/GAME/ROLE` (mean training return)
    and `win_rate/GAME/ROLE`; per game `illegal_rate/GAME` (illegal acts over model turns, absent when the game had
    no model turn)."""
    ret: dict[str, list[float]] = defaultdict(list)
    win: dict[str, list[float]] = defaultdict(list)
    for r in seat_results(episodes):
        ret[f"{r.game}/{r.role}"].append(r.ret)
        win[f"{r.game}/{r.role}"].append(float(r.win))
    out: dict[str, float] = {}
    for key, v in ret.items():
        out[f"return/{key}"] = sum(v) / len(v)
        out[f"win_rate/{key}"] = sum(win[key]) / len(win[key])
    by_game: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        by_game[ep.game].append(ep)
    for game, eps in by_game.items():
        k, n = illegal_counts(eps)
        if n:
            out[f"illegal_rate/{game}"] = k / n
    return out


def role_summary(episodes: list[Episode], cooperative: dict[str, bool] | None = None) -> dict[str, dict[str, Any]]:
    """Per `GAME/ROLE`: n, mean return (t 95% interval), win and draw rates (Wilson 95% intervals), and the illegal
    rate of that role's model turns."""
    groups: dict[str, list[SeatResult]] = defaultdict(list)
    for r in seat_results(episodes, cooperative):
        groups[f"{r.game}/{r.role}"].append(r)
    out: dict[str, dict[str, Any]] = {}
    for key, rs in groups.items():
        game, _, role = key.partition("/")
        k, n = illegal_counts([ep for ep in episodes if ep.game == game], role=role)
        out[key] = {"n": len(rs), "return": mean([r.ret for r in rs]),
                    "win": rate(sum(r.win for r in rs), len(rs)), "draw": rate(sum(r.draw for r in rs), len(rs)),
                    "illegal": rate(k, n)}
    return out


def seat_summary(episodes: list[Episode], seat: int, min_utility: float, max_utility: float,
                 cooperative: bool) -> dict[str, Any]:
    """One seat over episodes of one game (an evaluation's model seat): normalized return (t 95% interval, cut to
    [0, 1]), win, draw and loss counts, win rate and illegal rate (Wilson 95% intervals), and how many games the
    seat's own illegal act ended."""
    n = len(episodes)
    norm = [normalized_return(ep, seat, min_utility, max_utility, cooperative) for ep in episodes]
    wins = sum(seat_won(ep, seat) for ep in episodes)
    draws = sum(is_draw(ep, cooperative) for ep in episodes)
    k, turns = illegal_counts(episodes, seat)
    nr = mean(norm)
    ci = [max(0.0, nr["ci95"][0]), min(1.0, nr["ci95"][1])] if nr["ci95"] else None  # the mean lies in [0, 1]
    return {"n": n, "normalized_return": nr["mean"], "normalized_return_ci95": ci, "normalized_return_sd": nr["sd"],
            "wins": wins, "draws": draws, "losses": n - wins - draws,
            "win_rate": wins / n if n else 0.0, "win_rate_ci95": list(wilson_interval(wins, n)),
            "illegal_rate": k / turns if turns else 0.0, "illegal_rate_ci95": list(wilson_interval(k, turns)),
            "illegal_acts": k, "model_turns": turns,
            "illegal_endings": sum(ep.end_reason == "illegal" and offender(ep) == seat for ep in episodes)}


def pooled_seats(seats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The model over all its seat orders of one game (seat_summary entries, e.g. first and second): illegal rate
    over all its turns and win rate over all its games (Wilson 95%), and the normalized return as the paper
    averages it, the mean of the seat orders' means with the interval of that mean (seat orders are independent
    samples: half-width z * sqrt(sum sd_i^2 / n_i) / k, cut to [0, 1]; none when a seat has no spread estimate)."""
    s = list(seats.values())
    k = len(s)
    n = sum(x["n"] for x in s)
    wins = sum(x["wins"] for x in s)
    acts, turns = sum(x["illegal_acts"] for x in s), sum(x["model_turns"] for x in s)
    nr = sum(x["normalized_return"] for x in s) / k
    ci = None
    if all(x.get("normalized_return_sd") is not None and x["n"] > 1 for x in s):
        half = Z95 * math.sqrt(sum(x["normalized_return_sd"] ** 2 / x["n"] for x in s)) / k
        ci = [max(0.0, nr - half), min(1.0, nr + half)]
    return {"n": n, "normalized_return": nr, "normalized_return_ci95": ci,
            "wins": wins, "draws": sum(x["draws"] for x in s), "losses": sum(x["losses"] for x in s),
            "win_rate": wins / n if n else 0.0, "win_rate_ci95": list(wilson_interval(wins, n)),
            "illegal_rate": acts / turns if turns else 0.0, "illegal_rate_ci95": list(wilson_interval(acts, turns)),
            "illegal_acts": acts, "model_turns": turns}


__all__ = ["SeatResult", "Z95", "episode_metrics", "illegal_counts", "is_cooperative", "is_draw", "is_illegal_act", "is_model_turn",
           "mean", "mean_interval", "normalized_return", "offender", "pooled_seats", "rate", "role_summary", "sample_sd", "seat_results",
           "seat_summary", "seat_won", "utility_range", "wilson_interval"]
