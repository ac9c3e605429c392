"""Exact Nash equilibria of the poker games: OpenSpiel's sequence-form linear program (Koller, Megiddo and von
Stengel 1996; `open_spiel.python.algorithms.sequence_form_lp`, solved with cvxpy), once per game and cached. MARS's
Leduc opponent is a Nash-equilibrium table (MARSHAL: roll/agentic/env/leduc_poker/ne.pkl.gz); a CFR average policy
is only near one (1000 iterations: 0.0118 chips exploitable), the LP's is exact to the solver's tolerance."""

from __future__ import annotations

import json
from typing import Any

from stratagem.agents.bots import CFR_GAMES, CFRAgent, policy_exploitability
from stratagem.files import Journal, StoreDamage
from stratagem.settings import cache_dir

NASH_GAMES = CFR_GAMES


def nash_policy(game: str) -> dict[str, dict[int, float]]:
    """A Nash equilibrium of `game` (information-state string -> action id -> probability), both seats in one
    table, from the sequence-form LP; cached as a committed Journal record under the user cache dir."""

    if game not in NASH_GAMES:
        raise ValueError(f"nash needs one of {sorted(NASH_GAMES)}, got {game!r}")
    cache = Journal(cache_dir() / "nash" / f"{game}.jsonl")
    if cache.path.exists():
        try:
            (rec,) = cache.records()
            return {k: {int(a): p for a, p in v.items()} for k, v in rec["policy"].items()}
        except (StoreDamage, ValueError):  # a damaged cache is derived data: solve again
            cache.path.unlink(missing_ok=True)
            cache.sidecar.unlink(missing_ok=True)
            cache = Journal(cache.path)
    table, value = _solve(game)
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.write_all([json.dumps({"game": game, "value_seat0": value, "policy": table})])
    return table


def _solve(game: str) -> tuple[dict[str, dict[int, float]], float]:
    import pyspiel
    from open_spiel.python import policy as policy_lib
    from open_spiel.python.algorithms import sequence_form_lp

    spiel = pyspiel.load_game(NASH_GAMES[game])
    v0, _, p0, p1 = sequence_form_lp.solve_zero_sum_game(spiel)
    merged = policy_lib.merge_tabular_policies([p0, p1], spiel)
    table: dict[str, dict[int, float]] = {}
    for key, i in merged.state_lookup.items():
        probs = merged.action_probability_array[i]
        table[key] = {int(a): max(0.0, float(probs[a])) for a in merged.legal_actions_mask[i].nonzero()[0]}
        total = sum(table[key].values()) or 1.0
        table[key] = {a: p / total for a, p in table[key].items()}  # solver round-off: probabilities sum to 1
    return table, float(v0)


def nash_exploitability(game: str) -> float:
    return policy_exploitability(game, nash_policy(game))


class NashAgent(CFRAgent):
    """Samples the exact Nash equilibrium of Kuhn or Leduc poker (`nash_policy`)."""

    def __init__(self, game: str, config: Any = None, seed: int = 0):
        self.config = config
        self.policy = nash_policy(game)
        self.seed = seed
        self.name = "nash"
