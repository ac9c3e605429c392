"""`check_game`: the conformance check every game passes (after PettingZoo's api_test). Raises
`ConformanceError` listing every failure; returns a small report otherwise."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratagem.games.base import BAD_REPLIES, Game
from stratagem.games.core import Episode, Seat, read_jsonl, write_jsonl
from stratagem.games.registry import get_game_spec, make_game

__all__ = ["BAD_REPLIES", "CheckReport", "ConformanceError", "check_game", "check_registered", "run_referee"]


class ConformanceError(AssertionError):
    pass


@dataclass
class CheckReport:
    game: str
    episodes: int
    max_turns_seen: int
    hidden_info_keys: int
    failures: list[str] = field(default_factory=list)


def _seats(game: Game, agent: str = "random") -> list[Seat]:
    return [Seat(index=i, role=r, agent=agent) for i, r in enumerate(game.info.roles)]


def run_referee(game: Game, referees: Mapping[str, Any]) -> int:
    """Do every referee task due now (synchronously); returns how many ran."""
    done = 0
    while (task := game.referee_task()) is not None:
        if done > 100:
            raise ConformanceError(f"{game.info.name}: referee task {task!r} is still due after 100 runs")
        game.apply_referee(task, asyncio.run(game.referee(task, referees)))
        done += 1
    return done


def _random_episode(game: Game, seed: int, seen: dict[tuple[int, str], str], failures: list[str],
                    referees: Mapping[str, Any]) -> Episode:
    rng = random.Random(seed)
    game.reset(seed)
    steps = 0
    while not game.is_over():
        seat = game.current_seat()
        if seat is None and run_referee(game, referees):
            continue
        if seat is None:
            raise ConformanceError(f"seed {seed}: current_seat() is None, no referee task is due and is_over() "
                                   "is False")
        obs = game.observe(seat)
        key = game.information_key(seat)
        if key is not None:
            visible = game.visible_state(seat)
            if seen.setdefault((seat, key), visible) != visible:
                failures.append(f"seat {seat} sees different states for one information state {key!r}: hidden "
                                f"information leaks:\n{seen[(seat, key)]}\n---\n{visible}")
        reply = game.random_reply(seat, obs, rng)
        turn = game.step(seat, reply)
        if turn.illegal_reason is not None:
            failures.append(f"seed {seed}: the legal reply {reply.text!r} was judged {turn.illegal_reason!r}")
            break
        steps += 1  # each step records one Turn (the Game interface has no `turns` list to count)
        if steps > game.info.max_turns:
            failures.append(f"seed {seed}: more than max_turns={game.info.max_turns} turns")
            break
    return game.episode(_seats(game))


def _check_returns(game: Game, ep: Episode, failures: list[str]) -> None:
    """A game with only legal acts: each seat's return is its format bonuses plus the rules engine's return (a zero
    terminal reward replaced by rewards.draw where the game does so), and equals the sum of its turn rewards."""
    raw, bonus = game.raw_returns(), game.legal_act_reward()
    if game.info.zero_sum and abs(sum(raw)) > 1e-9:
        failures.append(f"seed {ep.seed}: zero-sum game returns {raw} do not sum to 0")
    if game.info.cooperative and len(set(raw)) != 1:
        failures.append(f"seed {ep.seed}: cooperative game returns {raw} differ between seats")
    bonus_draw = getattr(game, "zero_terminal_bonus", False)
    for s in range(len(raw)):
        turns = ep.seat_turns(s)
        if abs(ep.returns[s] - sum(t.reward for t in turns)) > 1e-9:
            failures.append(f"seed {ep.seed}: seat {s} return {ep.returns[s]} is not the sum of its turn rewards")
        got = ep.returns[s] - len(turns) * bonus
        draw = game.config.rewards.draw if bonus_draw else 0.0
        allowed = [raw[s]] + ([raw[s] + draw] if bonus_draw and game.info.cooperative else []) \
            + ([draw] if bonus_draw and raw[s] == 0 else [])
        if s == 0 or not game.info.cooperative:  # a later Hanabi seat misses the points scored before its first turn
            if not any(abs(got - a) < 1e-9 for a in allowed):
                failures.append(f"seed {ep.seed}: seat {s} return {ep.returns[s]} minus {len(turns)} format "
                                f"bonuses is {got}, expected one of {allowed} (raw returns {raw})")


def _check_reasks(game: Game, failures: list[str], referees: Mapping[str, Any]) -> None:
    """A game that re-asks: each bad reply is a failed Turn with the penalty, the seat is asked again `reasks`
    times, then its turn passes; the game goes on."""
    rule = game.reask_rule()
    assert rule is not None
    for what, reply in game.bad_replies().items():
        game.reset(0)
        run_referee(game, referees)
        seat = game.current_seat()
        if seat is None:
            raise ConformanceError(f"{game.info.name}: no seat acts right after reset(0)")
        for attempt in range(rule.reasks + 1):
            if game.current_seat() != seat:
                failures.append(f"{what}: seat {seat} was not asked again after {attempt} failed attempt(s) "
                                f"(re-asks: {rule.reasks})")
                break
            turn = game.step(seat, reply)
            if turn.illegal_reason is None or abs(turn.reward - rule.penalty) > 1e-9:
                failures.append(f"{what}: attempt {attempt} judged {turn.illegal_reason!r} with reward "
                                f"{turn.reward}, expected a failed act rewarded {rule.penalty}")
                break
            run_referee(game, referees)
        else:
            if game.is_over():
                failures.append(f"{what}: a failed act ended the game")


def _check_penalties(game: Game, failures: list[str], referees: Mapping[str, Any]) -> None:
    if game.reask_rule() is not None:
        _check_reasks(game, failures, referees)
        return
    r = game.config.rewards
    for what, reply in game.bad_replies().items():
        game.reset(0)
        seat = game.current_seat()
        if seat is None:
            raise ConformanceError(f"{game.info.name}: the game is over right after reset(0)")
        turn = game.step(seat, reply)
        ep = game.episode(_seats(game))
        if turn.illegal_reason is None or not game.is_over() or ep.end_reason != "illegal":
            failures.append(f"{what}: not judged illegal or did not end the game ({turn.illegal_reason!r})")
            continue
        expected_offender = -game.normal_loss(seat) - r.illegal_penalty
        if abs(ep.returns[seat] - expected_offender) > 1e-9:
            failures.append(f"{what}: offender return {ep.returns[seat]}, expected {expected_offender}")
        for other in range(game.info.num_players):
            if other != seat and abs(ep.returns[other]) > 1e-9:
                failures.append(f"{what}: seat {other} return {ep.returns[other]}, expected 0 (a forfeit is no win)")


def check_game(game: str | Game, episodes: int = 200, seed: int = 0, workdir: str | Path | None = None,
               referees: Mapping[str, Any] | None = None) -> CheckReport:
    """Play `episodes` random games and check termination, returns, hidden information, penalties (the forfeit or
    the game's re-ask rule) and the JSONL round trip (through a file in `workdir` when given, else through
    `to_json`/`from_json`). `referees` (role -> agent) do the referee tasks of a game that has them."""
    refs = referees or {}
    g = make_game(game) if isinstance(game, str) else game
    failures: list[str] = []
    seen: dict[tuple[int, str], str] = {}
    eps: list[Episode] = []
    longest = 0
    for i in range(episodes):
        ep = _random_episode(g, seed + i, seen, failures, refs)
        _check_returns(g, ep, failures)
        longest = max(longest, len(ep.turns))
        eps.append(ep)
        if len(failures) > 20:
            break
    _check_penalties(g, failures, refs)
    if workdir is not None:
        path = Path(workdir) / f"{g.info.name}.jsonl"
        write_jsonl(eps, path)
        back = list(read_jsonl(path))
    else:
        back = [Episode.from_json(ep.to_json()) for ep in eps]
    if [e.to_dict() for e in back] != [e.to_dict() for e in eps]:
        failures.append("episodes changed in the JSONL round trip")
    report = CheckReport(game=g.info.name, episodes=len(eps), max_turns_seen=longest,
                         hidden_info_keys=len(seen), failures=failures)
    if failures:
        raise ConformanceError(f"{g.info.name}: {len(failures)} failure(s):\n" + "\n".join(failures[:20]))
    return report


def check_registered(name: str, workdir: str | Path | None = None):
    """The conformance check of registered game `name`: its spec's own `check`, else `check_game`."""

    spec = get_game_spec(name)
    if spec.check is not None:
        return spec.check(workdir=workdir)
    return check_game(name, workdir=workdir)
