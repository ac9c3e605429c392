"""The game interface every Stratagem game implements, its configuration (rewards, reply format), and the reply
parser shared by the strategic games.

A game is played one act at a time: `current_seat()` says who acts, `observe(seat)` is what that seat sees (chat
messages; never hidden information), `step(seat, reply)` parses and applies the reply and returns the recorded
`Turn`. An illegal, malformed or over-long reply ends the game (the offender takes the normal loss minus a
penalty); it is game data, never an exception. `episode(seats)` packs the finished game into an `Episode`.
"""

from __future__ import annotations

import os
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stratagem.games.core import Episode, Observation, Reply, Seat, Turn

if TYPE_CHECKING:
    from stratagem.agents.base import Agent


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
    """How a reply must be written and judged, and how the game's prompts are laid out; the defaults are the
    training protocol that `stratagem train`, `play` and `eval games` share (with `agents.sampling.SamplingConfig`).
    MARS's own protocol (MARSHAL) is think, match exact, layout turns, context_tokens 32768."""

    think: bool = field(default=False, metadata={"help": "The thinking protocol: every reply starts inside an "
                        "opened think block (the forced start is '<think>' and a newline; response_prefix is not "
                        "used), reasons, closes it and gives one action: <think>...</think><answer>ACTION</answer>. "
                        "Sample it without stop strings (sampling.stop: []) and with a turn budget "
                        "(sampling.max_tokens, MARS: 4096), so the reply runs to the end of the turn; with a ChatML "
                        "model also sampling.chat_template: chatml (earlier replies stay verbatim)."})
    response_prefix: str = field(default="<answer>{legal_prefix}", metadata={"help": "Forced start of every model "
                                 "reply (sent as a partial assistant turn; recorded as part of the response). "
                                 "'{legal_prefix}' stands for the longest common start of the legal actions, "
                                 "e.g. '<X(' for tic-tac-toe's X (the default model writes almost no well-formed "
                                 "answer without it); '' for none. Not used with think."})
    open_answer: bool = field(default=True, metadata={"help": "Also accept a reply that ends inside an unclosed "
                              "<answer>: what the stop string '>' right after the action produces (see "
                              "SamplingConfig.stop); off: require <answer>...</answer>. Lenient matching only."})
    match: str = field(default="lenient", metadata={"help": "How a reply is judged. lenient: exactly one <answer> "
                       "anywhere in the reply (with open_answer also an unclosed one; with think after a "
                       "<think>...</think> block), its action compared without the angle brackets, case or extra "
                       "spaces. exact (MARSHAL's judge): the whole reply with its forced start must be "
                       "'<think>R</think> <answer>A</answer>' (without think: '<answer>A</answer>'), only "
                       "whitespace between the blocks and at most one newline after them; the tags are stripped "
                       "from A, of 'X || Y' only X counts, and it must equal a legal action string exactly "
                       "(case-sensitive).", "choices": ("lenient", "exact")})
    layout: str = field(default="compact", metadata={"help": "How a game's prompts are laid out. compact: the "
                        "first message holds the rules, the seat, the reply instructions and the state; each later "
                        "one the moves since the seat's last turn, the state and the legal actions. turns "
                        "(MARSHAL's structure): headed sections for the rules, the player and the reply format, then "
                        "one numbered block per move of the game: on the seat's own move the state and its legal "
                        "actions; on another player's move the action it chose and, in the board games (nothing "
                        "hidden), the state and legal actions it faced.", "choices": ("compact", "turns")})
    context_tokens: int | None = field(default=None, metadata={"help": "Token budget of one seat's whole "
                                       "conversation (MARSHAL: 32768; give the server at least this "
                                       "max_model_len): a reply after which the prompt and reply tokens leave "
                                       "context_margin tokens or fewer of it loses the game as an over-long act "
                                       "(overlong_sequence). None: no such rule. A reply cut at sampling.max_tokens "
                                       "is over-long either way (overlong_response).", "min": 1})
    context_margin: int = field(default=1000, metadata={"help": "Tokens of context_tokens a reply must leave free "
                                "(MARSHAL: 1000): it loses when prompt + reply tokens >= context_tokens - "
                                "context_margin.", "min": 0})


