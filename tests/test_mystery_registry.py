"""The mystery is one entry of the game registry and passes its conformance check."""

import pytest

from stratagem.games.mystery.conformance import RandomPlayer, check_mystery
from stratagem.games.registry import get_game_spec, make_game
from stratagem.games.testing import ConformanceError


def test_registered_and_made_by_name():
    spec = get_game_spec("mystery")
    assert spec.kind == "social" and not spec.training and spec.app == "stratagem.games.mystery.graph:app"
    g = make_game("mystery", script="night_express", seed=3)
    assert g.script.name == "night_express" and g.state.seed == 3
    with pytest.raises(ValueError, match="unknown mystery parameters"):
        make_game("mystery", players=4)


def test_conformance_check_passes(tmp_path):
    rep = get_game_spec("mystery").check(tmp_path)
    assert rep.episodes == 6 and rep.max_turns_seen > 0 and (tmp_path / "mystery.jsonl").exists()


def test_conformance_check_catches_a_leak(monkeypatch):
    import stratagem.games.mystery.game as game_mod

    real = game_mod.MysteryGame.observation

    def leaky(self, retry_reason=None):
        obs = real(self, retry_reason)
        obs.messages[-1]["content"] += "\n" + self.script.truth
        return obs

    monkeypatch.setattr(game_mod.MysteryGame, "observation", leaky)
    with pytest.raises(ConformanceError, match="saw hidden text"):
        check_mystery(scripts=["lighthouse"], games=1)
    assert RandomPlayer(0).name == "random"
