"""MARS's rewards (MARSHAL's released code), worked by hand per game: the rules engine's step rewards credited to the
acting seat's current turn and the other seat's most recent turn, +0.05 per legal act, a forfeit of
-(normal loss) - 10 for the offender and 0 for the other seat, 0.1 for a zero terminal reward (not in poker), and the
length penalty 0.5 * min(0, 1 - (L - 11) / 2037)."""

from __future__ import annotations

import pytest

from stratagem.games.base import RewardConfig
from stratagem.games.core import Reply
from stratagem.games.registry import make_game

B = 0.05  # format bonus


def play(game, actions):
    """Apply legal actions by name (as a bot would, with Reply.action)."""
    for a in actions:
        turn = game.step(game.current_seat(), Reply(text=a, action=a))
        assert turn.legal, (a, turn.illegal_reason)
    return game


def bad(game):
    return game.step(game.current_seat(), Reply(text="<answer><NOT A MOVE></answer>"))


def rewards(game):
    return [(t.seat, round(t.reward, 9)) for t in game.turns]


def test_tictactoe_win_and_loss_on_the_last_turns():
    g = make_game("tictactoe")
    play(g, ["<X(0,0)>", "<O(1,0)>", "<X(0,1)>", "<O(1,1)>", "<X(0,2)>"])
    assert rewards(g) == [(0, B), (1, B), (0, B), (1, round(B - 1, 9)), (0, B + 1)]
    ep = g.episode([])
    assert ep.returns == pytest.approx([3 * B + 1, 2 * B - 1])
    assert ep.winners == [0]


def test_tictactoe_draw_gives_both_last_turns_0_1():
    g = make_game("tictactoe")
    play(g, ["<X(0,0)>", "<O(0,1)>", "<X(0,2)>", "<O(1,1)>", "<X(1,0)>", "<O(1,2)>", "<X(2,1)>", "<O(2,0)>",
             "<X(2,2)>"])
    ep = g.episode([])
    assert ep.metrics["raw_returns"] == [0.0, 0.0]
    assert ep.turns[-1].reward == pytest.approx(B + 0.1)  # X's last turn
    assert ep.turns[-2].reward == pytest.approx(B + 0.1)  # O's most recent turn
    assert ep.returns == pytest.approx([5 * B + 0.1, 4 * B + 0.1])


def test_connect_four_vertical_win():
    g = make_game("connect_four")
    play(g, ["<X(0)>", "<O(1)>", "<X(0)>", "<O(1)>", "<X(0)>", "<O(1)>", "<X(0)>"])
    assert g.episode([]).returns == pytest.approx([4 * B + 1, 3 * B - 1])


def test_illegal_act_forfeits_minus_eleven_and_gives_the_opponent_zero_not_a_win():
    g = make_game("tictactoe")
    play(g, ["<X(0,0)>"])
    t = bad(g)
    assert t.reward == pytest.approx(-1 - 10)
    ep = g.episode([])
    assert ep.returns == pytest.approx([B, -11.0])  # X keeps only its format bonus: the forfeit is no win
    assert ep.end_reason == "illegal"


def _kuhn(cards):
    """A Kuhn game whose deal is `cards` (0 = J, 1 = Q, 2 = K for seats 0 and 1)."""
    for seed in range(200):
        g = make_game("kuhn_poker")
        g.reset(seed)
        if list(g.state.history()[:2]) == list(cards):
            return g
    raise AssertionError(f"no seed deals {cards}")


def test_kuhn_bet_call_showdown_is_two_chips():
    g = play(_kuhn((2, 0)), ["<BET>", "<BET>"])  # K vs J: a bet and a call
    assert rewards(g) == [(0, B + 2), (1, B - 2)]
    ep = g.episode([])
    assert ep.returns == pytest.approx([2.05, -1.95])
    assert ep.metrics["raw_returns"] == [2.0, -2.0]


def test_kuhn_pass_pass_showdown_is_one_chip_and_a_fold_loses_the_ante():
    g = play(_kuhn((0, 1)), ["<PASS>", "<PASS>"])  # J vs Q
    assert g.episode([]).returns == pytest.approx([B - 1, B + 1])
    g = play(_kuhn((0, 1)), ["<BET>", "<PASS>"])  # a bluff that works: the caller with Q folds
    assert g.episode([]).returns == pytest.approx([B + 1, B - 1])


