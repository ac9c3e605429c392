"""`SpielGame`: a Stratagem game whose rules are an OpenSpiel game; subclasses supply only the words (rules text,
action labels, what a seat sees) — OpenSpiel decides legality, chance, termination and returns.

Each seat keeps its own chat: a system line, a first user message (rules, the seat's information, the response
instructions, the first state), then alternately its own replies and a user message per turn (the moves made since
its last turn, the state it may see, the legal actions). The opponent's replies (and reasoning) are never shown.
`ReplyFormat.layout` 'turns' writes the same information as MARSHAL structures it: headed sections, then one
numbered block per move of the game (see `turn_block` and `move_block`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyspiel

from stratagem.games.base import Game, GameConfig, GameInfo, overlong_reason, parse_answer, response_prefix
from stratagem.games.core import Episode, Observation, Reply, Seat, Turn


class SpielGame(Game):
    """Subclasses set `name`, `title`, `spiel_name`, `default_params`, `roles`, and implement `rules`,
    `action_label` and `state_text`."""

    name: str
    title: str
    spiel_name: str
    example_action: str
    default_params: dict[str, Any] = {}
    roles: tuple[str, ...]

    def __init__(self, config: GameConfig | None = None, **params: Any):
        self.config = config or GameConfig()
        unknown = set(params) - set(self.default_params) if self.default_params else set(params)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; expected some of "
                             f"{sorted(self.default_params) or 'none'}")
        self.params = {**self.default_params, **params}
        self.spiel = pyspiel.load_game(self.spiel_name, self.params)
        gtype = self.spiel.get_type()
        self.info = GameInfo(
            name=self.name, num_players=self.spiel.num_players(), roles=self.roles,
            max_turns=self.spiel.max_game_length(), zero_sum=gtype.utility == pyspiel.GameType.Utility.ZERO_SUM,
            cooperative=gtype.utility == pyspiel.GameType.Utility.IDENTICAL,
            perfect_information=gtype.information == pyspiel.GameType.Information.PERFECT_INFORMATION)
        self.reset(0)

    # --- words, supplied per game -------------------------------------------------------------------------------
    def rules(self) -> str:
        raise NotImplementedError

    def seat_info(self, seat: int) -> str:
        """The seat's standing information (who it is, who moves first)."""
        return f"You are {self.roles[seat]} (player {seat}); player 0 moves first."

    def action_label(self, state: pyspiel.State, player: int, action: int) -> str:
        """The exact string of `action` (with its angle brackets) shown to and expected from the model."""
        raise NotImplementedError

    def state_text(self, state: pyspiel.State, seat: int) -> str:
        """What `seat` may see of `state`. Must depend only on that seat's information (checked by check_game)."""
        raise NotImplementedError

    def player_info(self, seat: int) -> str:
        """Who the seat is and who it plays with (the turns layout's player section)."""
        others = ", ".join(f"{self.roles[o]} (player {o})" for o in range(self.info.num_players) if o != seat)
        return f"{self.seat_info(seat)} The other player is {others}."

    def example(self, seat: int | None = None) -> str:
        """A real action of the game in the right format, shown in the reply instruction (small models copy it);
        `seat`'s own form of it where actions name the mover (board games)."""
        return self.example_action

    def system_line(self, seat: int) -> str:
        return f"You are an expert player of {self.title}. Think about your opponent and play to win."

    # --- the state protocol -------------------------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.state = self.spiel.new_initial_state()
        self.turns: list[Turn] = []
        self.forfeit: int | None = None
        self._last_turn: dict[int, Turn] = {}  # each seat's most recent turn, where step rewards are credited
        self._history: list[list[dict[str, str]]] = [[] for _ in range(self.info.num_players)]
        self._events: list[list[str]] = [[] for _ in range(self.info.num_players)]
        self._advance_chance()

    def _advance_chance(self) -> None:
        while self.state.is_chance_node():
            outcomes, probs = zip(*self.state.chance_outcomes())
            self.state.apply_action(int(self._rng.choice(outcomes, p=np.asarray(probs) / sum(probs))))

    def current_seat(self) -> int | None:
        if self.is_over():
            return None
        return self.state.current_player()

    def is_over(self) -> bool:
        return self.forfeit is not None or self.state.is_terminal()

    def legal_actions(self, seat: int) -> dict[str, int]:
        """Label -> OpenSpiel action id, in OpenSpiel's order."""
        return {self.action_label(self.state, seat, a): a for a in self.state.legal_actions(seat)}

    def instructions(self, seat: int | None = None) -> str:
        if self.config.reply.think:
            return ("Your reply starts inside an opened <think> block: think there step by step but briefly, close "
                    "it with </think>, then write exactly one of the legal actions, character for character as "
                    "listed, inside <answer>...</answer> and nothing after it, e.g. "
                    f"<think>...</think><answer>{self.example(seat)}</answer>. A reply in any other form ends the "
                    "game as your loss.")
        return f"Reply with exactly one legal action inside <answer>...</answer>, e.g. <answer>{self.example_action}</answer>."

    def turn_text(self, seat: int) -> str:
        if self.config.reply.layout == "turns":
            return "\n\n".join([*self._events[seat], self.turn_block(seat)])
        legal = ", ".join(self.legal_actions(seat))
        parts = list(self._events[seat])
        parts.append(self.state_text(self.state, seat))
        parts.append(f"Legal actions: {legal}")
        return "\n".join(parts)

    def turn_block(self, seat: int) -> str:
        """The turns layout's block of the seat's own move: its number, the state the seat sees, the legal actions."""
        return (f"Turn {len(self.turns) + 1}: your move.\n{self.state_text(self.state, seat)}\n"
                f"Legal actions: {', '.join(self.legal_actions(seat))}\n"
                "Choose one of them and reply in the format given above.")

    def move_block(self, mover: int, viewer: int, action: str, legal: list[str]) -> str:
        """What `viewer` learns of `mover`'s move (called before the move is applied): in the compact layout one
        line; in the turns layout a numbered block with the chosen action and, when nothing is hidden (board
        games), the state and legal actions the mover faced."""
        who = f"{self.roles[mover]} (player {mover})"
        if self.config.reply.layout != "turns":
            return f"{who} chose {action}."
        head = f"Turn {len(self.turns)}: {who} moved."  # the mover's Turn is already recorded
        if self.info.perfect_information:
            return (f"{head}\nWhat it faced:\n{self.state_text(self.state, viewer)}\n"
                    f"Its legal actions: {', '.join(legal)}\nIt chose: {action}")
        return f"{head} What it saw is hidden from you.\nIt chose: {action}"

    def first_message(self, seat: int) -> str:
        """The first user message of the seat's chat."""
        if self.config.reply.layout == "turns":
            rules = self.rules().removeprefix("Rules: ")
            return (f"Rules:\n{rules}\n\nYou:\n{self.player_info(seat)}\n\nReply format:\n"
                    f"{self.instructions(seat)}\n\n{self.turn_text(seat)}")
        return f"{self.rules()}\n\n{self.seat_info(seat)}\n\n{self.instructions(seat)}\n\n{self.turn_text(seat)}"

    def observe(self, seat: int) -> Observation:
        if seat != self.current_seat():
            raise ValueError(f"{self.name}: seat {seat} asked to act but seat {self.current_seat()} is to move")
        if not self._history[seat]:
            messages = [{"role": "system", "content": self.system_line(seat)},
                        {"role": "user", "content": self.first_message(seat)}]
        else:
            messages = [*self._history[seat], {"role": "user", "content": self.turn_text(seat)}]
        legal = list(self.legal_actions(seat))
        return Observation(game=self.name, seat=seat, role=self.roles[seat], phase="play", messages=messages,
                           legal_actions=legal, response_prefix=response_prefix(self.config.reply, legal),
                           private={"state": self.state.clone(), "spiel": self.spiel, "seed": self.seed,
                                    "turn": len(self.turns)})

    def _judge(self, reply: Reply, legal: list[str]) -> tuple[str | None, str | None]:
        over = overlong_reason(reply, self.config.reply)
        if over is not None:
            return None, over
        if reply.action is not None:
            return (reply.action, None) if reply.action in legal else (None, f"illegal: {reply.action!r}")
        return parse_answer(response_prefix(self.config.reply, legal) + reply.text, legal, self.config.reply)

    def step(self, seat: int, reply: Reply) -> Turn:
        obs = self.observe(seat)
        legal = self.legal_actions(seat)
        action, why = self._judge(reply, list(legal))
        rewards = self.config.rewards
        response = (obs.response_prefix + reply.text) if reply.action is None else reply.text
        reward = rewards.format_bonus if why is None else 0.0
        if reply.completion_token_ids is not None:
            reward += rewards.length_reward(len(reply.completion_token_ids))
        turn = Turn.from_reply(reply, seat=seat, role=self.roles[seat], phase="play", messages=obs.messages,
                               response=response, action=action, illegal_reason=why, reward=reward)
        self.turns.append(turn)
        self._last_turn[seat] = turn
        self._history[seat] = [*obs.messages, {"role": "assistant", "content": response}]
        self._events[seat] = []
        if why is not None:
            self.forfeit = seat
            self.credit_step(seat, self.forfeit_rewards(seat))
            return turn
        assert action is not None  # _judge gives an action exactly when it gives no reason
        seen = {other: self.move_block(seat, other, action, list(legal))
                for other in range(self.info.num_players) if other != seat}
        self.state.apply_action(legal[action])
        for other, block in seen.items():
            self._events[other].append(block)
        self._advance_chance()
        self.credit_step(seat, self.step_rewards())
        return turn

    # --- rewards (MARSHAL's) -----------------------------------------------------------------------------------
    zero_terminal_bonus = True  # a zero terminal reward becomes rewards.draw (board games, Hanabi; not poker)

    def step_rewards(self) -> list[float]:
        """The rules engine's rewards for the step just applied (board games and poker: the returns at the end;
        Hanabi: +1 per card played, minus the score when the last life is lost)."""
        r = [float(x) for x in self.state.rewards()]
        if self.state.is_terminal() and self.zero_terminal_bonus:
            r = [self.config.rewards.draw if x == 0 else x for x in r]
        return r

    def normal_loss(self, seat: int) -> float:
        """What `seat` loses in a lost game, before the forfeit penalty (board games: the loss of 1)."""
        return -float(self.spiel.min_utility())

    def forfeit_rewards(self, seat: int) -> list[float]:
        """An illegal act ends the game: the offender gets -(normal loss) - penalty, every other seat 0."""
        out = [0.0] * self.info.num_players
        out[seat] = -self.normal_loss(seat) - self.config.rewards.illegal_penalty
        return out

    def credit_step(self, actor: int, step_rewards: list[float]) -> None:
        """The one place rewards of a step are credited: the actor's current turn and every other seat's most
        recent turn (a seat that has not acted yet gets nothing, as in MARSHAL)."""
        for s, r in enumerate(step_rewards):
            if r and s in self._last_turn:
                self._last_turn[s].reward += r

    def information_key(self, seat: int) -> str | None:
        if self.info.perfect_information:
            return None
        if self.spiel.get_type().provides_information_state_string:
            return self.state.information_state_string(seat)
        return self.state.observation_string(seat)

    def visible_state(self, seat: int) -> str:
        return self.state_text(self.state, seat) + "\n" + ", ".join(self.legal_actions(seat))

    def raw_returns(self) -> list[float]:
        return [float(r) for r in self.state.returns()]

    def winners(self) -> list[int]:
        n = self.info.num_players
        if self.forfeit is not None:
            return [] if self.info.cooperative else [s for s in range(n) if s != self.forfeit]
        raw = self.raw_returns()
        if self.info.cooperative:
            return list(range(n)) if raw[0] >= self.spiel.max_utility() else []
        return [s for s in range(n) if raw[s] > 0]

    def episode(self, seats: list[Seat]) -> Episode:
        if not self.is_over():
            raise ValueError(f"{self.name}: episode() called before the game ended")
        returns = [sum(t.reward for t in self.turns if t.seat == s) for s in range(self.info.num_players)]
        return Episode(game=self.name, seed=self.seed, seats=seats, turns=list(self.turns), returns=returns,
                       winners=self.winners(), end_reason="terminal" if self.forfeit is None else "illegal",
                       params=dict(self.params), metrics={"raw_returns": self.raw_returns()})
