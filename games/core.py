"""The data model shared by games, rollouts and training: Episode -> Seat -> Turn.

One `Episode` is one finished game; a `Turn` is one act of one agent. Training reads only these records
(from JSONL), so every field a loss needs is captured at rollout time: the messages the agent saw, the raw
response, the token ids and the sampling log-probs reported by the endpoint, and the adapter that sampled it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator


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
    seat: int
    role: str
    phase: str
    messages: list[dict[str, str]]
    response: str
    action: str | None = None
    illegal_reason: str | None = None
    prompt_token_ids: list[int] | None = None
    completion_token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    reward: float = 0.0
    adapter: str | None = None
    faction: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def legal(self) -> bool:
        return self.illegal_reason is None


@dataclass
class Seat:
    index: int
    role: str
    agent: str
    faction: str | None = None
    name: str | None = None


@dataclass
class Episode:
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
    def from_dict(cls, d: dict[str, Any]) -> "Episode":
        d = dict(d)
        d["seats"] = [Seat(**s) for s in d["seats"]]
        d["turns"] = [Turn(**t) for t in d["turns"]]
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "Episode":
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


def read_jsonl(path: str | os.PathLike) -> Iterator[Episode]:
    """Read episodes; a torn last line (a write cut by a kill) is skipped, and so are a training run's
    `{"commit": k}` markers; any other bad line is an error naming the file and line."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, 1):
        if not line.strip() or line.startswith('{"commit":'):
            continue
        try:
            yield Episode.from_json(line)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            if i == len(lines) and not line.endswith("\n"):
                return
            raise ValueError(f"{path}:{i}: not an episode record ({e})") from e