def test_kuhn_forfeit_costs_own_bet_plus_ten():
    g = play(_kuhn((0, 1)), ["<PASS>", "<BET>"])
    bad(g)  # player 0, with 1 chip (the ante) in the pot
    assert g.episode([]).returns == pytest.approx([B - 1 - 10, B])


def test_leduc_fold_nets_the_ante_and_forfeit_costs_own_chips():
    g = make_game("leduc_poker")
    play(g, ["<RAISE>", "<FOLD>"])
    assert g.episode([]).returns == pytest.approx([B + 1, B - 1])
    g = make_game("leduc_poker")
    play(g, ["<RAISE>", "<RAISE>"])  # player 0 has 1 + 2 chips in, player 1 has 1 + 2 + 2
    bad(g)
    assert g.episode([]).returns == pytest.approx([B - 3 - 10, B])


def _hanabi_seed_where(pred, name="mini_hanabi"):
    for seed in range(500):
        g = make_game(name)
        g.reset(seed)
        if pred(g):
            return g
    raise AssertionError("no seed found")


def _play_succeeds(g, slot):
    s = g.state.clone()
    label = f"<Play card {slot}>"
    s.apply_action(g.legal_actions(g.current_seat())[label])
    return s.rewards()[0] == 1.0


def test_hanabi_successful_play_is_rewarded_at_its_own_turn_and_the_partners_last():
    # player 0 reveals, then player 1 plays a card that scores: +1 to player 1's turn and to player 0's last turn
    def ok(g):
        play(g, ["<Reveal player +1 rank 1>"] if "<Reveal player +1 rank 1>" in g.legal_actions(0)
             else [next(a for a in g.legal_actions(0) if a.startswith("<Reveal"))])
        return _play_succeeds(g, 0)

    g = _hanabi_seed_where(ok)
    play(g, ["<Play card 0>"])
    assert rewards(g) == [(0, B + 1), (1, B + 1)]


def test_hanabi_forfeit_costs_the_current_score_plus_ten():
    g = _hanabi_seed_where(lambda g: _play_succeeds(g, 0))
    play(g, ["<Play card 0>"])  # score 1; player 1 has not acted yet, so only player 0's turn is credited
    assert rewards(g) == [(0, B + 1)]
    bad(g)  # player 1 forfeits with a score of 1
    assert g.episode([]).returns == pytest.approx([B + 1, -1 - 10])


def test_hanabi_losing_the_last_life_takes_the_score_back():
    def ok(g):
        if not _play_succeeds(g, 0):
            return False
        play(g, ["<Play card 0>"])
        for _ in range(6):  # misplays until the lives run out, if the deal allows it
            seat = g.current_seat()
            fail = [a for a in g.legal_actions(seat) if a.startswith("<Play") and not _play_succeeds(g, int(a[-2]))]
            if not fail:
                return False
            play(g, fail[:1])
            if g.is_over():
                return True
        return False

    g = _hanabi_seed_where(ok)
    ep = g.episode([])
    assert ep.metrics["raw_returns"] == [0.0, 0.0]  # all lives lost: OpenSpiel's score is 0
    last, partner_last = ep.turns[-1], [t for t in ep.turns if t.seat != ep.turns[-1].seat][-1]
    assert last.reward == pytest.approx(B - 1)  # minus the accumulated score of 1
    assert partner_last.reward == pytest.approx(B - 1)
    assert ep.returns[0] == pytest.approx(len(ep.seat_turns(0)) * B + 1 - 1)


def test_length_penalty_worked_example():
    r = RewardConfig()
    assert r.length_reward(48) == 0.0
    assert r.length_reward(2048) == 0.0
    assert r.length_reward(4085) == pytest.approx(-0.5)  # 0.5 * (1 - (4085 - 11) / 2037) = 0.5 * (1 - 2)
    assert r.length_reward(2048 + 2037) == pytest.approx(-0.5)
    assert RewardConfig(length_penalty=0.0).length_reward(9999) == 0.0
    g = make_game("tictactoe")
    t = g.step(0, Reply(text="0,0)>", completion_token_ids=[1] * 4085))  # after the forced "<answer><X("
    assert t.legal and t.reward == pytest.approx(B - 0.5)
