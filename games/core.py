"""The data model shared by games, rollouts and training: Episode -> Seat -> Turn.

One `Episode` is one finished game; a `Turn` is one act of one agent. Training reads only these records
(from JSONL), so every field a loss needs is captured at rollout time: the messages the agent saw, the raw
response, the token ids and the sampling log-probs reported by the endpoint, and the adapter that sampled it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratagem.files import read_json_lines


@dataclass
class Observation:
    """What one seat may see when it is asked to act. Must never hold information hidden from that seat,
    except `private`, which only bots read (an OpenSpiel state for MCTS, say) and is never sent to a model."""

    game: str
    seat: int
    role: str
    phase: str
    messages: list[dict[str, str]]
    legal_actions: list[str]
    response_prefix: str = ""  # forced start of the reply (e.g. "<answer><"), sent as a partial assistant turn
    private: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Reply:
    """An agent's answer. `action` is set by agents that choose an action directly (bots, humans); a language
    model only produces `text`, which the game parses."""

    text: str
    action: str | None = None
    prompt_token_ids: list[int] | None = None
    completion_token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    model: str | None = None
    finish_reason: str | None = None


@dataclass
class Turn:
    """One act of one seat, with everything a loss needs, captured when it was sampled."""

    seat: int  # index into Episode.seats
    role: str  # the seat's role in the game (X / O, player_0, culprit, ...)
    phase: str  # the game phase the act belongs to (play, ask, vote, ...)
    messages: list[dict[str, str]]  # the chat the agent saw (its prompt)
    response: str  # the full reply as recorded: a forced prefix plus what the agent wrote
    action: str | None = None  # the parsed legal action, None when illegal
    illegal_reason: str | None = None  # why the reply was not a legal action (None: legal)
    prompt_token_ids: list[int] | None = None  # the tokens the endpoint saw (forced prefix included)
    completion_token_ids: list[int] | None = None  # the sampled tokens (None: not sampled by a model)
    logprobs: list[float] | None = None  # the endpoint's log-prob of each sampled token
    reward: float = 0.0  # every reward credited to this turn (format, length, the game's step rewards)
    adapter: str | None = None  # the policy version that sampled it (base, iter-k)
    faction: str | None = None  # the seat's faction in a team game (culprit / civilian), else None
    info: dict[str, Any] = field(default_factory=dict)  # game-specific extras (finish_reason, target, ...)

    @classmethod
    def from_reply(cls, reply: Reply, *, seat: int, role: str, phase: str, messages: list[dict[str, str]],
                   response: str, action: str | None, illegal_reason: str | None, reward: float = 0.0,
                   faction: str | None = None, info: dict[str, Any] | None = None) -> Turn:
        """The Turn of `reply`: the sampled fields (token ids, log-probs, model, finish reason) come from it."""
        extra = dict(info or {})
        if reply.finish_reason:
            extra.setdefault("finish_reason", reply.finish_reason)
        return cls(seat=seat, role=role, phase=phase, messages=messages, response=response, action=action,
                   illegal_reason=illegal_reason, prompt_token_ids=reply.prompt_token_ids,
                   completion_token_ids=reply.completion_token_ids, logprobs=reply.logprobs, reward=reward,
                   adapter=reply.model, faction=faction, info=extra)

    @property
    def legal(self) -> bool:
        return self.illegal_reason is None


@dataclass
class Seat:
    """Who sat where in one episode."""

    index: int  # position in the game (0 moves first in the strategic games)
    role: str  # the game's role of this seat
    agent: str  # the agent spec that played it (llm:MODEL, random, mcts:N, ...)
    faction: str | None = None  # team in a team game (culprit / civilian)
    name: str | None = None  # character name in the mystery


@dataclass
class Episode:
    """One finished game. `returns[s]` is the sum of seat s's turn rewards; `metrics` holds the rules engine's own
    `raw_returns` and game-specific numbers."""

    game: str
    seed: int
    seats: list[Seat]
    turns: list[Turn]
    returns: list[float]
    winners: list[int] = field(default_factory=list)
    end_reason: str = "terminal"
    params: dict[str, Any] = field(default_factory=dict)
    winning_faction: str | None = None
    id: str = ""
    iteration: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def seat_turns(self, seat: int) -> list[Turn]:
        """The trajectory of one seat, in order."""
        return [t for t in self.turns if t.seat == seat]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Episode:
        d = dict(d)
        d["seats"] = [Seat(**s) for s in d["seats"]]
        d["turns"] = [Turn(**t) for t in d["turns"]]
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Episode:
        return cls.from_dict(json.loads(line))


def write_jsonl(episodes: Iterable[Episode], path: str | os.PathLike, append: bool = False) -> int:
    """Write episodes one per line; flushed and fsynced so a kill never leaves a half-written record behind
    a line that is reported as written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for ep in episodes:
            f.write(ep.to_json() + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def is_commit_marker(record: dict[str, Any]) -> bool:
    """A training run's `{"commit": k, "episodes": n}` line in episodes.jsonl (see training/run_store.py)."""
    return "commit" in record and "game" not in record


def read_jsonl(path: str | os.PathLike, limit_bytes: int | None = None) -> Iterator[Episode]:
    """Read episodes (from the first `limit_bytes` bytes only, when given). A training run's commit markers
    (`is_commit_marker`) and a torn last line (a write cut by a kill) are skipped; any other line that is not an
    episode record is an error naming the file and line."""

    for i, rec in read_json_lines(path, limit_bytes):
        if is_commit_marker(rec):
            continue
        try:
            yield Episode.from_dict(rec)
        except (TypeError, KeyError) as e:
            raise ValueError(f"{path}:{i}: not an episode record ({e})") from e
