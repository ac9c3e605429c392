"""MARO's labels as the paper describes them, on hand-worked examples: faction balancing over acts, the failed-act
rule, the one-sided game, and the mismatched pairs of the KL reference point (different episode AND character,
shuffled as KTO), which every mini-batch must have."""

import random

import pytest
import torch

from stratagem.games.core import Episode, Seat, Turn
from stratagem.training.losses import MAROConfig, has_mismatched_pair, maro_labels, mismatched_pairs, pairs_in_order
from stratagem.training.objectives import Targets, get_loss
from stratagem.training.samples import Act, build_batch, mismatched_samples
from stratagem.training.trainer import LoRATrainer, TrainerConfig


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


def test_one_sided_game_all_undesirable_or_skipped():
    # Final-Performance-like: the trained seats are two civilians and the culprit's faction wins, so C_win is empty
    # and N_reward = 0. The documented rule (maro.empty_side='all', the default): every act of the other side is
    # labelled, here all undesirable, a failed one (turn 5) among them; 'skip' gives the episode no labels.
    civilians = lambda e, s: s in (1, 2)  # noqa: E731
    npc_culprit = _game(winning="culprit", failed=(5,))  # seat 0 plays the culprit, untrained
    no_culprit_seat = Episode(game="mystery", seed=0, seats=npc_culprit.seats[1:3], turns=npc_culprit.turns[2:6],
                              returns=[0.0, 0.0], winning_faction="culprit")
    for ep in (npc_culprit, no_culprit_seat):
        labels = maro_labels([ep], civilians, MAROConfig(), random.Random(0))
        assert {ep.turns[j].seat for (_, j) in labels} == {1, 2} and len(labels) == 4
        assert not any(labels.values())
        assert maro_labels([ep], civilians, MAROConfig(empty_side="skip"), random.Random(0)) == {}
    # both sides trained, the culprit wins: balanced 2 v 2, never one-sided
    both = maro_labels([npc_culprit], lambda e, s: s <= 2, MAROConfig(), random.Random(0))
    assert sum(both.values()) == 2 and len(both) == 4


def test_a_draw_gives_no_labels_whatever_empty_side():
    draw = _game(winning=None)
    for side in ("all", "skip"):
        assert maro_labels([draw], lambda e, s: True, MAROConfig(empty_side=side), random.Random(0)) == {}
    labels = maro_labels([draw, _game()], lambda e, s: True, MAROConfig(), random.Random(0))
    assert {i for i, _ in labels} == {1}


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


def test_has_mismatched_pair_needs_another_episode_and_another_role():
    assert has_mismatched_pair([_act(0, "Ann"), _act(1, "Ben")])
    assert not has_mismatched_pair([_act(0, "Ann"), _act(0, "Ben")])  # one episode
    assert not has_mismatched_pair([_act(0, "Ann"), _act(1, "Ann"), _act(2, "Ann")])  # one role
    assert has_mismatched_pair([_act(0, "Ann"), _act(1, "Ann"), _act(1, "Ben")])


# ---- z0 per mini-batch, through MAROLoss with a scripted scorer -------------------------------------------------

class _Scorer:
    """The trainer's grouping with scripted log-probs: the policy gives each response token its id / 100, the
    reference 0, so a mismatched sample's log-ratio is the sum of its response ids / 100. `calls` counts scoring."""

    mini_batches = LoRATrainer.mini_batches

    def __init__(self, minibatches=2):
        self.config = TrainerConfig(minibatches=minibatches)
        self.calls = 0

    def score(self, samples, *, reference=False, groups=None):
        self.calls += 1
        return [torch.tensor([0.0 if reference else s.input_ids[p] / 100 for p in s.positions]) for s in samples]


def _episodes(replies, roles=("Ann", "Ben")):
    """One episode per entry of `replies` (one reply token id per seat), the first seat's faction winning."""
    eps = []
    for k, ids in enumerate(replies):
        seats = [Seat(i, r, "a", faction=f"f{i}") for i, r in enumerate(roles)]
        turns = [Turn(seat=i, role=r, phase="converse", messages=[], response="", faction=f"f{i}",
                      prompt_token_ids=[1, 2 + k], completion_token_ids=[ids[i]]) for i, r in enumerate(roles)]
        eps.append(Episode(game="mystery", seed=k, seats=seats, turns=turns, returns=[0.0] * len(roles),
                           winning_faction="f0"))
    return eps