THINK_START = "<think>\n"  # the forced start of every reply of the think protocol


def response_prefix(fmt: ReplyFormat, legal: list[str]) -> str:
    """The forced reply start for one turn: '<think>' and a newline in the think protocol, else
    `fmt.response_prefix`. A small model rarely writes a well-formed action on its own; forcing the part every legal
    action shares (`{legal_prefix}`) leaves it only the choice between them."""
    if fmt.think:
        return THINK_START
    if "{legal_prefix}" not in fmt.response_prefix:
        return fmt.response_prefix
    return fmt.response_prefix.replace("{legal_prefix}", os.path.commonprefix(legal) if legal else "")


def overlong_reason(reply: Reply, fmt: ReplyFormat) -> str | None:
    """Why `reply` is an over-long act (None: it is not), as MARSHAL rules: it left `context_margin` tokens or fewer
    of `context_tokens` (overlong_sequence; prompt and completion token counts as the endpoint reported them), or it
    was cut at the turn budget (overlong_response: finish_reason 'length')."""
    ctx = fmt.context_tokens
    if ctx is not None and reply.prompt_token_ids is not None and reply.completion_token_ids is not None:
        used = len(reply.prompt_token_ids) + len(reply.completion_token_ids)
        if used >= ctx - fmt.context_margin:
            return (f"over-long: overlong_sequence (prompt {len(reply.prompt_token_ids)} + reply "
                    f"{len(reply.completion_token_ids)} tokens leave {ctx - used} of the {ctx}-token context, "
                    f"at most {fmt.context_margin})")
    if reply.finish_reason == "length":
        return "over-long: overlong_response (cut off at max_tokens)"
    return None


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
# MARSHAL's judge (roll/agentic/rollout/env_manager.py `_parse_response`): the whole reply, `$` allowing one newline
EXACT_THINK_RE = re.compile(r"^<think>(.*?)</think>\s*<answer>(.*?)</answer>$", re.DOTALL)
EXACT_ANSWER_RE = re.compile(r"^<answer>(.*?)</answer>$", re.DOTALL)
EXACT_STRIPPED = ("<think>", "</think>", "<answer>", "</answer>", "<|im_start|>", "<|im_end|>")
ACTION_SEP = "||"  # "A || B" names several actions; only the first is played


