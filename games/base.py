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
    """Every reward constant, as MARS's released code (MARSHAL) computes them: the rules engine's per-step rewards
    (board games +-1 at the end, poker net chips, Hanabi +1 per card played), each step's reward credited to the
    acting seat's current turn and to every other seat's most recent turn; a format bonus per legal act; a forfeit
    for an illegal act; a length penalty on very long replies."""

    draw: float = field(default=0.1, metadata={"help": "Replaces a zero terminal reward in tic-tac-toe, Connect Four "
                        "and Hanabi (a draw, or a Hanabi game ending without points on its last step); poker keeps "
                        "its 0 for a split pot."})
    format_bonus: float = field(default=0.05, metadata={"help": "Reward of each legal, well-formed action."})
    illegal_penalty: float = field(default=10.0, metadata={"help": "An illegal, malformed or over-long reply ends "
                                   "the game: the offender gets -(its normal loss) - illegal_penalty (board games: "
                                   "-1 - 10; poker: -(own chips in the pot) - 10; Hanabi: -(current score) - 10), "
                                   "the other seats 0.", "min": 0.0})
    length_penalty: float = field(default=0.5, metadata={"help": "Length penalty coefficient: a reply of L tokens "
                                  "gets coef * min(0, 1 - (L - length_min_tokens) / (length_max_tokens - "
                                  "length_min_tokens)), i.e. a penalty only beyond length_max_tokens (MARS: 0.5; "
                                  "0: off).", "min": 0.0})
    length_min_tokens: int = field(default=11, metadata={"help": "Shortest well-formed reply in tokens (MARS: 11).",
                                   "min": 0})
    length_max_tokens: int = field(default=2048, metadata={"help": "Reply length in tokens beyond which the length "
                                   "penalty applies (MARS: 2048).", "min": 1})

    def length_reward(self, n_tokens: int) -> float:
        """MARS's length reward: coef * min(0, 1 - (L - min) / (max - min)); 0 up to `length_max_tokens`."""
        span = self.length_max_tokens - self.length_min_tokens
        if span <= 0:
            raise ValueError("rewards.length_max_tokens must exceed rewards.length_min_tokens")
        return self.length_penalty * min(0.0, 1.0 - (n_tokens - self.length_min_tokens) / span)


@dataclass
class ReplyFormat:
    """How a reply must be written; the defaults are the training protocol that `stratagem train`, `play` and
    `eval games` share (with `agents.sampling.SamplingConfig`)."""

    think: bool = field(default=False, metadata={"help": "Require `<think>...</think><answer>...</answer>` (thinking "
                        "models) instead of plain `<answer>ACTION</answer>`."})
    response_prefix: str = field(default="<answer>{legal_prefix}", metadata={"help": "Forced start of every model "
                                 "reply (sent as a partial assistant turn; recorded as part of the response). "
                                 "'{legal_prefix}' stands for the longest common start of the legal actions, "
                                 "e.g. '<X(' for tic-tac-toe's X (the default model writes almost no well-formed "
                                 "answer without it); '' for none."})
    open_answer: bool = field(default=True, metadata={"help": "Also accept a reply that ends inside an unclosed "
                              "<answer>: what the stop string '>' right after the action produces (see "
                              "SamplingConfig.stop); off: require <answer>...</answer>."})


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
    def raw_returns(self) -> list[float]:
        """The rules engine's own returns (before any Stratagem reward shaping)."""

    def normal_loss(self, seat: int) -> float:
        """What `seat` loses in a lost game (a forfeit costs this plus rewards.illegal_penalty); default 1."""
        return 1.0

    def information_key(self, seat: int) -> str | None:
        """What `seat` knows according to the rules engine (None in perfect-information games); two states with
        the same key must look the same to that seat (see `visible_state`)."""
        return None

    def visible_state(self, seat: int) -> str:
        """The part of `seat`'s current observation that describes the state (checked against `information_key`)."""
        return ""

    @abstractmethod
    def episode(self, seats: list[Seat]) -> Episode:
        """The finished game as an Episode; its returns are the sums of each seat's turn rewards."""
