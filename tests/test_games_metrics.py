"""The episode metrics, each on hand-made episodes whose numbers are worked out in the comments."""

from __future__ import annotations

import math

import pytest

from stratagem.games.core import Episode, Seat, Turn
from stratagem.games.metrics import (
    episode_metrics,
    illegal_counts,
    is_draw,
    is_illegal_act,
    is_model_turn,
    mean_interval,
    normalized_return,
    offender,
    pooled_seats,
    role_summary,
    seat_summary,
    seat_won,
    wilson_interval,
)


def _turn(seat, role, illegal=None, ids=True):
    return Turn(seat=seat, role=role, phase="play", messages=[], response="", illegal_reason=illegal,
                completion_token_ids=[1] if ids else None)


def _ttt(turns, winners, end, raw, returns, agents=("llm:base", "random")):
    seats = [Seat(0, "X", agents[0]), Seat(1, "O", agents[1])]
    return Episode(game="tictactoe", seed=0, seats=seats, turns=turns, returns=returns, winners=winners,
                   end_reason=end, metrics={"raw_returns": raw})


X, O = (lambda **k: _turn(0, "X", **k)), (lambda **k: _turn(1, "O", ids=False, **k))  # noqa: E741  (the players are X and O)
# A: X plays, O plays, X's second reply is illegal: the game ends, O is the winner by forfeit.
A = _ttt([X(), O(), X(illegal="illegal: '<X(5,5)>'")], [1], "illegal", [0.0, 0.0], [-10.95, 0.0])
# B: X wins on its third move.
B = _ttt([X(), O(), X(), O(), X()], [0], "terminal", [1.0, -1.0], [1.15, -0.9])
# C: a draw after nine moves.
C = _ttt([X(), O(), X(), O(), X(), O(), X(), O(), X()], [], "terminal", [0.0, 0.0], [0.55, 0.5])


def test_win_draw_loss():
    assert [seat_won(e, 0) for e in (A, B, C)] == [False, True, False]
    assert [seat_won(e, 1) for e in (A, B, C)] == [True, False, False]
    assert [is_draw(e) for e in (A, B, C)] == [False, False, True]
    assert not is_draw(C, cooperative=True)  # a cooperative game has no draws
    mystery = Episode(game="mystery", seed=0, seats=[Seat(0, "a", "llm:base", faction="innocent"),
                                                     Seat(1, "b", "llm:base", faction="culprit")],
                      turns=[], returns=[1.0, -1.0], winning_faction="innocent")
    assert (seat_won(mystery, 0), seat_won(mystery, 1), is_draw(mystery)) == (True, False, False)


def test_illegal_acts_count_model_turns_only():
    # seat 0's model turns: A 2 (1 illegal), B 3, C 5 -> 1 of 10; O is a bot: its turns are no model turns
    assert illegal_counts([A, B, C], seat=0) == (1, 10)
    assert illegal_counts([A, B, C], seat=1) == (0, 0)
    assert illegal_counts([A, B, C]) == (1, 10)
    assert illegal_counts([A, B, C], role="X") == (1, 10)
    # an endpoint without token ids: the seat's agent says it is a model
    no_ids = _ttt([_turn(0, "X", illegal="malformed", ids=False)], [1], "illegal", [0.0, 0.0], [-11.0, 0.0])
    assert is_model_turn(no_ids, no_ids.turns[0]) and illegal_counts([no_ids]) == (1, 1)
    # a human's illegal move is not a model's illegal act
    human = _ttt([_turn(0, "X", illegal="illegal", ids=False)], [1], "illegal", [0.0, 0.0], [-11.0, 0.0],
                 agents=("human", "random"))
    assert illegal_counts([human]) == (0, 0)
    assert is_illegal_act(A, A.turns[2]) and not is_illegal_act(A, A.turns[0])
    assert not is_illegal_act(human, human.turns[0])


def test_normalized_return_worked_examples():
    # tic-tac-toe's utility range [-1, 1]: a loss 0, a draw 0.5, a win 1
    assert [normalized_return(e, 0, -1, 1, False) for e in (A, B, C)] == [0.0, 1.0, 0.5]
    # A ended by X's illegal act: 0 for X, 1 for O, whatever the engine's (0, 0) says
    assert offender(A) == 0 and [normalized_return(e, 1, -1, 1, False) for e in (A, B, C)] == [1.0, 0.0, 0.5]
    # Leduc's range [-13, 13]: winning 3 chips is (3 + 13) / 26, losing them (-3 + 13) / 26
    leduc = Episode(game="leduc_poker", seed=0, seats=[], turns=[], returns=[0, 0], winners=[0],
                    metrics={"raw_returns": [3.0, -3.0]})
    assert normalized_return(leduc, 0, -13, 13, False) == pytest.approx(16 / 26)
    assert normalized_return(leduc, 1, -13, 13, False) == pytest.approx(10 / 26)
    # cooperative: score over the best score; an illegal act forfeits the score
    hanabi = Episode(game="simple_hanabi", seed=0, seats=[], turns=[], returns=[0, 0],
                     metrics={"raw_returns": [3.0, 3.0]})
    assert normalized_return(hanabi, 0, 0, 6, True) == 0.5
    hanabi.end_reason = "illegal"
    assert normalized_return(hanabi, 0, 0, 6, True) == 0.0


def test_wilson_interval_worked_examples():
    lo, hi = wilson_interval(5, 10)  # textbook: 0.2366, 0.7634
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    # 1 of 10: centre (0.1 + z^2/20) / (1 + z^2/10) = 0.21101, half-width 0.19314
    lo, hi = wilson_interval(1, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.0179, 0.4042)
    lo, hi = wilson_interval(0, 2)  # z^2/(n+z^2) = 3.8415/5.8415
    assert lo == 0.0 and hi == pytest.approx(3.841459 / 5.841459, abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="k=3, n=2"):
        wilson_interval(3, 2)


