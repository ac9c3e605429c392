"""Advantage estimators on hand-worked episodes: two seats with unequal trajectory lengths, a draw, and an
episode that ends on an illegal first move (the second seat never acts)."""

import math

import pytest

from stratagem.games.core import Episode, Seat, Turn
from stratagem.training.advantages import AdvantageConfig, advantage_names, every_seat, get_advantage


def _ep(turns, returns, winners=()):
    seats = [Seat(0, "x", "a"), Seat(1, "o", "a")]
    ts = [Turn(seat=s, role=seats[s].role, phase="play", messages=[], response="", reward=r) for s, r in turns]
    return Episode(game="ttt", seed=0, seats=seats, turns=ts, returns=list(returns), winners=list(winners))


@pytest.fixture
def batch():
    win = _ep([(0, 0.5), (1, 0.5), (0, 0.0), (1, -1.0), (0, 1.0)], [1.5, -0.5], [0])  # x: 3 turns, o: 2
    draw = _ep([(0, 0.5), (1, 0.5), (0, 0.0), (1, 0.0)], [0.5, 0.5])
    illegal = _ep([(0, -1.0)], [-1.0, 0.0], [1])  # x's first move is illegal; o never acts
    return [win, draw, illegal]


def run(name, batch, state=None, **opts):
    return get_advantage(name)(batch, every_seat, AdvantageConfig(**opts), {} if state is None else state)


def test_registry():
    assert advantage_names() == ["grpo", "mars", "marshal", "rae"]
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        get_advantage("ppo")


def test_mars_turn_level_agent_specific(batch):
    # x return-to-go: win [1.5, 1, 1], draw [0.5, 0], illegal [-1] -> mean 0.5
    # o return-to-go: win [-0.5, -1], draw [0.5, 0] -> mean -0.25
    a = run("mars", batch)
    assert a[0] == pytest.approx([1.0, -0.25, 0.5, -0.75, 0.5])
    assert a[1] == pytest.approx([0.0, 0.75, -0.5, 0.25])
    assert a[2] == pytest.approx([-1.5])


def test_mars_std_normalization(batch):
    a = run("mars", batch, normalize_std=True)
    sd_o = math.sqrt((0.25**2 + 0.75**2 + 0.75**2 + 0.25**2) / 4)
    sd_x = math.sqrt((1.0 + 0.25 + 0.25 + 0 + 0.25 + 2.25) / 6)
    assert a[0][1] == pytest.approx(-0.25 / sd_o, rel=1e-5)
    assert a[1][1] == pytest.approx(0.75 / sd_o, rel=1e-5)
    assert a[2][0] == pytest.approx(-1.5 / sd_x, rel=1e-5)


def test_mars_ablations(batch):
    traj = run("mars", batch, turn_level=False)  # x pool: 1.5 x3, 0.5 x2, -1 -> mean 0.75
    assert [traj[0][j] for j in (0, 2, 4)] == pytest.approx([0.75] * 3)
    assert traj[1][0] == pytest.approx(-0.25) and traj[2][0] == pytest.approx(-1.75)
    pooled = run("mars", batch, agent_specific=False)  # all 10 turn returns: sum 2 -> mean 0.2
    assert pooled[0] == pytest.approx([1.3, -0.7, 0.8, -1.2, 0.8])
    assert pooled[2] == pytest.approx([-1.2])


def test_grpo(batch):
    # trained seat returns 1.5, -0.5, 0.5, 0.5, -1 (o of the illegal game never acted): mean 0.2, std sqrt(0.76)
    a = run("grpo", batch)
    sd = math.sqrt(0.76)
    assert a[0] == pytest.approx([1.3 / sd, -0.7 / sd, 1.3 / sd, -0.7 / sd, 1.3 / sd], rel=1e-5)
    assert a[1] == pytest.approx([0.3 / sd] * 4, rel=1e-5)
    assert a[2] == pytest.approx([-1.2 / sd], rel=1e-5)


def test_rae_baseline_read_then_updated_once_per_trajectory(batch):
    # x: R = 1.5, 0.5, -1 in batch order. b = 0 -> A = 1.5, b = 0.05 * 1.5 = 0.075
    #    A = 0.5 - 0.075 = 0.425, b = 0.95 * 0.075 + 0.05 * 0.5 = 0.09625
    #    A = -1 - 0.09625 = -1.09625, b = 0.95 * 0.09625 - 0.05 = 0.0414375
    # o: R = -0.5, 0.5 (o never acts in the illegal game). A = -0.5, b = -0.025; A = 0.525, b = 0.00125
    state = {}
    first = run("rae", batch, state)
    assert first[0] == pytest.approx([1.5, -0.5, 1.5, -0.5, 1.5])
    assert first[1] == pytest.approx([0.425, 0.525, 0.425, 0.525])
    assert first[2] == pytest.approx([-1.09625])
    assert state["rae_baseline"] == pytest.approx({"ttt|x": 0.0414375, "ttt|o": 0.00125})
    second = run("rae", batch, state)  # the baseline carries over between iterations
    assert second[0][0] == pytest.approx(1.5 - 0.0414375)
    assert second[0][1] == pytest.approx(-0.5 - 0.00125)


def test_learner_filter_leaves_opponent_untrained(batch):
    a = get_advantage("mars")(batch, lambda ep, seat: seat == 0, AdvantageConfig(), {})
    assert a[0][1] is None and a[0][3] is None
    assert a[0][0] == pytest.approx(1.0)  # x's pool is unchanged by dropping o
