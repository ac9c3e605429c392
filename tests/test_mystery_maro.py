"""MARO's labels as the paper describes them, on hand-worked examples: faction balancing over acts, the failed-act
rule, and the mismatched pairs of the KL reference point (different episode AND character, shuffled as KTO)."""

import random

import pytest

from stratagem.games.core import Episode, Seat, Turn
from stratagem.training.losses import MAROConfig, maro_labels, mismatched_pairs, pairs_in_order
from stratagem.training.samples import Act


def _game(winning="civilian", acts=None, failed=()):
    """Seat 0 is the culprit, seats 1-4 civilians; `acts`: seat -> number of acts (default 2 each), taken in seat
    order; `failed`: indices of turns whose reply did not parse."""
    seats = [Seat(0, "Cul", "a", faction="culprit")] + [Seat(i, f"Civ{i}", "a", faction="civilian") for i in range(1, 5)]
    acts = acts or {s.index: 2 for s in seats}
    turns = []
    for s in seats:
        for _ in range(acts.get(s.index, 0)):
            j = len(turns)
            turns.append(Turn(seat=s.index, role=s.role, phase="converse", messages=[], response="",
                              faction=s.faction, illegal_reason="no action" if j in failed else None))
    return Episode(game="mystery", seed=0, seats=seats, turns=turns, returns=[0.0] * 5, winning_faction=winning)


def test_balancing_counts_acts_not_seats():
    # culprit (lost): 2 acts; civilians (won): 8 acts -> N_reward = min(8, 2) = 2
    ep = _game()
    labels = maro_labels([ep], lambda e, s: True, MAROConfig(), random.Random(3))
    assert {j: v for (_, j), v in labels.items() if not v} == {0: False, 1: False}
    win = sorted(j for (_, j), v in labels.items() if v)
    assert win == sorted(random.Random(3).sample(list(range(2, 10)), 2))  # two of the 8 civilian ACTS
    # acts, not seats: a culprit with 5 acts against civilians with 1 act each -> 4 v 4, every act labelled
    ep2 = _game(acts={0: 5, 1: 1, 2: 1, 3: 1, 4: 1})
    labels2 = maro_labels([ep2], lambda e, s: True, MAROConfig(), random.Random(0))
    assert sum(not v for v in labels2.values()) == 4 and sum(labels2.values()) == 4
    assert [j for (_, j), v in labels2.items() if v] == [5, 6, 7, 8]


def test_failed_acts_are_undesirable_whatever_the_outcome():
    # turns: culprit 0,1; civilians 2..9. Failed: 3 and 5 (civilians, who won) -> C_win = {2,4,6,7,8,9} (6),
    # C_lose = {0,1} + {3,5} = 4 -> N_reward = 4: all of C_lose undesirable, 4 of the 6 civilian legal acts desirable
    ep = _game(failed=(3, 5))
    labels = maro_labels([ep], lambda e, s: True, MAROConfig(), random.Random(1))
    assert sorted(j for (_, j), v in labels.items() if not v) == [0, 1, 3, 5]
    win = sorted(j for (_, j), v in labels.items() if v)
    assert win == sorted(random.Random(1).sample([2, 4, 6, 7, 8, 9], 4))
    # 'exclude': the failed acts get no label; C_win = 6, C_lose = 2 -> 2 v 2
    ex = maro_labels([ep], lambda e, s: True, MAROConfig(failed_acts="exclude"), random.Random(1))
    assert (0, 3) not in ex and (0, 5) not in ex
    assert sorted(j for (_, j), v in ex.items() if not v) == [0, 1] and sum(ex.values()) == 2
    with pytest.raises(ValueError, match="failed_acts"):
        maro_labels([ep], lambda e, s: True, MAROConfig(failed_acts="keep"), random.Random(0))


def test_a_failed_act_of_the_winning_side_with_nothing_else_to_balance():
    # the culprit wins with 1 legal act; one civilian act failed, the other 7 are legal losers:
    # C_win = {0}, C_lose = 8 acts -> N = 1
    ep = _game(winning="culprit", acts={0: 1, 1: 2, 2: 2, 3: 2, 4: 2}, failed=(1,))
    labels = maro_labels([ep], lambda e, s: True, MAROConfig(), random.Random(5))
    assert labels[(0, 0)] is True and sum(not v for v in labels.values()) == 1


def test_strategic_winner_balanced_over_acts():
    seats = [Seat(0, "x", "a"), Seat(1, "o", "a")]
    turns = [Turn(seat=s, role="xo"[s], phase="play", messages=[], response="") for s in (0, 1, 0)]
    won = Episode(game="ttt", seed=0, seats=seats, turns=turns, returns=[1, -1], winners=[0])
    labels = maro_labels([won], lambda e, s: True, MAROConfig(), random.Random(0))
    keep = random.Random(0).sample([0, 2], 1)[0]
    assert labels == {(0, keep): True, (0, 1): False}


def _act(ep, role):
    return Act(episode=ep, turn=0, seat=0, game="mystery", role=role, n_tokens=1)


def test_mismatched_pairs_hand_worked_order():
    a, b, c, d = _act(0, "Ann"), _act(0, "Ben"), _act(1, "Ann"), _act(1, "Cal")
    # order A B C D: A skips B (same episode) and C (same character) -> D; B -> C; C skips D, A -> B; D -> A
    assert pairs_in_order([a, b, c, d], [0, 1, 2, 3]) == [(0, 3), (1, 2), (2, 1), (3, 0)]
    # order D C B A: D skips C (same episode) -> B; C -> B; B skips A (same episode) -> D; A -> D
    assert pairs_in_order([a, b, c, d], [3, 2, 1, 0]) == [(3, 1), (2, 1), (1, 3), (0, 3)]
    # one episode only: no pair at all
    assert pairs_in_order([a, b], [0, 1]) == []


def test_mismatched_pairs_shuffle_with_rng_and_never_pair_same_episode_or_character():
    acts = [_act(e, r) for e in range(3) for r in ("Ann", "Ben", "Cal")]
    rng = random.Random(11)
    pairs = mismatched_pairs(acts, rng)
    order = list(range(9))
    random.Random(11).shuffle(order)
    assert pairs == pairs_in_order(acts, order)  # the KTO-style shuffle, then the rule
    assert len(pairs) == 9
    assert all(acts[i].episode != acts[j].episode and acts[i].role != acts[j].role for i, j in pairs)
    # recomputed per mini-batch: the next call draws a new shuffle
    assert mismatched_pairs(acts, rng) != pairs
    with pytest.raises(ValueError, match="rng"):
        mismatched_pairs(acts)
