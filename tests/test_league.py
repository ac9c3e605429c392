"""League play (training/league.py): who the learner meets, how the run seats and serves them, and the exact ratings
of a pool."""

from __future__ import annotations

import math
from collections import Counter

import pyspiel
import pytest
from training_fakes import bots_in_llm_seats

from stratagem.games.core import Episode, Seat
from stratagem.integrations.exact_eval import PolicyTable, bot_table
from stratagem.training.league import (
    LeagueConfig,
    draw_opponents,
    elo,
    exact_win,
    league_metrics,
    policies_in_play,
    pool,
    rating_table,
)


def test_the_pool_is_the_newest_past_policies_before_the_learner():
    cfg = LeagueConfig(pool=2)
    assert pool(cfg, 1) == []  # the learner is base: nothing before it
    assert pool(cfg, 2) == ["base"]
    assert pool(cfg, 5) == ["iter-2", "iter-3"]  # learner iter-4
    assert policies_in_play(cfg, 5) == [2, 3] and policies_in_play(cfg, 2) == []
    assert pool(LeagueConfig(pool=0), 5) == []


def test_draws_follow_the_configured_probabilities_and_the_seed():
    cfg = LeagueConfig(pool=3, latest=1, latest_prob=0.5)
    n = 4000
    draws = Counter(draw_opponents(cfg, 5, s, 1, "iter-4")[0] for s in range(n))
    # pool at k=5: iter-1, iter-2, iter-3; recent = [iter-3] half the time, the older two a quarter each
    assert set(draws) == {"llm:iter-1", "llm:iter-2", "llm:iter-3"}
    assert abs(draws["llm:iter-3"] / n - 0.5) < 0.03
    assert abs(draws["llm:iter-1"] / n - 0.25) < 0.03 and abs(draws["llm:iter-2"] / n - 0.25) < 0.03
    assert [draw_opponents(cfg, 5, 7, 2, "iter-4") for _ in range(3)] == [draw_opponents(cfg, 5, 7, 2, "iter-4")] * 3
    # self-play always: the current policy; an empty pool (k = 1): the current policy too
    assert draw_opponents(LeagueConfig(pool=3, self_play=1.0), 5, 1, 1, "iter-4") == ["llm:iter-4"]
    assert draw_opponents(LeagueConfig(pool=3), 1, 1, 1, "base") == ["llm:base"]
    # bots join the older group: with one past policy and latest_prob 0, every draw is a bot
    bots = Counter(draw_opponents(LeagueConfig(pool=1, latest_prob=0.0, bots=["random", "cfr"]), 3, s, 1, "iter-2")[0]
                   for s in range(400))
    assert set(bots) == {"random", "cfr"}
    # no older group: the recent one takes every draw whatever latest_prob says
    assert {draw_opponents(LeagueConfig(pool=1, latest_prob=0.0), 3, s, 1, "iter-2")[0] for s in range(50)} \
        == {"llm:iter-1"}


async def test_the_rollout_seats_each_games_drawn_opponents_and_trains_only_the_learner(monkeypatch):
    from stratagem.training.loop import RunConfig, default_rollout, learner_for

    bots_in_llm_seats(monkeypatch)  # bots in the LLM seats, named as the served policies: no server needed
    cfg = RunConfig.from_dict({"loop": {"games": ["kuhn_poker"], "episodes_per_iteration": 24,
                                        "policy_seat": "alternate",
                                        "league": {"pool": 2, "latest": 1, "bots": ["random"]}}})
    eps = await default_rollout(cfg, "http://127.0.0.1:9/v1")("kuhn_poker", "iter-3", 24, 500, None)
    assert [e.seed for e in eps] == list(range(500, 524))
    seen = set()
    for e in eps:
        seat = e.metrics["policy_seat"]
        assert seat == e.seed % 2  # alternating by the game's seed
        assert e.seats[seat].agent == "llm:iter-3"
        opponent = e.seats[1 - seat].agent
        assert [opponent] == draw_opponents(cfg.loop.league, 4, e.seed, 1, "iter-3")
        seen.add(opponent)
    assert seen == {"llm:iter-2", "llm:iter-1", "random"}  # learner iter-3: pool iter-1, iter-2, plus the bot
    learner = learner_for(cfg.loop)
    assert all(learner(e, s) == (s == e.metrics["policy_seat"]) for e in eps for s in (0, 1))
    m = league_metrics(eps)
    assert sum(v for k, v in m.items() if k.startswith("league/games_vs/")) == 24
    vs_random = [e for e in eps if e.seats[1 - e.metrics["policy_seat"]].agent == "random"]
    assert m["league/return_vs/random"] == pytest.approx(
        sum(e.metrics["raw_returns"][e.metrics["policy_seat"]] for e in vs_random) / len(vs_random))


