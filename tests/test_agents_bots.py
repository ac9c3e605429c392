"""The evaluation opponents: the CFR policies checked against OpenSpiel's exploitability, MCTS set up as MARS's."""

from __future__ import annotations

import pyspiel
import pytest
from open_spiel.python import policy as spiel_policy
from open_spiel.python.algorithms import exploitability

from stratagem.agents.bots import CFRConfig, MCTSConfig, cfr_policy, policy_exploitability


def test_kuhn_cfr_after_one_iteration_is_the_uniform_policy_with_its_known_exploitability(monkeypatch, tmp_path):
    monkeypatch.setenv("STRATAGEM_CACHE", str(tmp_path))
    table = cfr_policy("kuhn_poker", iterations=1)
    assert len(table) == 12  # Kuhn's information states: 3 cards x 4 betting histories
    assert all(p == pytest.approx(0.5) for probs in table.values() for p in probs.values())
    # the uniform policy is exploitable by 11/24 chips (OpenSpiel's Python best response agrees)
    uniform = exploitability.exploitability(pyspiel.load_game("kuhn_poker"),
                                            spiel_policy.UniformRandomPolicy(pyspiel.load_game("kuhn_poker")))
    assert uniform == pytest.approx(11 / 24)
    assert policy_exploitability("kuhn_poker", table) == pytest.approx(11 / 24)
    assert (tmp_path / "cfr" / "kuhn_poker-1.json").is_file()


def test_kuhn_cfr_average_policy_after_1000_iterations(monkeypatch, tmp_path):
    monkeypatch.setenv("STRATAGEM_CACHE", str(tmp_path))
    # measured with OpenSpiel 2.0.2's CFRSolver (deterministic): 0.4583 after 1, 0.0082 after 100, 0.00094 after 1000
    assert policy_exploitability("kuhn_poker", cfr_policy("kuhn_poker", 100)) == pytest.approx(0.0082260, abs=1e-6)
    table = cfr_policy("kuhn_poker", CFRConfig().iterations)
    assert policy_exploitability("kuhn_poker", table) == pytest.approx(0.00093762, abs=1e-7)
    # read back from the cache: the same policy
    assert cfr_policy("kuhn_poker", CFRConfig().iterations) == table


def test_leduc_nash_opponent_is_near_equilibrium():
    # the evaluation's Leduc opponent, solved once into the user cache dir (about 7 s the first time):
    # exploitability 0.0118 measured after 1000 CFR iterations (0.096 after 100, 0.036 after 300)
    table = cfr_policy("leduc_poker", CFRConfig().iterations)
    assert policy_exploitability("leduc_poker", table) < 0.015


def test_policy_exploitability_names_a_bad_game():
    with pytest.raises(ValueError, match="tictactoe"):
        policy_exploitability("tictactoe", {})


def test_mcts_is_set_up_as_mars_sets_up_its_opponents():
    c = MCTSConfig()
    assert (c.simulations, c.uct_c, c.rollouts, c.solve) == (100, 2.0, 10, False)
