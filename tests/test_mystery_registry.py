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


def test_the_mystery_is_a_game_and_passes_check_game_under_both_protocols():
    """The one conformance check of every game (games.testing.check_game) plays the mystery: its judges run as the
    game's referee, its failed acts follow the re-ask rule; under mirage the history summariser runs too."""
    from stratagem.games.base import Game
    from stratagem.games.mystery.conformance import FixedJudge
    from stratagem.games.mystery.game import MysteryConfig
    from stratagem.games.mystery.mystery import Mystery
    from stratagem.games.testing import check_game

    refs = {"judge": FixedJudge()}
    g = make_game("mystery", MysteryConfig(rounds=1), script="lighthouse")
    assert isinstance(g, Game) and g.info.num_players == len(g.script.characters)
    rep = check_game(g, episodes=3, referees=refs)
    assert rep.episodes == 3 and 0 < rep.max_turns_seen <= g.info.max_turns
    tiny_history = MysteryConfig.mirage(rounds=1, summary_tokens=None, history_tokens=60)
    m = Mystery.deal("lighthouse", 0, tiny_history, count_tokens=lambda text: len(text.split()))
    asked = []

    class Summariser(FixedJudge):
        async def act(self, obs):
            asked.append(obs.phase)
            return await super().act(obs)

    assert check_game(m, episodes=2, referees={**refs, "summariser": Summariser()}).episodes == 2
    assert asked and set(asked) == {"summarise_history"}, "the history passed 60 tokens: the summariser must run"


def test_check_game_catches_a_mystery_that_breaks_its_re_ask_rule():
    from stratagem.games.base import ReaskRule
    from stratagem.games.mystery.conformance import FixedJudge
    from stratagem.games.mystery.game import MysteryConfig
    from stratagem.games.mystery.mystery import Mystery
    from stratagem.games.testing import check_game

    class Promises(Mystery):  # says it re-asks three times; the rules (max_reasks 1) pass the turn after one
        def reask_rule(self):
            return ReaskRule(reasks=3, penalty=self.config.failed_action_penalty)

    g = Promises.deal("lighthouse", 0, MysteryConfig(rounds=1))
    with pytest.raises(ConformanceError, match="was not asked again after 2 failed attempt"):
        check_game(g, episodes=1, referees={"judge": FixedJudge()})


async def test_referee_records_live_in_the_graph_state_and_replay_without_a_model():
    """Through the games' one graph the judge's verdict is a record among the acts: replaying the acts onto a fresh
    game reaches the judged end and the same returns, with no referee to ask."""
    from stratagem.games.graph import GraphConfig, build_graph, initial_state, replay
    from stratagem.games.mystery.conformance import FixedJudge
    from stratagem.games.mystery.game import MysteryConfig
    from stratagem.games.mystery.mystery import Mystery

    cfg = MysteryConfig(rounds=1)
    game = Mystery.deal("lighthouse", 0, cfg)
    players = [RandomPlayer(i) for i in range(game.info.num_players)]
    graph = build_graph(game, players, GraphConfig(seed=4, episode_in_state=True), referees={"judge": FixedJudge()})
    out = await graph.ainvoke(initial_state())
    judged = [a for a in out["acts"] if "referee" in a]
    assert [a["referee"] for a in judged] == ["judge"] and out["acts"][-1] is judged[0] or out["acts"][-1] == judged[0]
    again = replay(Mystery.deal("lighthouse", 0, cfg), 4, out["acts"])
    assert again.is_over() and again.raw_returns() == game.raw_returns()
    assert out["returns"] == out["episode"]["returns"] and len(out["episode"]["turns"]) == len(out["acts"]) - 1
