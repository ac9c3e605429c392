"""`stratagem play`: summaries, JSONL, transcripts, determinism, and the hand-over to `play mystery`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stratagem.cli import app
from stratagem.games.core import read_jsonl
from stratagem.games.registry import GAME_NAMES

runner = CliRunner()


def _play(*args: str) -> dict:
    res = runner.invoke(app, ["play", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_mcts_beats_random_at_tictactoe(tmp_path):
    out = _play("tictactoe", "--players", "mcts:100,random", "--episodes", "20", "--out", str(tmp_path / "e.jsonl"))
    assert out["seats"][0]["wins"] >= 16 and out["episodes"] == 20
    assert len(list(read_jsonl(tmp_path / "e.jsonl"))) == 20


@pytest.mark.parametrize("game", GAME_NAMES)
def test_random_play_of_every_game(game, tmp_path):
    out = _play(game, "--players", "random,random", "--episodes", "5", "--out", str(tmp_path / "e.jsonl"))
    seats = out["seats"]
    assert out["game"] == game and out["illegal_move_rate"] == 0.0 and out["mean_turns"] >= 1
    assert all(s["wins"] + s["draws"] + s["losses"] == 5 for s in seats)


def test_same_seed_same_episodes_and_a_transcript(tmp_path):
    a = _play("connect_four", "--players", "mcts:10,random", "--episodes", "3", "--seed", "7",
              "--out", str(tmp_path / "a.jsonl"), "--transcript", str(tmp_path / "t.txt"))
    _play("connect_four", "--players", "mcts:10,random", "--episodes", "3", "--seed", "7",
          "--out", str(tmp_path / "b.jsonl"))
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    text = (tmp_path / "t.txt").read_text()
    assert text.startswith("# connect_four seed 7") and "-> <X(" in text and a["seed"] == 7


def test_bad_players_are_rejected():
    res = runner.invoke(app, ["play", "tictactoe", "--players", "random"])
    assert res.exit_code != 0 and "needs 2" in res.output
    res = runner.invoke(app, ["play", "kuhn_poker", "--players", "mcts:10,random"])
    assert res.exit_code != 0 and "hidden information" in res.output


def test_play_mystery_hands_over_with_its_options(monkeypatch):
    import stratagem.games.mystery.cli as mystery_cli

    seen = {}
    monkeypatch.setattr(mystery_cli, "play_mystery", lambda **kw: seen.update(kw) or {})
    res = runner.invoke(app, ["play", "mystery", "--script", "orchid_gala", "--rounds", "1", "--episodes", "2",
                              "--base-url", "http://127.0.0.1:9/v1", "--judge", "iter-1"])
    assert res.exit_code == 0, res.output
    assert seen["script"] == "orchid_gala" and seen["rounds"] == 1 and seen["episodes"] == 2
    assert seen["judge"] == "iter-1" and seen["players"] == "base" and seen["base_url"] == "http://127.0.0.1:9/v1"


def test_a_human_plays_at_the_console(tmp_path):
    moves = "\n".join(["<X(0,0)>", "X(0,1)", "<X(0,2)>", "<X(1,0)>", "<X(1,1)>", "<X(1,2)>", "<X(2,0)>",
                       "<X(2,1)>", "<X(2,2)>"]) + "\n"
    res = runner.invoke(app, ["play", "tictactoe", "--players", "human,random", "--out", str(tmp_path / "h.jsonl"),
                              "--json"], input=moves)
    assert res.exit_code == 0, res.output
    (ep,) = list(read_jsonl(tmp_path / "h.jsonl"))
    human = ep.seat_turns(0)
    assert human[0].action == "<X(0,0)>" and ep.seats[0].agent == "human"
    # the human answered each prompt in turn; any occupied cell is an illegal move that ends the game
    assert all(t.legal for t in human[:-1])
