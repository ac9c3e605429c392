"""Perfect-information board games: tic-tac-toe and connect four (rules by OpenSpiel). Each turn shows the whole
board, since nothing is hidden."""

from __future__ import annotations

import pyspiel

from stratagem.games.strategic.spiel import SpielGame


def _board(state: pyspiel.State) -> str:
    return state.observation_string(0).strip("\n")


class _BoardGame(SpielGame):
    """Two players, X and O, whose actions name the mover's mark."""

    roles = ("X", "O")

    def seat_info(self, seat: int) -> str:
        return f"You play {self.roles[seat]}" + (" and move first." if seat == 0 else "; X moves first.")

    def example(self, seat: int | None = None) -> str:
        """example_action with `seat`'s own mark (<O(1,1)> for O): a copied example is then a legal form."""
        return self.example_action if seat is None else self.example_action.replace("X", self.roles[seat], 1)


class TicTacToe(_BoardGame):
    name = "tictactoe"
    title = "Tic-Tac-Toe"
    spiel_name = "tic_tac_toe"
    example_action = "<X(1,1)>"  # a concrete action in the right format: small models copy the example

    def rules(self) -> str:
        return ("Rules: Tic-Tac-Toe is played on a 3x3 grid by two players, X and O, who take turns; X moves first. "
                "A move marks one empty cell, named by its (row,column), both counted from 0 at the top left: "
                "<X(0,2)> puts an X in the top-right cell. The first player with three marks in a row, column or "
                "diagonal wins; a full board with no such line is a draw.")

    def action_label(self, state: pyspiel.State, player: int, action: int) -> str:
        # OpenSpiel writes "x(0,2)"
        return "<" + state.action_to_string(player, action).upper() + ">"

    def state_text(self, state: pyspiel.State, seat: int) -> str:
        return f"Board (rows top to bottom, '.' is empty):\n{_board(state)}"


class ConnectFour(_BoardGame):
    name = "connect_four"
    title = "Connect Four"
    spiel_name = "connect_four"
    example_action = "<X(3)>"  # a concrete action in the right format: small models copy the example

    def rules(self) -> str:
        return ("Rules: Connect Four is played on a vertical grid of 6 rows and 7 columns by two players, X and O, "
                "who take turns; X moves first. A move drops a disc into a column that is not full, named by its "
                "number from 0 (left) to 6 (right): <X(3)> drops an X into the middle column; the disc falls to the "
                "lowest empty cell. The first player with four discs in a row horizontally, vertically or "
                "diagonally wins; a full grid with no such line is a draw.")

    def action_label(self, state: pyspiel.State, player: int, action: int) -> str:
        # OpenSpiel writes "x3"
        s = state.action_to_string(player, action)
        return f"<{s[0].upper()}({s[1:]})>"

    def state_text(self, state: pyspiel.State, seat: int) -> str:
        return f"Board (top row first, bottom row last, columns 0 to 6, '.' is empty):\n{_board(state)}"