def test_the_run_installs_the_pools_adapters_once_and_again_after_a_restart(tmp_path):
    from stratagem.training.loop import PolicyServer

    class Serving:
        def __init__(self):
            self.installed, self.restarts = [], 0

        def install(self, name, path, merged=False):
            self.installed.append(name)
            return {}

        def restart(self):
            self.restarts += 1

    class Store:
        def adapter_dir(self, k):
            return tmp_path / f"iter-{k}"

    serving = Serving()
    policies = PolicyServer(serving, Store(), merged=False)
    policies.install(3)
    policies.ensure([1, 2, 3])
    policies.ensure([1, 2])
    assert serving.installed == ["iter-3", "iter-1", "iter-2"]
    policies.restart()
    policies.ensure([2])
    assert serving.installed[-1] == "iter-2" and serving.restarts == 1 and policies.installed == {2}


def test_league_settings_are_checked_before_the_run():
    from stratagem.config import flag_parser, parse_flags
    from stratagem.training.loop import RunConfig

    cfg = RunConfig.from_dict({"loop": {"games": ["kuhn_poker"], "league": {"pool": 2, "bots": ["cfr"]}}})
    assert cfg.loop.league.pool == 2 and cfg.loop.league.bots == ["cfr"]
    overrides, _ = parse_flags(flag_parser(RunConfig), ["--loop.league.pool", "3", "--loop.league.latest-prob",
                                                        "0.25"])
    assert overrides == {"loop": {"league": {"pool": 3, "latest_prob": 0.25}}}
    bad = [({"opponents": ["random"], "league": {"pool": 1}}, "loop.opponents must be empty"),
           ({"games": ["mystery"], "league": {"pool": 1}}, "mystery is full self-play"),
           ({"league": {"bots": ["random"]}}, "league play is off"),
           ({"games": ["kuhn_poker"], "league": {"pool": 1, "bots": ["nosuchbot"]}}, r"loop.league.bots\[0\]"),
           ({"league": {"pool": 1}, "policy_weights": "merged"}, "league opponents are served adapters"),
           ({"league": {"pool": 1, "latest_prob": 1.5}}, "latest_prob")]
    for loop, match in bad:
        with pytest.raises(ValueError, match=match):
            RunConfig.from_dict({"loop": loop})
    assert RunConfig.from_dict({"loop": {"league": {"pool": 1}, "policy_seat": "alternate"}}).loop.league.pool == 1


# ---- ratings ----------------------------------------------------------------------------------------------------

def test_elo_hand_checks():
    r = elo({("A", "B"): 0.75}, anchor="B")
    assert r["B"] == 0.0 and r["A"] == pytest.approx(400 * math.log10(3), abs=1e-3)  # 190.85
    r = elo({("A", "B"): 0.75, ("B", "C"): 0.75, ("A", "C"): 0.9}, anchor="C")  # odds 3, 3, 9: exactly BT
    assert r["A"] == pytest.approx(400 * math.log10(9), abs=1e-3) and r["B"] == pytest.approx(190.85, abs=1e-2)
    r = elo({("A", "B"): 0.25}, anchor="A")  # the order of a pair does not matter
    assert r["B"] == pytest.approx(190.85, abs=1e-2)
    with pytest.raises(ValueError, match="anchor"):
        elo({("A", "B"): 0.5}, anchor="Z")


