"""The `marshal` estimator step by step against MARSHAL's own numbers.

Example A was computed by running the functions of MARSHAL's roll/utils/functionals.py (float32) on four toy rows:
tic-tac-toe seats 0 / 1 and Kuhn poker seats 0 / 1, two turns each, each turn two response tokens (one reply token
and the end-of-turn token that carries the reward). Here every turn has one completion token plus
`marshal_eot_tokens = 1`. The final numbers are those of the idealised distinct-returns baseline (MARSHAL's float
residues deduplicated), as the estimator documents."""

import math
import random

import pytest

from stratagem.games.core import Episode, Seat, Turn
from stratagem.training.advantages import (
    AdvantageConfig,
    MarshalTurn,
    every_seat,
    get_advantage,
    marshal_center,
    marshal_distinct_baseline,
    marshal_returns,
    marshal_trajectories,
    marshal_whiten,
)
from stratagem.training.loop import RunConfig

LENPEN_3000 = 0.5 * (1 - (3000 - 11) / (2048 - 11))  # MARSHAL's length penalty of a 3000-token reply: -0.233677


def _episode(game, rewards, completion=1):
    seats = [Seat(0, "first", "llm:m"), Seat(1, "second", "llm:m")]
    turns = [Turn(seat=s, role=seats[s].role, phase="play", messages=[], response="", prompt_token_ids=[1],
                  completion_token_ids=[7] * completion, reward=r) for s, r in rewards]
    return Episode(game=game, seed=0, seats=seats, turns=turns,
                   returns=[sum(r for q, r in rewards if q == s) for s in (0, 1)])


@pytest.fixture
def example_a():
    ttt = _episode("tictactoe", [(0, 0.05), (1, 0.05), (0, 1.05), (1, -0.95)])  # seat 0 wins
    kuhn = _episode("kuhn_poker", [(0, 0.05), (1, 0.05 + LENPEN_3000), (0, -1.95), (1, 2.05)])  # seat 1 wins 2
    return [ttt, kuhn]


def _flat(rows):
    return [x for r in rows for x in r]


def run(batch, learner=every_seat, **opts):
    return get_advantage("marshal")(batch, learner, AdvantageConfig(**opts), {})


def test_trajectories_count_the_end_of_turn_token(example_a):
    trajs = marshal_trajectories(example_a, every_seat)
    # one per (episode, seat), in batch order: r0 = ttt seat 0, r1 = ttt seat 1, r2 = kuhn seat 0, r3 = kuhn seat 1
    assert [(t[0].episode, t[0].seat, [x.turn for x in t]) for t in trajs] == [(0, 0, [0, 2]), (0, 1, [1, 3]),
                                                                              (1, 0, [0, 2]), (1, 1, [1, 3])]
    assert {x.n_tokens for x in _flat(trajs)} == {2}
    assert {x.n_tokens for x in _flat(marshal_trajectories(example_a, every_seat, eot_tokens=0))} == {1}


def test_center_per_game_and_seat(example_a):
    """MARSHAL's `reward_normalize_by_player` (`score_normalize`, method 'mean', per game tag and seat): each seat's
    turn rewards in each game minus their mean over turns."""
    c = marshal_center(marshal_trajectories(example_a, every_seat), "game_seat")
    assert _flat(c) == pytest.approx([-0.5, 0.5, 0.5, -0.5, 1.0, -1.0, -1.116838, 1.116838], abs=1e-6)


def test_center_per_game_and_none(example_a):
    """'game': `score_normalize` over the whole game-tag group (MARSHAL's fixed-opponent runs); 'none': raw."""
    trajs = marshal_trajectories(example_a, every_seat)
    kuhn_mean = (0.05 + 0.05 + LENPEN_3000 - 1.95 + 2.05) / 4  # -0.008419
    c = marshal_center(trajs, "game")
    assert _flat(c) == pytest.approx([0.0, 1.0, 0.0, -1.0, 0.05 - kuhn_mean, -1.95 - kuhn_mean,
                                      0.05 + LENPEN_3000 - kuhn_mean, 2.05 - kuhn_mean], abs=1e-12)
    assert _flat(marshal_center(trajs, "none")) == pytest.approx([0.05, 1.05, 0.05, -0.95, 0.05, -1.95,
                                                                  0.05 + LENPEN_3000, 2.05])
    with pytest.raises(ValueError, match="marshal_center"):
        marshal_center(trajs, "seat")


