"""Advantage estimators: one registry, each turning a batch of finished Episodes into per-turn advantages.

An estimator is called as `fn(episodes, learner, options, state) -> advantages` where `learner(episode, seat)`
says which seats are trained (bots and frozen opponents are not), `advantages[i][j]` is the advantage of
`episodes[i].turns[j]` (None for turns that are not trained) and `state` is a dict the estimator may keep between
iterations (the run saves it; only `rae` uses it). Register new ones with `@register_advantage("name")`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from stratagem.games.core import Episode
from stratagem.registries import Registry

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
    marshal_center: str = field(default="game_seat", metadata={"help": "marshal: groups whose mean turn reward is "
                                "subtracted first: 'game_seat' (per game and seat, MARSHAL's self-play runs), 'game' "
                                "(per game, its fixed-opponent runs) or 'none'.",
                                "choices": ("game_seat", "game", "none")})
    reward_clip: float | None = field(default=None, metadata={"help": "marshal: clamp the centred turn rewards to "
                                      "[-clip, clip] (MARSHAL's fixed-opponent runs: 10); none: off.", "min": 0.0})
    marshal_baseline: str = field(default="distinct_per_seat", metadata={"help": "marshal: 'distinct_per_seat' "
                                  "subtracts, per seat over all games, the mean of the distinct turn returns and 0 "
                                  "(MARSHAL's advantage_norm 'mean'); 'none' (its fixed-opponent runs) skips it.",
                                  "choices": ("distinct_per_seat", "none")})
    advantage_clip: float | None = field(default=None, metadata={"help": "marshal: clamp the whitened advantages "
                                         "to [-clip, clip] (MARSHAL's fixed-opponent runs: 4); none: off.",
                                         "min": 0.0})
    marshal_eot_tokens: int = field(default=1, metadata={"help": "marshal: response tokens a turn has beyond its "
                                    "completion ids when whitening (the end-of-turn token the chat template "
                                    "appends, which MARSHAL trains and puts the reward on); 0 when the completion "
                                    "ids already end with it.", "min": 0})


class AdvantageFn(Protocol):
    def __call__(self, episodes: list[Episode], learner: Learner, options: AdvantageConfig,
                 state: dict[str, Any]) -> Advantages: ...


_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator", plugins="advantages")
register_advantage = _ESTIMATORS.register
unregister_advantage = _ESTIMATORS.unregister
get_advantage = _ESTIMATORS.get


def advantage_names() -> list[str]:
    return sorted(_ESTIMATORS.items())


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


# ---- marshal: MARSHAL's own code path ----------------------------------------------------------------------------
# `mars` is the paper's formula. MARSHAL's code (roll/utils/functionals.py, called from agentic_pipeline.py) gets
# there differently: it works on token rows, one per (episode, seat), with each turn's reward on the turn's
# end-of-turn token, and whitens twice over every response token of the batch. `marshal` replays that path turn by
# turn: all tokens of a turn share one advantage, and token counts enter only as weights of the whitening.

_WHITEN_EPS = 1e-8  # masked_whiten adds it to the variance, inside the square root
_DISTINCT_DECIMALS = 6  # two returns equal to this many decimals are one value of the distinct-returns baseline


@dataclass
class MarshalTurn:
    """One trained turn as MARSHAL's token rows see it: `n_tokens` response tokens, the reward on the last one."""

    episode: int
    turn: int
    seat: int
    game: str
    reward: float
    n_tokens: int


def marshal_trajectories(episodes: list[Episode], learner: Learner, eot_tokens: int = 1) -> list[list[MarshalTurn]]:
    """The trained turns, one list per trajectory (a learner seat in one episode, its turns in order). A turn has
    len(completion_token_ids) + eot_tokens response tokens (at least one: the reward needs a token to sit on)."""
    trajs = []
    for i, ep in enumerate(episodes):
        for s in _trained_seats(ep, learner):
            trajs.append([MarshalTurn(i, j, s, ep.game, float(t.reward),
                                      max(1, len(t.completion_token_ids or ()) + eot_tokens))
                          for j, t in enumerate(ep.turns) if t.seat == s])
    return trajs


def marshal_center(trajs: list[list[MarshalTurn]], mode: str = "game_seat") -> list[list[float]]:
    """Turn rewards minus their group's mean, each turn counted once (MARSHAL's `reward_normalize_by_player` with
    `score_normalize` method 'mean' for 'game_seat'; `score_normalize` on the whole game-tag group for 'game').

    A group with a single turn is centred like any other, so that turn's reward becomes 0: its mean is defined,
    and MARSHAL fails there only because it also computes an unbiased variance that 'mean' never uses."""
    if mode == "none":
        return [[t.reward for t in traj] for traj in trajs]
    if mode not in ("game_seat", "game"):
        raise ValueError(f"AdvantageConfig.marshal_center must be 'game_seat', 'game' or 'none', got {mode!r}")
    key: Callable[[MarshalTurn], Any] = (lambda t: (t.game, t.seat)) if mode == "game_seat" else (lambda t: t.game)
    pools: dict[Any, list[float]] = defaultdict(list)
    for traj in trajs:
        for t in traj:
            pools[key(t)].append(t.reward)
    means = {k: sum(v) / len(v) for k, v in pools.items()}
    return [[t.reward - means[key(t)] for t in traj] for traj in trajs]