def _constant(action: int) -> PolicyTable:
    """Kuhn poker's policy that always plays `action` (0 pass / fold, 1 bet / call) at every information state."""
    table = {}

    def walk(state):
        if state.is_terminal():
            return
        if not state.is_chance_node():
            table[state.information_state_string()] = {action: 1.0}
        for a in ([a for a, _ in state.chance_outcomes()] if state.is_chance_node() else state.legal_actions()):
            walk(state.child(a))

    walk(pyspiel.load_game("kuhn_poker").new_initial_state())
    return PolicyTable("kuhn_poker", table, {k: 1.0 for k in table})


def test_exact_wins_by_hand_in_kuhn_poker():
    passer, bettor = _constant(0), _constant(1)
    # the bettor bets (first) or bets after a pass (second) and the passer folds: the bettor wins every game
    assert exact_win("kuhn_poker", bettor, passer) == 1.0
    assert exact_win("kuhn_poker", passer, bettor) == 0.0
    # two passers (or two bettors) always reach the showdown: the higher card wins, half the deals each
    assert exact_win("kuhn_poker", passer, passer) == pytest.approx(0.5)
    assert exact_win("kuhn_poker", bettor, bettor) == pytest.approx(0.5)
    rnd, cfr = bot_table("kuhn_poker", "random"), bot_table("kuhn_poker", "cfr")
    assert exact_win("kuhn_poker", cfr, rnd) + exact_win("kuhn_poker", rnd, cfr) == pytest.approx(1.0)


def test_the_rating_table_of_a_pool():
    tables = {"random": bot_table("kuhn_poker", "random"), "cfr": bot_table("kuhn_poker", "cfr"),
              "passer": _constant(0), "bettor": _constant(1)}
    out = rating_table("kuhn_poker", tables, anchor="random")
    assert out["elo"]["random"] == 0.0 and out["elo"]["cfr"] > 0
    assert out["win"]["bettor"]["passer"] == 1.0 and out["win"]["passer"]["bettor"] == 0.0
    # the bettor against the passer: +1 chip (the ante) in every game, both seat orders; on Kuhn's range [-2, 2]
    # that is the score (1 + 2) / 4
    assert out["return"]["bettor"]["passer"] == pytest.approx(1.0)
    assert out["score"]["bettor"]["passer"] == pytest.approx(0.75)
    assert out["elo"]["bettor"] > out["elo"]["passer"]
    # CFR takes chips from random (Elo above it) while winning fewer hands than it loses
    assert out["return"]["cfr"]["random"] > 0 and out["win"]["cfr"]["random"] < 0.5
    for a in tables:
        for b in tables:
            if a != b:
                assert out["score"][a][b] + out["score"][b][a] == pytest.approx(1.0)
                assert out["win"][a][b] + out["win"][b][a] == pytest.approx(1.0)
                assert out["return"][a][b] == pytest.approx(-out["return"][b][a])


def test_league_metrics_count_games_and_mean_returns_per_opponent():
    def ep(seat, opponent, raw):
        seats = [Seat(0, "p0", "x"), Seat(1, "p1", "x")]
        seats[seat].agent, seats[1 - seat].agent = "llm:iter-3", opponent
        return Episode("kuhn_poker", 0, seats, [], [0.0, 0.0], metrics={"policy_seat": seat, "raw_returns": raw})

    m = league_metrics([ep(0, "llm:iter-1", [1.0, -1.0]), ep(1, "llm:iter-1", [2.0, -2.0]),
                        ep(0, "random", [-1.0, 1.0]),
                        Episode("kuhn_poker", 0, [Seat(0, "p0", "x"), Seat(1, "p1", "x")], [], [0.0, 0.0])])
    assert m == {"league/games_vs/llm:iter-1": 2.0, "league/return_vs/llm:iter-1": -0.5,
                 "league/games_vs/random": 1.0, "league/return_vs/random": -1.0}
