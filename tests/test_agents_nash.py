"""The exact poker equilibria: the sequence-form LP's policy is a Nash equilibrium (exploitability ~0, the known
game values), cached, and playable as the `nash` opponent."""

import asyncio

import pytest

from stratagem.agents import check_agent_spec, make_agent
from stratagem.agents.bots import cfr_policy, policy_exploitability
from stratagem.agents.equilibrium import nash_policy


@pytest.mark.parametrize("game,value", [("kuhn_poker", -1 / 18), ("leduc_poker", -0.085606)])
def test_the_lp_policy_is_an_exact_equilibrium(game, value, tmp_path, monkeypatch):
    monkeypatch.setenv("STRATAGEM_CACHE", str(tmp_path))
    table = nash_policy(game)
    assert policy_exploitability(game, table) < 1e-6  # a CFR average policy of 1000 iterations: 1e-3 to 1e-2
    assert policy_exploitability(game, table) < policy_exploitability(game, cfr_policy(game, 100))
    from stratagem.files import Journal

    rec = Journal(tmp_path / "nash" / f"{game}.jsonl").records()[0]
    assert rec["value_seat0"] == pytest.approx(value, abs=1e-5)  # Kuhn: -1/18 for the first player
    assert nash_policy(game) == table  # from the cache
    for probs in table.values():
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9) and min(probs.values()) >= 0.0


def test_nash_agent_plays_leduc(tmp_path, monkeypatch):
    from stratagem.games.rollout import collect_episodes

    monkeypatch.setenv("STRATAGEM_CACHE", str(tmp_path))
    check_agent_spec("nash", game="leduc_poker")
    with pytest.raises(ValueError, match="nash plays"):
        check_agent_spec("nash", game="tictactoe")
    agents = [make_agent("nash", game="leduc_poker", seed=1), make_agent("random", seed=2)]
    eps = asyncio.run(collect_episodes("leduc_poker", agents, 4, 2, seed=0))
    assert len(eps) == 4 and all(ep.seats[0].agent == "nash" for ep in eps)