def _whiten_stats(tokens: list[tuple[float, int]]) -> tuple[float, float]:
    """(mean, 1 / sqrt(var + 1e-8)) of token values given as (value, count) pairs: `masked_whiten`'s statistics,
    with the unbiased (N - 1) variance of `masked_var`. With fewer than two tokens the variance is taken as 0, so
    whitening maps the values to 0 (MARSHAL raises there)."""
    n = sum(c for _, c in tokens)
    if n == 0:
        return 0.0, 1.0
    mean = sum(v * c for v, c in tokens) / n
    var = sum(c * (v - mean) ** 2 for v, c in tokens) / (n - 1) if n > 1 else 0.0
    return mean, 1.0 / math.sqrt(var + _WHITEN_EPS)


def marshal_returns(trajs: list[list[MarshalTurn]], rewards: list[list[float]]) -> list[list[float]]:
    """Whitened rewards summed to go, per trajectory (MARSHAL's `masked_whiten` of the token rewards, then
    `compute_reinforce_return` with gamma 1).

    The whitening runs over every response token of the batch: a turn's reward on its end token, 0 on its other
    n - 1 tokens. Each of those tokens is shifted by the mean, so a turn adds (r - n * mean) * scale to the reverse
    cumulative sum, and G_k, the return at turn k's first response token, is the sum of that over turns j >= k. The
    return at the turn's later tokens differs by at most (n - 1) * |mean| * scale; centring makes the mean 0, so the
    two agree exactly unless centring is off or the reward clip cuts a centred group."""
    mean, scale = _whiten_stats([(r, 1) for rs in rewards for r in rs]
                                + [(0.0, t.n_tokens - 1) for traj in trajs for t in traj])
    out = []
    for traj, rs in zip(trajs, rewards):
        togo, g = 0.0, [0.0] * len(traj)
        for k in range(len(traj) - 1, -1, -1):
            togo += (rs[k] - traj[k].n_tokens * mean) * scale
            g[k] = togo
        out.append(g)
    return out


def marshal_distinct_baseline(trajs: list[list[MarshalTurn]], returns: list[list[float]]) -> dict[int, float]:
    """Per seat index, pooled over every game of the batch: the plain mean of the distinct turn returns of that
    seat together with 0 (MARSHAL's `normalize_unique_values_by_player`, mode 'mean': torch.unique over the seat's
    whole padded rows, where the padding after the last turn contributes the 0).

    Idealised: values are distinct after rounding to 6 decimals. MARSHAL compares raw float32 values, so a float
    residue (1e-7 instead of 0) or a return that varies inside a turn counts as a further value; which residues
    appear depends on the batch's arithmetic, so that is not reproduced."""
    distinct: dict[int, dict[float, float]] = {}
    for traj, gs in zip(trajs, returns):
        seen = distinct.setdefault(traj[0].seat, {0.0: 0.0})
        for g in gs:
            seen.setdefault(round(g, _DISTINCT_DECIMALS), g)
    return {s: sum(d.values()) / len(d) for s, d in distinct.items()}


def marshal_whiten(trajs: list[list[MarshalTurn]], values: list[list[float]]) -> list[list[float]]:
    """Per-turn values whitened over every response token of the batch (MARSHAL's `masked_whiten` of the
    advantages): a turn weighs as many tokens as it has."""
    mean, scale = _whiten_stats([(v, t.n_tokens) for traj, vs in zip(trajs, values) for t, v in zip(traj, vs)])
    return [[(v - mean) * scale for v in vs] for vs in values]


def _clamp(values: list[list[float]], bound: float) -> list[list[float]]:
    return [[min(max(v, -bound), bound) for v in vs] for vs in values]


@register_advantage("marshal")
def marshal(episodes: list[Episode], learner: Learner, options: AdvantageConfig,
            state: dict[str, Any]) -> Advantages:
    """MARS as MARSHAL's code computes it (agentic_pipeline.py into roll/utils/functionals.py), per turn:

    1. centre the turn rewards per (game, seat) (`marshal_center`; FIX runs: per game);
    2. clamp them to +-reward_clip when set (FIX: 10);
    3. whiten them over all response tokens of the batch, then sum them to go per trajectory (`marshal_returns`);
    4. subtract the per-seat mean of the distinct returns and 0 (`marshal_distinct_baseline`; FIX: off);
    5. whiten the advantages over all response tokens (`marshal_whiten`);
    6. clamp them to +-advantage_clip when set (FIX: 4).

    A turn's response tokens are its completion ids plus `marshal_eot_tokens` end-of-turn tokens (the one the chat
    template appends, which MARSHAL trains and rewards). Deviations from the code, each explained where it happens:
    a single-turn centring group gives 0 instead of an error, the distinct returns are rounded to 6 decimals, and
    every token of a turn gets the return of the turn's first token."""
    if options.marshal_baseline not in ("distinct_per_seat", "none"):
        raise ValueError("AdvantageConfig.marshal_baseline must be 'distinct_per_seat' or 'none', got "
                         f"{options.marshal_baseline!r}")
    out = _empty(episodes)
    trajs = marshal_trajectories(episodes, learner, options.marshal_eot_tokens)
    if not trajs:
        return out
    rewards = marshal_center(trajs, options.marshal_center)
    if options.reward_clip is not None:
        rewards = _clamp(rewards, options.reward_clip)
    values = marshal_returns(trajs, rewards)
    if options.marshal_baseline == "distinct_per_seat":
        base = marshal_distinct_baseline(trajs, values)
        values = [[g - base[traj[0].seat] for g in gs] for traj, gs in zip(trajs, values)]
    values = marshal_whiten(trajs, values)
    if options.advantage_clip is not None:
        values = _clamp(values, options.advantage_clip)
    for traj, vs in zip(trajs, values):
        for t, v in zip(traj, vs):
            out[t.episode][t.turn] = v
    return out