def test_mean_interval_worked_example():
    # 2 4 4 4 5 5 7 9: mean 5, sample sd sqrt(32/7) = 2.13809, se 0.75593, t(0.975, 7) = 2.36462 -> +-1.78750
    lo, hi = mean_interval([2, 4, 4, 4, 5, 5, 7, 9])
    assert (round(lo, 4), round(hi, 4)) == (3.2125, 6.7875)
    assert all(math.isnan(x) for x in mean_interval([1.0]))


def test_episode_metrics_as_training_logs_them():
    m = episode_metrics([A, B, C])
    assert set(m) == {"return/tictactoe/X", "return/tictactoe/O", "win_rate/tictactoe/X", "win_rate/tictactoe/O",
                      "illegal_rate/tictactoe"}
    assert m["return/tictactoe/X"] == pytest.approx((-10.95 + 1.15 + 0.55) / 3)  # -3.08333
    assert m["return/tictactoe/O"] == pytest.approx((0.0 - 0.9 + 0.5) / 3)  # -0.13333
    assert m["win_rate/tictactoe/X"] == pytest.approx(1 / 3) and m["win_rate/tictactoe/O"] == pytest.approx(1 / 3)
    assert m["illegal_rate/tictactoe"] == pytest.approx(0.1)
    bots_only = _ttt([O()], [1], "terminal", [-1.0, 1.0], [-1.0, 1.0], agents=("random", "random"))
    assert "illegal_rate/tictactoe" not in episode_metrics([bots_only])  # no model turn, no rate


def test_seat_summary_of_an_evaluation():
    s = seat_summary([A, B, C], 0, -1, 1, False)
    assert (s["n"], s["wins"], s["draws"], s["losses"]) == (3, 1, 1, 1)
    assert s["normalized_return"] == pytest.approx(0.5)
    # values 0, 1, 0.5: sd 0.5, se 0.28868, t(0.975, 2) = 4.30265 -> +-1.24207, cut to [0, 1]
    assert s["normalized_return_ci95"] == [0.0, 1.0]
    assert (s["illegal_acts"], s["model_turns"], s["illegal_endings"]) == (1, 10, 1)
    assert s["illegal_rate"] == pytest.approx(0.1) and [round(x, 4) for x in s["illegal_rate_ci95"]] == [0.0179, 0.4042]
    assert s["win_rate"] == pytest.approx(1 / 3)
    two = seat_summary([B, C], 0, -1, 1, False)  # 1 and 0.5: mean 0.75, se 0.25, t(0.975, 1) = 12.7062
    assert two["normalized_return"] == 0.75 and two["normalized_return_ci95"] == [0.0, 1.0]
    assert s["normalized_return_sd"] == pytest.approx(0.5) and two["normalized_return_sd"] == pytest.approx(0.5 ** 0.5 / 2)


def test_pooled_seats_of_two_seat_orders():
    first = {"n": 4, "normalized_return": 0.625, "normalized_return_sd": 0.5, "wins": 2, "draws": 1, "losses": 1,
             "illegal_acts": 1, "model_turns": 10}
    second = {"n": 4, "normalized_return": 0.25, "normalized_return_sd": 0.3, "wins": 1, "draws": 0, "losses": 3,
              "illegal_acts": 3, "model_turns": 10}
    p = pooled_seats({"first": first, "second": second})
    assert (p["n"], p["wins"], p["draws"], p["losses"]) == (8, 3, 1, 4)
    assert p["win_rate"] == 0.375 and p["win_rate_ci95"] == list(wilson_interval(3, 8))
    assert p["illegal_rate"] == 0.2 and p["illegal_rate_ci95"] == list(wilson_interval(4, 20))
    # mean of the seat means 0.4375; se of that mean sqrt(0.25/4 + 0.09/4) / 2 = 0.1457738, times 1.959964
    assert p["normalized_return"] == 0.4375
    assert p["normalized_return_ci95"] == pytest.approx([0.1517884, 0.7232116], abs=1e-6)
    assert pooled_seats({"first": {**first, "normalized_return_sd": None}, "second": second})[
        "normalized_return_ci95"] is None


def test_role_summary_per_game_and_role():
    r = role_summary([A, B, C])
    x, o = r["tictactoe/X"], r["tictactoe/O"]
    assert x["n"] == 3 and x["win"]["k"] == 1 and x["draw"]["k"] == 1 and x["illegal"]["k"] == 1
    assert x["illegal"]["n"] == 10 and o["illegal"]["n"] == 0
    assert x["return"]["mean"] == pytest.approx((-10.95 + 1.15 + 0.55) / 3)
    # -10.95, 1.15, 0.55: mean -3.08333, sd 6.81934, se 3.93715, t(0.975, 2) 4.30265 -> +-16.94017
    assert x["return"]["ci95"] == pytest.approx([-20.02350, 13.85683], abs=1e-5)


def test_the_play_summary_counts_with_these_definitions():
    from stratagem.games.cli import summarize

    s = summarize([A, B, C])
    assert (s["illegal_move_rate"], s["model_turns"], s["mean_turns"]) == (0.1, 10, (3 + 5 + 9) / 3)
    x, o = s["seats"]
    assert (x["wins"], x["draws"], x["losses"], x["illegal_acts"], x["model_turns"]) == (1, 1, 1, 1, 10)
    assert (o["wins"], o["draws"], o["losses"], o["model_turns"]) == (1, 1, 1, 0)
