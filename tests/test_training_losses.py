"""The PPO-style policy loss, the MARS and MARSHAL aggregation weights and the MARO loss on hand-worked numbers."""

import math
import random
from types import SimpleNamespace

import pytest
import torch

from stratagem.games.core import Episode, Seat, Turn
from stratagem.training.losses import (
    MAROConfig,
    PPOConfig,
    aggregation_weights,
    k3_kl,
    kl_reference_point,
    maro_act_loss,
    maro_labels,
    mismatched_pairs,
    nested_mean_weights,
    ppo_token_loss,
    token_mean_weights,
    trajectory_mean_weights,
)
from stratagem.training.objectives import Targets, get_loss
from stratagem.training.samples import Act, Batch, Sample


def test_nested_mean_weights():
    acts = [Act(0, 0, 0, "g", "x", 2), Act(0, 2, 0, "g", "x", 1), Act(0, 1, 1, "g", "o", 4), Act(1, 0, 0, "g", "x", 1)]
    w = nested_mean_weights(acts)
    # x: two trajectories (ep 0 with 2 turns, ep 1 with 1); o: one trajectory; two roles
    assert w == pytest.approx([1 / 16, 1 / 8, 1 / 8, 1 / 4])
    assert sum(wi * a.n_tokens for wi, a in zip(w, acts)) == pytest.approx(1.0)


def test_trajectory_and_token_mean_weights():
    """MARSHAL's `agg_loss` (roll/utils/functionals.py): 'seq-mean-token-sum' as coded is a token mean per sequence
    (one trajectory) and then the mean over sequences; 'token-mean' is one token mean over all tokens."""
    acts = [Act(0, 0, 0, "g", "x", 2), Act(0, 2, 0, "g", "x", 1), Act(0, 1, 1, "g", "o", 4), Act(1, 0, 0, "g", "x", 1)]
    # trajectories: (ep 0, seat 0) 3 tokens, (ep 0, seat 1) 4 tokens, (ep 1, seat 0) 1 token
    assert trajectory_mean_weights(acts) == pytest.approx([1 / 9, 1 / 9, 1 / 12, 1 / 3])
    assert token_mean_weights(acts) == [1 / 8] * 4
    for w in (trajectory_mean_weights(acts), token_mean_weights(acts)):
        assert sum(wi * a.n_tokens for wi, a in zip(w, acts)) == pytest.approx(1.0)
    assert aggregation_weights("nested", acts) == nested_mean_weights(acts)  # the default, unchanged
    assert aggregation_weights("token", []) == []
    with pytest.raises(ValueError, match="PPOConfig.aggregation must be one of nested, trajectory, token"):
        aggregation_weights("seq-mean-token-sum", acts)


class _Scorer:
    """Just what ClippedPolicyLoss.prepare asks of a trainer: every old log-prob 0, one mini-batch."""

    temperature = 1.0
    config = SimpleNamespace(track_kl=False)

    def mini_batches(self, n):
        return [list(range(n))]

    def score(self, samples, reference=False, groups=None):
        return [torch.zeros(len(s.positions)) for s in samples]


@pytest.mark.parametrize("mode, expected", [("nested", -0.25), ("trajectory", -1.0), ("token", -2.0)])
def test_clipped_policy_loss_aggregation(mode, expected):
    """Ratio 1 and no KL: the loss is -sum(w * A) over tokens. Acts (tokens, A): x in ep 0 (2, 1), o in ep 0
    (1, -2), x in ep 1 (3, 4).
    nested: w = 1/8, 1/2, 1/12 -> -(2/8 - 1 + 12/12) = -0.25; trajectory: w = 1/6, 1/3, 1/9 -> -(1/3 - 2/3 + 4/3) =
    -1; token: w = 1/6 -> -(2 - 2 + 12) / 6 = -2."""
    acts = [Act(0, 0, 0, "g", "x", 2), Act(0, 1, 1, "g", "o", 1), Act(1, 0, 0, "g", "x", 3)]
    samples = [Sample(input_ids=[0] * (a.n_tokens + 1), positions=list(range(1, a.n_tokens + 1)),
                      acts=[k] * a.n_tokens, old_logprobs=[math.nan] * a.n_tokens) for k, a in enumerate(acts)]
    batch = Batch(acts=acts, samples=samples)
    cfg = PPOConfig(kl_coef=0.0, aggregation=mode)
    objective = get_loss("ppo")(cfg)
    state = objective.prepare(_Scorer(), batch, Targets(advantages=[1.0, -2.0, 4.0]))
    loss, _ = objective.loss(_Scorer(), batch, [0, 1, 2], [torch.zeros(a.n_tokens) for a in acts], state, True)
    assert loss.item() == pytest.approx(expected)


def test_ppo_clipped_and_dual_clip():
    logp = torch.tensor([0.5, -0.5, 0.5, -0.5, 0.0])
    old = torch.zeros(5)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    loss, st = ppo_token_loss(logp, old, adv, PPOConfig(dual_clip=False))
    assert loss.tolist() == pytest.approx([-1.2, -math.exp(-0.5), math.exp(0.5), 0.8, -2.0], rel=1e-6)
    assert st["clipped"].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    dual, _ = ppo_token_loss(logp, old, adv, PPOConfig(dual_clip=True))
    assert dual.tolist() == pytest.approx([-1.2, -math.exp(-0.5), 1.4, 0.8, -2.0], rel=1e-6)


