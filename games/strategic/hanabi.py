"""Cooperative Hanabi in two sizes (rules by OpenSpiel's Hanabi Learning Environment): `mini_hanabi` for training,
`simple_hanabi` held out. A seat sees its partner's cards and what it was told about its own, never its own cards."""

from __future__ import annotations

import pyspiel

from stratagem.games.strategic.spiel import SpielGame

COLOR_NAMES = {"R": "red", "Y": "yellow", "G": "green", "W": "white", "B": "blue"}


class Hanabi(SpielGame):
    spiel_name = "hanabi"
    example_action = "<Play card 0>"  # a concrete action in the right format: small models copy the example
    roles = ("player_0", "player_1")

    def normal_loss(self, seat: int) -> float:
        """The score so far (MARSHAL's forfeit: -(current score) - 10)."""
        return float(self.state.returns()[seat])

    def system_line(self, seat: int) -> str:
        return f"You are an expert player of {self.title}, a cooperative game. Work with your partner to score."

    def rules(self) -> str:
        p = self.params
        colors = ", ".join(f"{c} ({COLOR_NAMES[c]})" for c in "RYGWB"[: p["colors"]])
        return (f"Rules: Hanabi is a cooperative card game for two players. The deck has {p['colors']} colors "
                f"[{colors}] and ranks 1 to {p['ranks']}. Each player holds {p['hand_size']} cards facing outward: "
                "you see your partner's cards but not your own. Together you build one firework per color, playing "
                "its cards in rank order starting at 1. On your turn do one of: <Play card i> (play your card in "
                "slot i; if it is the next rank of its color it extends that firework and scores 1 point, otherwise "
                "you lose a life token and it is discarded), <Discard card i> (discard it to regain an information "
                "token; not allowed when all tokens are available), or spend an information token to tell your "
                "partner which of their cards have one color (<Reveal player +1 color R>) or one rank (<Reveal "
                f"player +1 rank 1>). You start with {p['max_information_tokens']} information tokens and "
                f"{p['max_life_tokens']} life tokens; losing all lives ends the game with 0 points. The game also "
                "ends when every firework is complete, or once each player has had one more turn after the deck "
                "runs out. Each card played scores 1 point for "
                "both of you.")

    def seat_info(self, seat: int) -> str:
        return f"You are player {seat}; player 0 moves first. Your partner is player {1 - seat}."

    def player_info(self, seat: int) -> str:
        return f"{self.seat_info(seat)} You see your partner's cards, never your own."

    def action_label(self, state: pyspiel.State, player: int, action: int) -> str:
        # OpenSpiel writes "(Play 0)", "(Discard 1)", "(Reveal player +1 color R)"
        s = state.action_to_string(player, action).strip("()")
        verb, _, rest = s.partition(" ")
        return f"<{verb} card {rest}>" if verb in ("Play", "Discard") else f"<{s}>"

    def state_text(self, state: pyspiel.State, seat: int) -> str:
        return ("Game state (hands: your hand first, then your partner's after '-----'; each card is shown as "
                "CARD || KNOWLEDGE, where your own cards show as XX and KNOWLEDGE lists what that card's holder was "
                "told and the colors and ranks it may still be; slots are numbered from 0 at the top):\n"
                + state.observation_string(seat).strip())


class MiniHanabi(Hanabi):
    name = "mini_hanabi"
    title = "Hanabi (mini)"
    default_params = {"players": 2, "colors": 2, "ranks": 2, "hand_size": 3, "max_information_tokens": 3,
                      "max_life_tokens": 3}


class SimpleHanabi(Hanabi):
    name = "simple_hanabi"
    title = "Hanabi (simple)"
    default_params = {"players": 2, "colors": 3, "ranks": 2, "hand_size": 5, "max_information_tokens": 8,
                      "max_life_tokens": 3}