def test_center_single_turn_group_gives_zero():
    """Where MARSHAL's `score_normalize` raises (a (game, seat) group with one turn: its unused unbiased variance
    divides by zero), the lone turn is centred like any other and gets 0."""
    ep = _episode("kuhn_poker", [(0, 0.05), (1, 1.05), (0, -0.95)])  # seat 1 has a single turn in the batch
    c = marshal_center(marshal_trajectories([ep], every_seat), "game_seat")
    assert c == [[pytest.approx(0.5), pytest.approx(-0.5)], [0.0]]


def test_reward_whitening_and_return_to_go(example_a):
    """MARSHAL's `masked_whiten` of the token rewards over the batch's 16 response tokens (mean 0, unbiased variance
    0.366310, scale 1.652248), then `compute_reinforce_return` (gamma 1): turn 1's return is 0 (a lone trajectory's
    centred rewards sum to 0), turn 2's is its whitened reward."""
    trajs = marshal_trajectories(example_a, every_seat)
    g = marshal_returns(trajs, marshal_center(trajs))
    scale = 1 / math.sqrt(0.366310447 + 1e-8)
    assert scale == pytest.approx(1.652248, abs=1e-6)
    assert _flat(g) == pytest.approx([0.0, 0.826124, 0.0, -0.826124, 0.0, -1.652248, 0.0, 1.845294], abs=1e-6)


def _token_level_returns(trajs, rewards):
    """MARSHAL's token rows written out: per trajectory an observation token before each turn, the turn's n - 1
    reply tokens with reward 0 and its end token with the reward, padding after; `masked_whiten` over the response
    tokens, times the mask, then the reverse cumulative sum. Returns the return at each turn's first reply token
    and the largest spread of the return inside a turn."""
    rows, masks, firsts = [], [], []
    for traj, rs in zip(trajs, rewards):
        row, mask, first = [], [], []
        for t, r in zip(traj, rs):
            row.append(0.0), mask.append(0)
            first.append(len(row))
            row += [0.0] * (t.n_tokens - 1) + [r]
            mask += [1] * t.n_tokens
        rows.append(row + [0.0, 0.0]), masks.append(mask + [0, 0]), firsts.append(first)
    vals = [x for row, mask in zip(rows, masks) for x, m in zip(row, mask) if m]
    mean = sum(vals) / len(vals)
    var = sum((x - mean) ** 2 for x in vals) / (len(vals) - 1)
    out, spread = [], 0.0
    for row, mask, first, traj in zip(rows, masks, firsts, trajs):
        white = [(x - mean) / math.sqrt(var + 1e-8) * m for x, m in zip(row, mask)]
        g = [sum(white[k:]) for k in range(len(white))]
        out.append([g[f] for f in first])
        for f, t in zip(first, traj):
            spread = max(spread, max(abs(g[f + q] - g[f]) for q in range(t.n_tokens)))
    return out, spread


