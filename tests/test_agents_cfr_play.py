"""The CFR bot as it plays (not only its policy table): the actions CFRAgent picks at every Kuhn poker information
state, over many seeds, follow the table, and OpenSpiel's exploitability of that played policy has the known values:
11/24 for the uniform policy (one CFR iteration), close to 0 (Nash) after 1000 iterations."""

import asyncio
import math
from collections import Counter, defaultdict

import pyspiel
import pytest

from stratagem.agents.bots import CFRAgent, CFRConfig
from stratagem.games.core import Observation

SEEDS = 1500


def _decision_states(game: pyspiel.Game) -> list[pyspiel.State]:
    """One state per information state of the player to act (Kuhn: 12)."""
    out: dict[str, pyspiel.State] = {}

    def visit(state: pyspiel.State) -> None:
        if state.is_terminal():
            return
        if state.is_chance_node():
            for a, _ in state.chance_outcomes():
                visit(state.child(a))
            return
        out.setdefault(state.information_state_string(), state.clone())
        for a in state.legal_actions():
            visit(state.child(a))

    visit(game.new_initial_state())
    return list(out.values())


def _played(agent: CFRAgent, state: pyspiel.State) -> Counter:
    """How often the agent picks each OpenSpiel action at `state` over SEEDS episode seeds."""
    seat = state.current_player()
    ids = state.legal_actions(seat)
    labels = [f"a{a}" for a in ids]

    async def picks() -> list[str]:
        return [(await agent.act(Observation(game="kuhn_poker", seat=seat, role=str(seat), phase="play",
                                             messages=[], legal_actions=labels,
                                             private={"state": state, "seed": s, "turn": 0}))).action
                for s in range(SEEDS)]

    return Counter(ids[labels.index(x)] for x in asyncio.run(picks()))


def _played_policy(iterations: int) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    agent = CFRAgent("kuhn_poker", CFRConfig(iterations=iterations))
    played: dict[str, dict[int, float]] = defaultdict(dict)
    for state in _decision_states(pyspiel.load_game("kuhn_poker")):
        counts = _played(agent, state)
        key = state.information_state_string()
        played[key] = {a: counts[a] / SEEDS for a in state.legal_actions()}
    return agent.policy, dict(played)


def _exploitability(table: dict[str, dict[int, float]]) -> float:
    policy = pyspiel.TabularPolicy({k: list(v.items()) for k, v in table.items()})
    return float(pyspiel.exploitability(pyspiel.load_game("kuhn_poker"), policy))


@pytest.mark.parametrize("iterations, known, tolerance", [(1, 11 / 24, 0.02), (1000, 0.00093762, 0.02)])
def test_cfr_agent_plays_its_table(monkeypatch, tmp_path, iterations, known, tolerance):
    monkeypatch.setenv("STRATAGEM_CACHE", str(tmp_path))
    table, played = _played_policy(iterations)
    assert len(played) == 12 and set(played) == set(table)
    for key, probs in played.items():
        for a, freq in probs.items():
            p = table[key].get(a, 0.0)
            if p == 0.0:
                assert freq == 0.0, (key, a)  # an action the policy never takes is never played
            else:  # within 5 standard errors of the binomial
                assert abs(freq - p) <= 5 * math.sqrt(p * (1 - p) / SEEDS) + 1e-9, (key, a, freq, p)
    assert _exploitability(table) == pytest.approx(known, abs=1e-6)
    assert _exploitability(played) == pytest.approx(known, abs=tolerance)