def test_mars_defaults():
    cfg = PPOConfig()
    assert (cfg.dual_clip, cfg.dual_clip_c, cfg.kl_coef, cfg.clip_eps, cfg.old_logprobs) == (True, 1.4, 0.2, 0.2,
                                                                                               "trainer")
    assert cfg.aggregation == "nested"


def test_ppo_missing_old_logprob_means_ratio_one():
    logp = torch.tensor([-0.7], requires_grad=True)
    loss, st = ppo_token_loss(logp, torch.tensor([math.nan]), torch.tensor([3.0]), PPOConfig())
    assert loss.item() == pytest.approx(-3.0) and st["ratio"].item() == pytest.approx(1.0)
    loss.sum().backward()
    assert logp.grad.item() == pytest.approx(-3.0)  # d(-rho A)/d logp at rho = 1


def test_k3_kl_penalty():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert k3_kl(logp, ref).item() == pytest.approx(math.exp(-0.5) - 0.5, rel=1e-6)
    loss, st = ppo_token_loss(logp, logp.clone(), torch.tensor([0.0]), PPOConfig(kl_coef=0.1), ref)
    assert loss.item() == pytest.approx(0.1 * (math.exp(-0.5) - 0.5), rel=1e-6)
    assert st["kl"].item() == pytest.approx(math.exp(-0.5) - 0.5, rel=1e-6)


def test_maro_act_loss():
    r = torch.tensor([2.0, 1.0])
    out = maro_act_loss(r, torch.tensor(0.5), torch.tensor([True, False]),
                        MAROConfig(beta=0.1, lambda_win=1.0, lambda_lose=1.5))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert out.tolist() == pytest.approx([1 - sig(0.15), 1.5 * (1 - sig(-0.05))], rel=1e-6)
    assert out.tolist() == pytest.approx([0.462570, 0.768746], abs=1e-6)


def test_kl_reference_point():
    assert kl_reference_point(torch.tensor([0.3, -0.1, 0.1])).item() == pytest.approx(0.1)
    assert kl_reference_point(torch.tensor([-0.3, 0.1])).item() == 0.0  # clamped at 0
    assert kl_reference_point(torch.zeros(0)).item() == 0.0
    x = torch.tensor([0.4, 0.2], requires_grad=True)
    assert not kl_reference_point(x).requires_grad
    assert mismatched_pairs(3) == [(0, 1), (1, 2), (2, 0)] and mismatched_pairs(1) == []


def _mystery(winning="civilian", turns_each=2):
    seats = [Seat(0, "culprit", "a", faction="culprit")] + [Seat(i, f"c{i}", "a", faction="civilian") for i in range(1, 5)]
    turns = [Turn(seat=s.index, role=s.role, phase="talk", messages=[], response="", faction=s.faction)
             for _ in range(turns_each) for s in seats]
    return Episode(game="mystery", seed=0, seats=seats, turns=turns, returns=[0.0] * 5, winning_faction=winning)


def test_maro_labels_balance_one_culprit_against_four_civilians():
    ep = _mystery()
    labels = maro_labels([ep], lambda e, s: True, MAROConfig(), random.Random(7))
    by_seat = {}
    for (_, j), good in labels.items():
        by_seat.setdefault(ep.turns[j].seat, set()).add(good)
    # over acts: N_reward = min(8 civilian acts, 2 culprit acts) = 2: both culprit acts (lose) and two civilian acts
    # drawn with the seed (tests/test_mystery_maro.py works the act-level rules through)
    assert by_seat.pop(0) == {False}
    chosen = sorted(random.Random(7).sample([j for j in range(10) if j % 5], 2))  # turn j is seat j % 5's
    assert sorted(j for (_, j), good in labels.items() if good) == chosen
    assert len(labels) == 4  # two acts each side
    assert maro_labels([ep], lambda e, s: True, MAROConfig(), random.Random(7)) == labels


def test_maro_labels_culprit_wins():
    labels = maro_labels([_mystery("culprit")], lambda e, s: True, MAROConfig(), random.Random(0))
    assert sorted(labels.values()) == [False, False, True, True]


def test_maro_labels_empty_side_fallback():
    ep = _mystery()
    civilians_only = lambda e, s: s != 0  # noqa: E731  the culprit seat is not trained: the losing side is empty
    all_ = maro_labels([ep], civilians_only, MAROConfig(empty_side="all"), random.Random(0))
    assert len(all_) == 8 and all(all_.values())
    assert maro_labels([ep], civilians_only, MAROConfig(empty_side="skip"), random.Random(0)) == {}
    with pytest.raises(ValueError, match="empty_side"):
        maro_labels([ep], civilians_only, MAROConfig(empty_side="both"), random.Random(0))


def test_maro_labels_strategic_winner_and_draw():
    seats = [Seat(0, "x", "a"), Seat(1, "o", "a")]
    turns = [Turn(seat=s, role="xo"[s], phase="play", messages=[], response="") for s in (0, 1, 0)]
    won = Episode(game="ttt", seed=0, seats=seats, turns=turns, returns=[1, -1], winners=[0])
    draw = Episode(game="ttt", seed=0, seats=seats, turns=turns, returns=[0, 0])
    labels = maro_labels([won, draw], lambda e, s: True, MAROConfig(), random.Random(0))
    keep = random.Random(0).sample([0, 2], 1)[0]  # N_reward = min(2 acts, 1 act) = 1
    assert labels == {(0, keep): True, (0, 1): False}
