"""The game interface every Stratagem game implements, its configuration (rewards, reply format), and the reply
parser shared by the strategic games.

A game is played one act at a time: `current_seat()` says who acts, `observe(seat)` is what that seat sees (chat
messages; never hidden information), `step(seat, reply)` parses and applies the reply and returns the recorded
`Turn`. An illegal, malformed or over-long reply ends the game (the offender takes the normal loss minus a
penalty); it is game data, never an exception. `episode(seats)` packs the finished game into an `Episode`.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from stratagem.games.core import Episode, Observation, Reply, Seat, Turn


@dataclass
class RewardConfig:
    """Every reward constant (MARS defaults)."""

    win: float = field(default=1.0, metadata={"help": "Outcome of the winner of a two-player zero-sum game."})
    loss: float = field(default=-1.0, metadata={"help": "Outcome of the loser of a two-player zero-sum game."})
    draw: float = field(default=0.1, metadata={"help": "Outcome of each seat when a zero-sum game is drawn."})
    card_played: float = field(default=1.0, metadata={"help": "Cooperative games (Hanabi): outcome to every seat per "
                               "card successfully played (the final score; OpenSpiel scores 0 when all lives are lost)."})
    format_bonus: float = field(default=0.05, metadata={"help": "Reward of each legal, well-formed action."})
    illegal_penalty: float = field(default=10.0, metadata={"help": "Subtracted from the normal loss of a seat whose "
                                   "illegal, malformed or over-long reply ended the game."})
    length_penalty: float = field(default=0.0, metadata={"help": "Per completion token beyond `length_free_tokens`, "
                                  "subtracted from that turn's reward (0: off)."})
    length_free_tokens: int = field(default=256, metadata={"help": "Completion tokens a reply may use before the "
                                    "length penalty applies."})


@dataclass
class ReplyFormat:
    """How a reply must be written."""

    think: bool = field(default=False, metadata={"help": "Require `<think>...</think><answer>...</answer>` (thinking "
                        "models) instead of plain `<answer>ACTION</answer>`."})
    response_prefix: str = field(default="", metadata={"help": "Forced start of every model reply, e.g. '<answer>' "
                                 "(sent as a partial assistant turn; recorded as part of the response). "
                                 "'{legal_prefix}' stands for the longest common start of the legal actions, "
                                 "e.g. '<X(' for tic-tac-toe's X."})
    open_answer: bool = field(default=False, metadata={"help": "Also accept a reply that ends inside an unclosed "
                              "<answer>: for replies cut at a stop string right after the action (stop '>')."})


def response_prefix(fmt: ReplyFormat, legal: list[str]) -> str:
    """The forced reply start for one turn. A small model rarely writes a well-formed action on its own; forcing
    the part every legal action shares (`{legal_prefix}`) leaves it only the choice between them."""
    if "{legal_prefix}" not in fmt.response_prefix:
        return fmt.response_prefix
    return fmt.response_prefix.replace("{legal_prefix}", os.path.commonprefix(legal) if legal else "")


@dataclass
class GameConfig:
    """What every game of a run shares: rewards and reply format."""

    rewards: RewardConfig = field(default_factory=RewardConfig, metadata={"help": "Reward constants."})
    reply: ReplyFormat = field(default_factory=ReplyFormat, metadata={"help": "Reply format."})


@dataclass(frozen=True)
class GameInfo:
    """Static metadata of a game."""

    name: str
    num_players: int
    roles: tuple[str, ...]
    max_turns: int
    zero_sum: bool
    cooperative: bool
    perfect_information: bool


ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
THINK_RE = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)


def normalize_action(text: str) -> str:
    """The comparison key of an action string: without its surrounding `<>`, whitespace collapsed, case-folded, so
    `<X(0,2)>`, `X(0,2)` and `x(0,2)` name the same move."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return " ".join(text.split()).casefold()


def parse_answer(text: str, legal: list[str], fmt: ReplyFormat) -> tuple[str | None, str | None]:
    """(action, None) for a well-formed reply naming one legal action, else (None, why)."""
    answers = ANSWER_RE.findall(text)
    if not answers and fmt.open_answer:
        answers = text.split("<answer>")[1:]  # each opened answer; more than one is malformed as when closed
    if not answers:
        return None, "malformed: no <answer>...</answer>"
    if len(answers) > 1:
        return None, f"malformed: {len(answers)} answers"
    if fmt.think and not THINK_RE.fullmatch(text):
        return None, "malformed: expected <think>...</think><answer>...</answer>"
    key = normalize_action(answers[0])
    for action in legal:
        if normalize_action(action) == key:
            return action, None
    return None, f"illegal: {answers[0].strip()[:80]!r} is not a legal action"


class Game(ABC):
    """One game being played; `reset(seed)` starts a fresh one."""

    info: GameInfo
    config: GameConfig
    params: dict[str, Any]

    @abstractmethod
    def reset(self, seed: int) -> None: ...

    @abstractmethod
    def current_seat(self) -> int | None:
        """The seat to act, None once the game is over."""

    @abstractmethod
    def observe(self, seat: int) -> Observation:
        """What `seat` sees now; calling it again without a step returns the same observation."""

    @abstractmethod
    def step(self, seat: int, reply: Reply) -> Turn:
        """Parse and apply `seat`'s reply; returns the recorded Turn (an illegal reply ends the game)."""

    @abstractmethod
    def is_over(self) -> bool: ...

    @abstractmethod
    def outcomes(self) -> list[float]:
        """The terminal outcome of each seat (penalties included, per-turn rewards excluded)."""

    @abstractmethod
    def raw_returns(self) -> list[float]:
        """The rules engine's own returns (before any Stratagem reward shaping)."""

    def information_key(self, seat: int) -> str | None:
        """What `seat` knows according to the rules engine (None in perfect-information games); two states with
        the same key must look the same to that seat (see `visible_state`)."""
        return None

    def visible_state(self, seat: int) -> str:
        """The part of `seat`'s current observation that describes the state (checked against `information_key`)."""
        return ""

    @abstractmethod
    def episode(self, seats: list[Seat]) -> Episode:
        """The finished game as an Episode: terminal outcomes credited to each seat's last turn."""