def normalize_action(text: str) -> str:
    """The comparison key of an action string: without its surrounding `<>`, whitespace collapsed, case-folded, so
    `<X(0,2)>`, `X(0,2)` and `x(0,2)` name the same move."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return " ".join(text.split()).casefold()


def parse_answer(text: str, legal: list[str], fmt: ReplyFormat) -> tuple[str | None, str | None]:
    """(action, None) for a well-formed reply naming one legal action, else (None, why). `text` is the whole reply,
    its forced start included; `fmt.match` picks the judge (lenient, or MARSHAL's exact one: `parse_exact`)."""
    if fmt.match == "exact":
        return parse_exact(text, legal, think=fmt.think)
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


def parse_exact(text: str, legal: list[str], think: bool) -> tuple[str | None, str | None]:
    """MARSHAL's judge of a whole reply: it must match `^<think>(.*?)</think>\\s*<answer>(.*?)</answer>$` (DOTALL;
    without think `^<answer>(.*?)</answer>$`), so text after the last `</answer>` (beyond one newline) or a missing
    tag is malformed; the answer is the text from the first `<answer>` to the last `</answer>` with every tag
    stripped (so two answers run together and name no action), cut at `||` (the first action is played) and must
    equal a legal action string exactly."""
    m = (EXACT_THINK_RE if think else EXACT_ANSWER_RE).search(text)
    if m is None:
        shape = "<think>...</think><answer>...</answer>" if think else "<answer>...</answer>"
        return None, f"malformed: expected exactly {shape} and nothing after it"
    answer = m.group(2 if think else 1)
    for tag in EXACT_STRIPPED:
        answer = answer.replace(tag, "").strip()
    actions = [a.strip() for a in answer.split(ACTION_SEP) if a.strip()]
    if not actions:
        return None, "malformed: empty <answer>"
    if actions[0] in legal:
        return actions[0], None
    return None, f"illegal: {actions[0][:80]!r} is not a legal action (exact match)"


REGEX_SPECIAL = frozenset("\\.^$|?*+()[]{}")


def regex_literal(text: str) -> str:
    """`text` as a regular expression matching exactly it (only the metacharacters escaped, which every structured
    output backend's regex dialect reads; Python's re.escape also escapes spaces)."""
    return "".join("\\" + c if c in REGEX_SPECIAL else c for c in text)


def think_answer_regex(legal: list[str], max_think_chars: int) -> str:
    """The structured-output regex of a think-protocol reply (after its forced start '<think>' and a newline): at
    most `max_think_chars` characters of reasoning without '<', then `</think><answer>`, one legal action and
    `</answer>`."""
    if not legal:
        raise ValueError("think_answer_regex: no legal actions")
    return (f"[^<]{{0,{int(max_think_chars)}}}</think><answer>(" + "|".join(regex_literal(a) for a in legal)
            + ")</answer>")


CHAT_TEMPLATES = {"chatml": Path(__file__).resolve().parent / "templates" / "chatml_verbatim.jinja"}


def chat_template(name: str) -> str:
    """The text of one of Stratagem's chat templates (`chatml`: ChatML with every message verbatim)."""
    if name not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; expected one of {', '.join(CHAT_TEMPLATES)}")
    return CHAT_TEMPLATES[name].read_text(encoding="utf-8")


@dataclass(frozen=True)
class ReaskRule:
    """How a game that does not forfeit treats a failed act: the seat is asked again `reasks` times, each failed
    attempt a Turn rewarded `penalty`, then its turn passes (the mystery's rule, MIRAGE's re-asks bounded)."""

    reasks: int
    penalty: float


class Game(ABC):
    """One game being played; `reset(seed)` starts a fresh one.

    Besides its seats, a game may have a referee: helper models of the game itself (the mystery's judges, which
    score the statements that decide the vote's outcome, and its history summariser). Their work is due when
    `referee_task()` names it (no seat acts meanwhile: `current_seat()` is None and the game is not over); whoever
    plays the game (the graph, `check_game`) runs `await referee(task, referees)` and hands the record it returns to
    `apply_referee`. The record is game data like a reply, so replaying the replies and records rebuilds the game
    without asking a model again."""

    info: GameInfo
    config: Any  # the game's settings: a GameConfig for the strategic games, the mystery's MysteryConfig
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

    def referee_task(self) -> str | None:
        """The referee's work due now, before any seat acts again or the game ends; None: none (a game without a
        referee never has any)."""
        return None

    async def referee(self, task: str, referees: Mapping[str, Agent]) -> dict[str, Any]:
        """Do `task` with the referee agents (by the role names the game documents); returns the JSON-able record
        that `apply_referee` applies."""
        raise NotImplementedError(f"{self.info.name} has no referee task {task!r}")

    def apply_referee(self, task: str, record: dict[str, Any]) -> None:
        """Apply the record of a referee task (deterministic: a replay applies the same record)."""
        raise NotImplementedError(f"{self.info.name} has no referee task {task!r}")

    def reask_rule(self) -> ReaskRule | None:
        """None: an illegal reply ends the game (the forfeit of the strategic games); else the re-ask rule."""
        return None

    def legal_act_reward(self) -> float:
        """What each legal act earns besides the game's outcome (the strategic games' format bonus)."""
        return float(self.config.rewards.format_bonus)

    def random_reply(self, seat: int, observation: Observation, rng: random.Random) -> Reply:
        """A legal reply of `seat` chosen at random (what `check_game` plays): one legal action in the reply
        protocol, after the forced prefix."""
        full = f"<answer>{rng.choice(observation.legal_actions)}</answer>"
        prefix = observation.response_prefix
        return Reply(text=full[len(prefix):] if full.startswith(prefix) else full)

    def bad_replies(self) -> dict[str, Reply]:
        """Replies the first act must reject (`check_game`), by what is wrong with them."""
        return dict(BAD_REPLIES)


BAD_REPLIES = {
    "illegal string": Reply(text="<answer><NOT A MOVE></answer>"),
    "empty reply": Reply(text=""),
    "two answers": Reply(text="<answer>a</answer><answer>b</answer>"),
    "over-long reply": Reply(text="<answer>", finish_reason="length"),
}
