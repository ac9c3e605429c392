"""The before/after table a run prints: one row per seat order and one with the seat orders pooled."""

from __future__ import annotations

from stratagem.training.compare import comparison_rows


def _seat(nr, sd, wins, illegal, turns, n=10):
    return {"n": n, "normalized_return": nr, "normalized_return_sd": sd, "normalized_return_ci95": [nr - 0.1, nr + 0.1],
            "wins": wins, "draws": 0, "losses": n - wins, "win_rate": wins / n, "win_rate_ci95": [0.0, 1.0],
            "illegal_rate": illegal / turns, "illegal_rate_ci95": [0.0, 1.0], "illegal_acts": illegal,
            "model_turns": turns, "opponent": "random"}


def test_rows_per_seat_and_pooled():
    before = {"per_game": {"tictactoe": {"first": _seat(0.3, 0.2, 2, 6, 20), "second": _seat(0.2, 0.2, 1, 10, 20)}}}
    after = {"per_game": {"tictactoe": {"first": _seat(0.5, 0.2, 5, 2, 25), "second": _seat(0.4, 0.2, 3, 3, 25)}}}
    rows = comparison_rows(before, after)
    assert [r["seat"] for r in rows] == ["first", "second", "both"]
    both = rows[-1]
    # before: 16 illegal of 40 turns, 3 wins of 20 games; after: 5 of 50, 8 of 20 (Wilson intervals)
    assert both["illegal_rate before"] == "0.40 [0.26, 0.55]"
    assert both["illegal_rate after"] == "0.10 [0.04, 0.21]"
    assert both["win_rate before"] == "0.15 [0.05, 0.36]" and both["win_rate after"] == "0.40 [0.22, 0.61]"
    # mean of 0.5 and 0.4; half-width 1.959964 * sqrt(2 * 0.04 / 10) / 2 = 0.0877
    assert both["normalized_return after"] == "0.45 [0.36, 0.54]" and both["opponent"] == "random"


def test_one_seat_games_get_no_pooled_row():
    team = {"per_game": {"mini_hanabi": {"team": _seat(0.3, 0.2, 2, 6, 20)}}}
    assert [r["seat"] for r in comparison_rows(team, team)] == ["team"]
