"""Advantage estimators: one registry, each turning a batch of finished Episodes into per-turn advantages.

An estimator is called as `fn(episodes, learner, options, state) -> advantages` where `learner(episode, seat)`
says which seats are trained (bots and frozen opponents are not), `advantages[i][j]` is the advantage of
`episodes[i].turns[j]` (None for turns that are not trained) and `state` is a dict the estimator may keep between
iterations (the run saves it; only `rae` uses it). Register new ones with `@register_advantage("name")`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from stratagem.games.core import Episode

Learner = Callable[[Episode, int], bool]
Advantages = list[list[float | None]]


def every_seat(episode: Episode, seat: int) -> bool:
    """The self-play learner: every seat is the trained policy."""
    return True


@dataclass
class AdvantageConfig:
    turn_level: bool = field(default=True, metadata={"help": "mars: credit each turn with its return-to-go (sum of "
                             "the seat's rewards from that turn on); off = every turn gets the trajectory return."})
    agent_specific: bool = field(default=True, metadata={"help": "mars: baseline per (game, role); off = one "
                                 "baseline per game shared by all roles."})
    normalize_std: bool = field(default=False, metadata={"help": "mars: also divide by the std of the baseline "
                                "group (population std + eps)."})
    rae_alpha: float = field(default=0.95, metadata={"help": "rae: EMA decay of the per-(game, role) baseline.",
                                                  "min": 0.0, "max": 1.0})
    eps: float = field(default=1e-6, metadata={"help": "Added to a std before dividing by it.", "min": 0.0})


class AdvantageFn(Protocol):
    def __call__(self, episodes: list[Episode], learner: Learner, options: AdvantageConfig,
                 state: dict[str, Any]) -> Advantages: ...


_REGISTRY: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    def deco(fn: AdvantageFn) -> AdvantageFn:
        if name in _REGISTRY:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def get_advantage(name: str) -> AdvantageFn:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; expected one of {sorted(_REGISTRY)}") from None


def advantage_names() -> list[str]:
    return sorted(_REGISTRY)


def _trained_seats(ep: Episode, learner: Learner) -> list[int]:
    """Seats whose trajectory is trained: learner seats that acted at least once."""
    acted = {t.seat for t in ep.turns}
    return [s.index for s in ep.seats if s.index in acted and learner(ep, s.index)]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def _empty(episodes: list[Episode]) -> Advantages:
    return [[None] * len(ep.turns) for ep in episodes]


@register_advantage("grpo")
def grpo(episodes: list[Episode], learner: Learner, options: AdvantageConfig, state: dict[str, Any]) -> Advantages:
    """Trajectory-level GRPO: A = (R_seat - mean(R)) / (std(R) + eps), the mean and population std taken over the
    returns of every trained seat of the same game in the batch, broadcast to all turns of the seat."""
    out = _empty(episodes)
    pools: dict[str, list[float]] = defaultdict(list)
    for ep in episodes:
        for s in _trained_seats(ep, learner):
            pools[ep.game].append(float(ep.returns[s]))
    stats = {g: _mean_std(v) for g, v in pools.items()}
    for i, ep in enumerate(episodes):
        m, sd = stats.get(ep.game, (0.0, 0.0))
        for s in _trained_seats(ep, learner):
            a = (ep.returns[s] - m) / (sd + options.eps)
            for j, t in enumerate(ep.turns):
                if t.seat == s:
                    out[i][j] = a
    return out


@register_advantage("mars")
def mars(episodes: list[Episode], learner: Learner, options: AdvantageConfig, state: dict[str, Any]) -> Advantages:
    """MARS (MARSHAL) turn-level advantage with agent-specific normalization.

    R_k = sum_{k' >= k} r_{k'} over the seat's own turn rewards (gamma = 1), and
    A_k = R_k - mean_{(game, role)}(R)  [/ (std_{(game, role)}(R) + eps) when normalize_std],
    the mean over all turn returns R of the same (game, role) in the batch. Ablations: turn_level=False gives every
    turn the trajectory return R_0; agent_specific=False pools all roles of a game."""
    out = _empty(episodes)
    turn_returns: list[tuple[int, int, str, float]] = []  # (episode, turn, group, R)
    for i, ep in enumerate(episodes):
        for s in _trained_seats(ep, learner):
            idx = [j for j, t in enumerate(ep.turns) if t.seat == s]
            rewards = [float(ep.turns[j].reward) for j in idx]
            role = ep.turns[idx[0]].role if options.agent_specific else "*"
            group = f"{ep.game}|{role}"
            togo = 0.0
            rtg = [0.0] * len(idx)
            for k in range(len(idx) - 1, -1, -1):
                togo += rewards[k]
                rtg[k] = togo
            for k, j in enumerate(idx):
                turn_returns.append((i, j, group, rtg[k] if options.turn_level else rtg[0]))
    pools: dict[str, list[float]] = defaultdict(list)
    for _, _, g, r in turn_returns:
        pools[g].append(r)
    stats = {g: _mean_std(v) for g, v in pools.items()}
    for i, j, g, r in turn_returns:
        m, sd = stats[g]
        out[i][j] = (r - m) / (sd + options.eps) if options.normalize_std else r - m
    return out


@register_advantage("rae")
def rae(episodes: list[Episode], learner: Learner, options: AdvantageConfig, state: dict[str, Any]) -> Advantages:
    """SPIRAL's role-conditioned advantage estimation: A = R_seat - b(game, role), broadcast to the seat's turns.

    Trajectory by trajectory, in batch order, b is read and then updated: b <- alpha * b + (1 - alpha) * R, starting
    from 0 (SPIRAL updates its per-(game, role) EMA once per trajectory, not once per batch). The baselines live in
    state["rae_baseline"] (saved with the run)."""
    out = _empty(episodes)
    baseline: dict[str, float] = state.setdefault("rae_baseline", {})
    for i, ep in enumerate(episodes):
        for s in _trained_seats(ep, learner):
            role = next(t.role for t in ep.turns if t.seat == s)
            key = f"{ep.game}|{role}"
            ret = float(ep.returns[s])
            b = baseline.get(key, 0.0)
            for j, t in enumerate(ep.turns):
                if t.seat == s:
                    out[i][j] = ret - b
            baseline[key] = options.rae_alpha * b + (1 - options.rae_alpha) * ret
    return out