def test_returns_match_token_rows_when_the_whitening_mean_is_not_zero():
    """Without centring the whitening mean is not 0 and `masked_whiten` shifts every response token, the
    zero-reward ones too: the return at a turn's first token counts all of them (`compute_reinforce_return` over
    the whitened row). Checked against the token rows, unequal lengths and turn counts."""
    rng = random.Random(3)
    trajs = [[MarshalTurn(e, k, s, "g", 0.0, rng.randint(1, 6)) for k in range(rng.randint(1, 4))]
             for e in range(3) for s in range(2)]
    rewards = [[rng.uniform(-2, 2) for _ in traj] for traj in trajs]
    ref, spread = _token_level_returns(trajs, rewards)
    assert _flat(marshal_returns(trajs, rewards)) == pytest.approx(_flat(ref), abs=1e-9)
    assert spread > 1e-3  # the later tokens of a turn differ: the estimator takes the first token's return
    # by hand: one trajectory, rewards [0, 1], two tokens per turn -> tokens [0, 0, 0, 1], mean 0.25, var 0.25,
    # whitened [-0.5, -0.5, -0.5, 1.5]: G_1 = 0, G_2 = 1; with one token per turn: [0, 1] -> G = [0, 1 / sqrt(2)]
    two = [MarshalTurn(0, 0, 0, "g", 0.0, 2), MarshalTurn(0, 1, 0, "g", 0.0, 2)]
    assert marshal_returns([two], [[0.0, 1.0]]) == [[pytest.approx(0.0, abs=1e-7), pytest.approx(1.0, abs=1e-7)]]
    one = [MarshalTurn(0, 0, 0, "g", 0.0, 1), MarshalTurn(0, 1, 0, "g", 0.0, 1)]
    assert marshal_returns([one], [[0.0, 1.0]]) == [[pytest.approx(0.0, abs=1e-7),
                                                     pytest.approx(math.sqrt(0.5), abs=1e-7)]]


def test_eot_tokens_change_the_whitening_count(example_a):
    """With `marshal_eot_tokens = 0` each turn has one response token: N = 8, unbiased variance 5.494654 / 7."""
    trajs = marshal_trajectories(example_a, every_seat, eot_tokens=0)
    g = marshal_returns(trajs, marshal_center(trajs))
    scale = 1 / math.sqrt(5.494654 / 7)
    assert _flat(g) == pytest.approx([0.0, 0.5 * scale, 0.0, -0.5 * scale, 0.0, -scale, 0.0, 1.116838 * scale],
                                     abs=1e-6)


def test_distinct_baseline_per_seat_over_all_games(example_a):
    """MARSHAL's `normalize_unique_values_by_player` (mode 'mean'), idealised: per seat, pooled over both games,
    the mean of the distinct returns together with the padding's 0. Seat 0: {-1.652248, 0, 0.826124}; seat 1:
    {-0.826124, 0, 1.845294}. (The code also counts r0's float residue 1.19e-07 as a value: seat 0 -0.206531.)"""
    trajs = marshal_trajectories(example_a, every_seat)
    base = marshal_distinct_baseline(trajs, marshal_returns(trajs, marshal_center(trajs)))
    assert base == {0: pytest.approx(-0.275375, abs=1e-6), 1: pytest.approx(0.339723, abs=1e-6)}
    # duplicates count once, values within 1e-6 are one value, and 0 is always in the set
    fake = [[MarshalTurn(0, 0, 0, "g", 0.0, 1)], [MarshalTurn(1, 0, 0, "g", 0.0, 1)],
            [MarshalTurn(2, 0, 0, "g", 0.0, 1)], [MarshalTurn(2, 1, 1, "g", 0.0, 1)]]
    assert marshal_distinct_baseline(fake, [[0.5], [0.5 + 1e-9], [3e-9], [2.0]]) == {0: pytest.approx(0.25),
                                                                                    1: pytest.approx(1.0)}


def test_advantage_whitening(example_a):
    """MARSHAL's `masked_whiten` of the advantages over all response tokens: token-weighted mean (-0.008044),
    unbiased variance (0.948933), eps 1e-8 inside the square root."""
    trajs = marshal_trajectories(example_a, every_seat)
    g = marshal_returns(trajs, marshal_center(trajs))
    base = marshal_distinct_baseline(trajs, g)
    a = [[x - base[traj[0].seat] for x in gs] for traj, gs in zip(trajs, g)]
    mean = sum(2 * x for x in _flat(a)) / 16
    var = sum(2 * (x - mean) ** 2 for x in _flat(a)) / 15
    assert (mean, var) == (pytest.approx(-0.008044, abs=1e-6), pytest.approx(0.948933, abs=1e-6))
    w = marshal_whiten(trajs, a)
    assert _flat(w) == pytest.approx([(x - mean) / math.sqrt(var + 1e-8) for x in _flat(a)], abs=1e-12)
    assert sum(2 * x for x in _flat(w)) == pytest.approx(0.0, abs=1e-12)