def _maro_targets(eps):
    labels = maro_labels(eps, lambda e, s: True, MAROConfig(), random.Random(0))
    batch = build_batch(eps, lambda i, j: (i, j) in labels)
    return batch, [labels[(a.episode, a.turn)] for a in batch.acts]


def _run_minibatches(objective, trainer, batch, targets):
    state = objective.prepare(trainer, batch, targets)
    for group in objective.mini_batches(trainer, batch):
        objective.on_minibatch(trainer, batch, group, state)
    return state, objective.summary({}, batch, state)


def test_z0_on_a_two_episode_batch_hand_worked():
    # samples e0-Ann (reply 10), e0-Ben (20), e1-Ann (30), e1-Ben (70). Dealt round-robin as the trainer does,
    # the mini-batches would be {e0-Ann, e1-Ann} and {e0-Ben, e1-Ben}: one role each, no mismatched pair.
    # Episode 1's samples rotated by one: {e0-Ann, e1-Ben} and {e0-Ben, e1-Ann}, each act paired with the other.
    eps = _episodes([(10, 20), (30, 70)])
    batch, desirable = _maro_targets(eps)
    trainer, maro = _Scorer(), get_loss("maro")(MAROConfig())
    assert trainer.mini_batches(4) == [[0, 2], [1, 3]]
    assert maro.mini_batches(trainer, batch) == [[0, 3], [1, 2]]
    state, stats = _run_minibatches(maro, trainer, batch, Targets(labels=desirable, episodes=eps, rng=random.Random(0)))
    # z0 = max(0, mean of the pairs' log-ratios): (0.70 + 0.10) / 2 = 0.40, then (0.30 + 0.20) / 2 = 0.25
    assert state["z0"].item() == pytest.approx(0.25)
    assert stats["z0"] == pytest.approx((0.40 + 0.25) / 2) and stats["z0_pairs"] == 2.0
    # the precomputed samples of the old call: e0-Ann's prompt with e1-Ben's reply, e1-Ann's with e0-Ben's
    mism = mismatched_samples(eps, batch, [(0, 3), (2, 1)])
    state, stats = _run_minibatches(maro, trainer, batch, Targets(labels=desirable, mismatched=mism))
    assert stats["z0"] == pytest.approx((0.70 + 0.20) / 2) and stats["z0_pairs"] == 2.0
    with pytest.raises(ValueError, match="mismatched samples"):
        maro.prepare(trainer, batch, Targets(labels=desirable, mismatched=[]))


def test_z0_is_clamped_at_zero_not_silently_zero():
    # negative log-ratios give z0 = 0 by the formula (max(0, .)), and the pairs are still counted
    eps = _episodes([(10, 20), (30, 70)])
    batch, desirable = _maro_targets(eps)
    trainer, maro = _Scorer(), get_loss("maro")(MAROConfig())
    trainer.score = lambda samples, reference=False, groups=None: [  # noqa: E731
        torch.full((len(s.positions),), 0.0 if reference else -1.0) for s in samples]
    _, stats = _run_minibatches(maro, trainer, batch, Targets(labels=desirable, episodes=eps, rng=random.Random(0)))
    assert stats["z0"] == 0.0 and stats["z0_pairs"] == 2.0


def test_a_one_episode_batch_fails_before_any_scoring():
    eps = _episodes([(10, 20)])
    batch, desirable = _maro_targets(eps)
    trainer, maro = _Scorer(minibatches=1), get_loss("maro")(MAROConfig())
    with pytest.raises(ValueError, match=r"at least 2 episodes.*loop\.episodes_per_iteration to 2"):
        maro.prepare(trainer, batch, Targets(labels=desirable, episodes=eps, rng=random.Random(0)))
    assert trainer.calls == 0


def test_a_mini_batch_without_pairs_fails_naming_the_settings():
    # three episodes of one seat each, all the same character: the batch has no mismatched pair at all
    eps = _episodes([(10,), (20,), (30,)], roles=("Ann",))
    for ep in eps:
        ep.winning_faction = None
        ep.winners = [0]
    batch, desirable = _maro_targets(eps)
    trainer, maro = _Scorer(minibatches=1), get_loss("maro")(MAROConfig())
    with pytest.raises(ValueError, match=r"mini-batch 1 of 1 .*trainer\.minibatches.*trainer\.sequences_per_step"):
        maro.prepare(trainer, batch, Targets(labels=desirable, episodes=eps, rng=random.Random(0)))
    assert trainer.calls == 0
