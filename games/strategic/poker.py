"""Imperfect-information poker: Kuhn and Leduc (rules by OpenSpiel). A seat sees its own card, the public card
(Leduc, once dealt), the betting so far and the chips in the pot; never the opponent's card."""

from __future__ import annotations

import re

import pyspiel

from stratagem.games.strategic.spiel import SpielGame

KUHN_CARDS = "JQK"
LEDUC_STACK = 100  # OpenSpiel's fixed starting stack; "Money" is what is left of it
LEDUC_WORDS = {0: "folded", 1: "called", 2: "raised"}


class KuhnPoker(SpielGame):
    name = "kuhn_poker"
    title = "Kuhn Poker"
    spiel_name = "kuhn_poker"
    example_action = "<PASS>"  # a concrete action in the right format: small models copy the example
    roles = ("player_0", "player_1")
    zero_terminal_bonus = False

    def normal_loss(self, seat: int) -> float:
        """The seat's chips in the pot: the ante plus its bets (MARSHAL's forfeit: -(own bet) - 10)."""
        moves = self.state.history()[2:]  # after the two deals, players alternate starting with player 0
        return 1.0 + sum(a for i, a in enumerate(moves) if i % 2 == seat)

    def rules(self) -> str:
        return ("Rules: Kuhn Poker is played with three cards, J < Q < K. Each of two players antes 1 chip and is "
                "dealt one card that the other cannot see. The players act in turn, player 0 first, and every "
                "action is one of two: <PASS> (add no chip) or <BET> (add 1 chip). Facing a bet, <BET> matches it "
                "(a call) and <PASS> gives the pot up (a fold). If both players pass, or a bet is matched, the "
                "higher card wins the pot at the showdown.")

    def action_label(self, state: pyspiel.State, player: int, action: int) -> str:
        """MARSHAL's names, the same in every situation: OpenSpiel's 0 is <PASS> (check or fold), 1 is <BET> (bet
        or call)."""
        return "<BET>" if action == 1 else "<PASS>"

    def state_text(self, state: pyspiel.State, seat: int) -> str:
        info = state.information_state_string(seat)  # e.g. "2pb": own card, then p(ass)/b(et) per move
        card, moves = KUHN_CARDS[int(info[0])], info[1:]
        betting = ", ".join(f"player {i % 2} {'bet' if m == 'b' else 'passed'}" for i, m in enumerate(moves))
        pot = 2 + moves.count("b")
        return f"Your card: {card}. Betting so far: {betting or 'none'}. Pot: {pot} chips."


class LeducPoker(SpielGame):
    name = "leduc_poker"
    title = "Leduc Hold'em"
    spiel_name = "leduc_poker"
    example_action = "<CALL>"
    roles = ("player_0", "player_1")
    zero_terminal_bonus = False

    def normal_loss(self, seat: int) -> float:
        """The seat's chips in the pot (MARSHAL's forfeit: -(own bet) - 10)."""
        info = self.state.information_state_string(seat)
        found = re.search(r"\[Money: ([^\]]*)\]", info)
        if found is None:
            raise ValueError(f"{self.name}: no [Money: ...] in seat {seat}'s information state {info!r}")
        money = found.group(1).split()
        return float(LEDUC_STACK - int(money[seat]))

    def rules(self) -> str:
        return ("Rules: Leduc Hold'em is played with six cards: two each of J < Q < K. Each of two players antes 1 "
                "chip and is dealt one private card. There are two betting rounds; after the first, one public card "
                "is dealt face up. In each round a player may <FOLD> (give up the pot), <CALL> (match the current "
                "bet, or check when there is none) or <RAISE> (2 chips in round 1, 4 in round 2; at most two raises "
                "per round). At the showdown a player whose card pairs the public card wins; otherwise the higher "
                "card wins; equal cards split the pot.")

    def action_label(self, state: pyspiel.State, player: int, action: int) -> str:
        return "<" + state.action_to_string(player, action).upper() + ">"

    def state_text(self, state: pyspiel.State, seat: int) -> str:
        info = state.information_state_string(seat)
        fields = dict(re.findall(r"\[(\w+\d?): ?([^\]]*)\]", info))
        card = KUHN_CARDS[int(fields["Private"]) // 2]
        public = fields.get("Public")
        public_text = KUHN_CARDS[int(public) // 2] if public not in (None, "") else "not dealt yet"
        money = [int(x) for x in fields["Money"].split()]
        chips = [LEDUC_STACK - m for m in money]
        rounds = []
        for r in ("Round1", "Round2"):
            acts = [int(a) for a in fields.get(r, "").split()]
            if acts:
                rounds.append(f"{r[:-1].lower()} {r[-1]}: " +
                              ", ".join(f"player {i % 2} {LEDUC_WORDS[a]}" for i, a in enumerate(acts)))
        return (f"Your card: {card}. Public card: {public_text}. Betting so far: {'; '.join(rounds) or 'none'}. "
                f"Chips in the pot: you {chips[seat]}, opponent {chips[1 - seat]}.")
