"""Held-out game evaluation offline: the normalized return on hand-made episodes, the opponent choice, and a full run
with bots in the model's seat."""

from __future__ import annotations

import json

import pytest

from stratagem.games.core import Episode
from stratagem.integrations import games_eval
from stratagem.integrations.games_eval import GamesEvalConfig, normalized_return, opponent_for, run_games_eval


def _episode(raw, winners, end_reason="terminal"):
    return Episode(game="g", seed=0, seats=[], turns=[], returns=[0.0, 0.0], winners=winners, end_reason=end_reason,
                   metrics={"raw_returns": raw})


def test_normalized_return_worked_examples():
    # leduc-like utility range [-13, 13]: winning 3 chips is (3 + 13) / 26
    assert normalized_return(_episode([3.0, -3.0], [0]), 0, -13, 13, False) == pytest.approx(16 / 26)
    assert normalized_return(_episode([3.0, -3.0], [0]), 1, -13, 13, False) == pytest.approx(10 / 26)
    # connect four: loss 0, draw 0.5, win 1
    assert normalized_return(_episode([0.0, 0.0], []), 0, -1, 1, False) == 0.5
    # an illegal move ends the game: 0 for the offender, 1 for the other, whatever the engine says
    ep = _episode([0.0, 0.0], [1], end_reason="illegal")
    assert normalized_return(ep, 0, -1, 1, False) == 0.0 and normalized_return(ep, 1, -1, 1, False) == 1.0
    # cooperative: score over the best score
    assert normalized_return(_episode([3.0, 3.0], []), 0, 0, 6, True) == 0.5


def test_opponent_for():
    cfg = GamesEvalConfig(opponent="auto", mcts_simulations=7)
    assert opponent_for(cfg, "connect_four", True) == "mcts:7"
    assert opponent_for(cfg, "leduc_poker", False) == "cfr"
    cfg = GamesEvalConfig(opponent="connect_four=mcts:3, leduc_poker=random")
    assert opponent_for(cfg, "connect_four", True) == "mcts:3" and opponent_for(cfg, "leduc_poker", False) == "random"
    with pytest.raises(ValueError, match="names no opponent for tictactoe"):
        opponent_for(cfg, "tictactoe", True)
    with pytest.raises(ValueError, match="MCTS needs perfect information"):
        opponent_for(GamesEvalConfig(opponent="mcts:5"), "leduc_poker", False)


async def test_run_games_eval_with_bots(monkeypatch, tmp_path):
    from stratagem.agents import make_agent

    real = games_eval._agent
    monkeypatch.setattr(games_eval, "_agent", lambda spec, cfg, game, seed: make_agent("random", seed=seed)
                        if spec.startswith("llm:") else real(spec, cfg, game, seed))
    cfg = GamesEvalConfig(models=["base"], games=["connect_four", "leduc_poker", "simple_hanabi"],
                          opponent="connect_four=mcts:2,leduc_poker=random", episodes=2, out=str(tmp_path))
    result = await run_games_eval(cfg)
    games = result["models"]["base"]
    assert set(games["connect_four"]) == {"first", "second"} and set(games["simple_hanabi"]) == {"team"}
    assert games["connect_four"]["first"]["opponent"] == "mcts:2"
    assert games["leduc_poker"]["second"]["opponent"] == "random"
    assert games["simple_hanabi"]["team"]["opponent"] == "llm:base"
    for seats in games.values():
        for s in seats.values():
            assert s["n"] == 2 and 0.0 <= s["normalized_return"] <= 1.0 and 0.0 <= s["win_rate"] <= 1.0
    lines = (tmp_path / "base" / "connect_four-first.jsonl").read_text().splitlines()
    assert len(lines) == 2 and Episode.from_dict(json.loads(lines[0])).game == "connect_four"
    assert json.loads((tmp_path / "summary.json").read_text()) == result


def test_cli_eval_games_rejects_impossible_opponent_before_playing():
    from typer.testing import CliRunner

    from stratagem.cli import app

    r = CliRunner().invoke(app, ["eval", "games", "--games", "leduc_poker", "--opponent", "mcts:5", "--base-url",
                                 "http://127.0.0.1:9/v1"])
    assert r.exit_code == 1 and "MCTS needs perfect information" in r.output
