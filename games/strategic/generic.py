"""Any sequential two-player OpenSpiel game by its OpenSpiel name, with the rules in the user's words:
`register_spiel_game("liars_dice", rules="...")` makes it a registered game like the built-in ones (play, train,
evaluate, conformance check).

What a seat sees is OpenSpiel's own text of its information (the information-state string where the game has
hidden information and provides one, else its observation string, else the whole state of a perfect-information
game); an action is OpenSpiel's string for it in angle brackets (`<1-2>`). Generic words are weaker prompts than a
built-in game's hand-written ones; subclass `SpielGame` for those.
"""

from __future__ import annotations

from typing import Any

import pyspiel

from stratagem.games.registry import GameSpec, register_game
from stratagem.games.strategic import build_graph, rollout
from stratagem.games.strategic.spiel import SpielGame


def action_text(state: pyspiel.State, player: int, action: int) -> str:
    """OpenSpiel's string for `action` as a Stratagem action: in angle brackets, with none inside."""
    return "<" + state.action_to_string(player, action).replace("<", "(").replace(">", ")").strip() + ">"


class GenericSpielGame(SpielGame):
    """A SpielGame whose words come from OpenSpiel (see the module docstring); `register_spiel_game` makes one
    subclass per game."""

    roles = ("player_0", "player_1")
    rules_text = ""

    def rules(self) -> str:
        return self.rules_text

    def action_label(self, state: pyspiel.State, player: int, action: int) -> str:
        return action_text(state, player, action)

    def state_text(self, state: pyspiel.State, seat: int) -> str:
        gtype = self.spiel.get_type()
        if gtype.information == pyspiel.GameType.Information.PERFECT_INFORMATION:
            return f"The state:\n{state}"
        if gtype.provides_information_state_string:
            return f"What you know: {state.information_state_string(seat)}"
        return f"What you see: {state.observation_string(seat)}"


def _example(game: pyspiel.Game) -> str:
    """A legal first action of the game (after the chance outcomes OpenSpiel lists first), in the action format."""
    state = game.new_initial_state()
    while state.is_chance_node():
        state.apply_action(state.chance_outcomes()[0][0])
    player = state.current_player()
    return action_text(state, player, state.legal_actions(player)[0])


def register_spiel_game(spiel_name: str, *, rules: str, name: str | None = None, title: str | None = None,
                        params: dict[str, Any] | None = None, training: bool = False, help: str = "",
                        replace: bool = False) -> GameSpec:
    """Register OpenSpiel's `spiel_name` (with OpenSpiel `params`) as the strategic game `name` (default: the
    OpenSpiel name) whose rules text is `rules`. Only sequential two-player games: a simultaneous-move or N-player
    game is refused here."""
    if not rules.strip():
        raise ValueError(f"{spiel_name}: give the rules in words (rules=...): the model plays from them")
    game = pyspiel.load_game(spiel_name, dict(params or {}))
    gtype = game.get_type()
    if game.num_players() != 2:
        raise ValueError(f"{spiel_name}: {game.num_players()} players; only two-player games are supported")
    if gtype.dynamics != pyspiel.GameType.Dynamics.SEQUENTIAL:
        raise ValueError(f"{spiel_name}: simultaneous moves are not supported (one seat acts at a time)")
    name = name or spiel_name
    cls = type(f"Spiel_{name}", (GenericSpielGame,), {
        "name": name, "title": title or gtype.long_name, "spiel_name": spiel_name,
        "default_params": dict(params or {}), "example_action": _example(game), "rules_text": rules.strip()})
    spec = GameSpec(name=name, kind="strategic", factory=cls, build_graph=build_graph, rollout=rollout,
                    training=training, help=help or f"{gtype.long_name} (OpenSpiel's {spiel_name}, generic words).")
    return register_game(spec, replace=replace)