def test_marshal_example_a_final(example_a):
    """The whole path (MARSHAL's `compute_advantage` after `reward_postprocess_agentic`), per turn of each
    episode: tic-tac-toe turns alternate r0, r1, r0, r1; Kuhn r2, r3, r2, r3."""
    a = run(example_a)
    assert a[0] == pytest.approx([0.290945, -0.340488, 1.139007, -1.188550], abs=1e-5)
    assert a[1] == pytest.approx([0.290945, -0.340488, -1.405180, 1.553809], abs=1e-5)


def test_marshal_clips():
    """The fixed-opponent options: reward clip after centring (`reward_postprocess_agentic`), advantage clip last
    (`compute_advantage`). Clipped to +-0.5, every centred reward is +-0.5: N = 16, variance 8 * 0.25 / 15, scale
    sqrt(7.5); turn 2's return is +-0.5 * sqrt(7.5) = +-1.369306 and the advantages keep it (mean 0, variance 1),
    until the advantage clip at 1."""
    batch = [_episode("tictactoe", [(0, 0.05), (1, 0.05), (0, 1.05), (1, -0.95)]),
             _episode("kuhn_poker", [(0, 0.05), (1, 0.05 + LENPEN_3000), (0, -1.95), (1, 2.05)])]
    clipped = run(batch, reward_clip=0.5, marshal_baseline="none")
    r = 0.5 * math.sqrt(7.5) / math.sqrt(1 + 1e-8)
    assert _flat(clipped) == pytest.approx([0, 0, r, -r, 0, 0, -r, r], abs=1e-6)
    both = run(batch, reward_clip=0.5, advantage_clip=1.0, marshal_baseline="none")
    assert _flat(both) == pytest.approx([0, 0, 1, -1, 0, 0, -1, 1], abs=1e-6)


def test_marshal_fixed_opponent_trains_learner_seats_only(example_a):
    """Seat 1 is a fixed opponent: its turns get no advantage and no tokens in either whitening. Seat 0: centred
    [-0.5, 0.5] and [1, -1], N = 8, variance 2.5 / 7, returns [0, 0.836660] and [0, -1.673320]; no baseline; token
    mean -0.209165, variance 0.95."""
    a = run(example_a, learner=lambda ep, seat: seat == 0, marshal_baseline="none")
    assert a[0][1] is None and a[0][3] is None and a[1][1] is None and a[1][3] is None
    s = 1 / math.sqrt(0.95 + 1e-8)
    assert [a[0][0], a[0][2], a[1][0], a[1][2]] == pytest.approx(
        [0.209165 * s, 1.045825 * s, 0.209165 * s, -1.464155 * s], abs=1e-5)
    assert [a[0][0], a[0][2], a[1][2]] == pytest.approx([0.214599, 1.072994, -1.502191], abs=1e-6)


def test_marshal_options_and_config():
    assert run([]) == [] and run([_episode("tictactoe", [])]) == [[]]
    with pytest.raises(ValueError, match="marshal_baseline"):
        run([_episode("tictactoe", [(0, 1.0)])], marshal_baseline="mean")
    d = AdvantageConfig()
    assert (d.marshal_center, d.reward_clip, d.marshal_baseline, d.advantage_clip, d.marshal_eot_tokens) == (
        "game_seat", None, "distinct_per_seat", None, 1)
    fix = {"marshal_center": "game", "reward_clip": 10, "marshal_baseline": "none", "advantage_clip": 4}
    cfg = RunConfig.from_dict({"loop": {"algo": "marshal"}, "advantage": fix})
    assert (cfg.advantage.reward_clip, cfg.advantage.advantage_clip) == (10.0, 4.0)
    with pytest.raises(ValueError, match="^advantage.marshal_center: must be one of game_seat, game, none"):
        RunConfig.from_dict({"advantage": {"marshal_center": "seat"}})
    with pytest.raises(ValueError, match="^advantage.reward_clip: must be >= 0"):
        RunConfig.from_dict({"advantage": {"reward_clip": -1}})
