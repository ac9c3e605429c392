"""Bots: random, MCTS (OpenSpiel's MCTSBot) and CFR (an OpenSpiel CFR average policy, computed once and cached).

A bot's randomness is derived from its own seed, the episode's seed and the turn number, so the same seeds give
the same games however many games run at once.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyspiel
from open_spiel.python.algorithms import mcts

from stratagem.games.core import Observation, Reply
from stratagem.settings import cache_dir


def _turn_seed(seed: int, obs: Observation) -> int:
    return hash((seed, obs.private.get("seed", 0), obs.private.get("turn", 0), obs.seat)) & 0x7FFFFFFF


def _reply(label: str) -> Reply:
    return Reply(text=f"<answer>{label}</answer>", action=label)


def _labels(obs: Observation) -> dict[int, str]:
    """OpenSpiel action id -> the game's label, for bots that think in action ids."""
    state = obs.private["state"]
    ids = state.legal_actions(obs.seat)
    if len(ids) != len(obs.legal_actions):
        raise ValueError(f"{obs.game}: {len(ids)} OpenSpiel actions but {len(obs.legal_actions)} labels")
    return dict(zip(ids, obs.legal_actions))


class RandomAgent:
    """Uniform over the legal actions."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.name = "random"

    async def act(self, obs: Observation) -> Reply:
        return _reply(random.Random(_turn_seed(self.seed, obs)).choice(obs.legal_actions))


@dataclass
class MCTSConfig:
    """OpenSpiel's MCTSBot as MARS's code sets it up for its tic-tac-toe and Connect Four opponents (UCT constant 2,
    10 random rollouts per leaf, no solver); the paper evaluates against 100 and 1000 simulations (tic-tac-toe) and
    10 and 100 (Connect Four)."""

    simulations: int = field(default=100, metadata={"help": "MCTS simulations per move.", "min": 1})
    uct_c: float = field(default=2.0, metadata={"help": "UCT exploration constant.", "min": 0.0})
    rollouts: int = field(default=10, metadata={"help": "Random rollouts per leaf evaluation.", "min": 1})
    solve: bool = field(default=False, metadata={"help": "Back up proven wins and losses (MCTS-Solver); MARS's "
                        "opponents do not."})


class MCTSAgent:
    """OpenSpiel's MCTSBot with random-rollout evaluation; perfect-information games only (on a poker state it
    would search the true deal, i.e. cheat)."""

    def __init__(self, config: MCTSConfig | None = None, seed: int = 0):
        self.config = config or MCTSConfig()
        self.seed = seed
        self.name = f"mcts:{self.config.simulations}"

    async def act(self, obs: Observation) -> Reply:
        state, spiel = obs.private["state"], obs.private["spiel"]
        if spiel.get_type().information != pyspiel.GameType.Information.PERFECT_INFORMATION:
            raise ValueError(f"mcts plays perfect-information games only; {obs.game} hides information "
                             "(use cfr for kuhn_poker / leduc_poker, or random)")
        rng = np.random.RandomState(_turn_seed(self.seed, obs))
        bot = mcts.MCTSBot(spiel, self.config.uct_c, self.config.simulations,
                           mcts.RandomRolloutEvaluator(self.config.rollouts, rng), random_state=rng,
                           solve=self.config.solve)
        return _reply(_labels(obs)[bot.step(state)])


@dataclass
class CFRConfig:
    iterations: int = field(default=1000, metadata={"help": "CFR iterations of the cached average policy (1000: "
                            "exploitability 0.0009 in Kuhn poker, 0.0118 in Leduc hold'em, i.e. near Nash).",
                            "min": 1})


CFR_GAMES = {"kuhn_poker": "kuhn_poker", "leduc_poker": "leduc_poker"}


def cfr_policy(game: str, iterations: int = 1000) -> dict[str, dict[int, float]]:
    """The CFR average policy of `game` (information-state string -> action id -> probability), computed by
    OpenSpiel once and cached as JSON under the user cache dir."""
    if game not in CFR_GAMES:
        raise ValueError(f"cfr needs one of {sorted(CFR_GAMES)}, got {game!r}")
    path = cache_dir() / "cfr" / f"{game}-{iterations}.json"
    if path.exists():
        raw = json.loads(path.read_text())
        return {k: {int(a): p for a, p in v.items()} for k, v in raw.items()}
    spiel = pyspiel.load_game(CFR_GAMES[game])
    solver = pyspiel.CFRSolver(spiel)
    for _ in range(iterations):
        solver.evaluate_and_update_policy()
    avg = solver.average_policy()
    table: dict[str, dict[int, float]] = {}

    def visit(state: pyspiel.State) -> None:
        if state.is_terminal():
            return
        if not state.is_chance_node():
            key = state.information_state_string()
            if key not in table:
                table[key] = {int(a): float(p) for a, p in avg.get_state_policy(key)}
        for a in (state.legal_actions() if not state.is_chance_node() else [a for a, _ in state.chance_outcomes()]):
            visit(state.child(a))

    visit(spiel.new_initial_state())
    _write_atomic(path, json.dumps(table))
    return table


def tabular_policy(table: dict[str, dict[int, float]]) -> pyspiel.TabularPolicy:
    """An OpenSpiel policy from an information-state table (as `cfr_policy` returns)."""
    return pyspiel.TabularPolicy({k: [(int(a), float(p)) for a, p in v.items()] for k, v in table.items()})


def policy_exploitability(game: str, table: dict[str, dict[int, float]]) -> float:
    """OpenSpiel's exploitability of a two-player zero-sum policy table: the mean of the best responses' values
    against it (0 exactly at a Nash equilibrium)."""
    if game not in CFR_GAMES:
        raise ValueError(f"policy_exploitability needs one of {sorted(CFR_GAMES)}, got {game!r}")
    return float(pyspiel.exploitability(pyspiel.load_game(CFR_GAMES[game]), tabular_policy(table)))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{random.getrandbits(32)}")
    tmp.write_text(text)
    tmp.replace(path)


class CFRAgent:
    """Samples the cached CFR average policy (Kuhn and Leduc poker): MARS's poker opponents, a CFR average policy in
    Kuhn and a Nash-equilibrium policy in Leduc; 1000 iterations leave Leduc 0.012 chips from equilibrium
    (`policy_exploitability`), so the same near-Nash average policy serves both."""

    def __init__(self, game: str, config: CFRConfig | None = None, seed: int = 0):
        self.config = config or CFRConfig()
        self.policy = cfr_policy(game, self.config.iterations)
        self.seed = seed
        self.name = "cfr"

    async def act(self, obs: Observation) -> Reply:
        state = obs.private["state"]
        probs = self.policy[state.information_state_string(obs.seat)]
        labels = _labels(obs)
        ids = [a for a in labels if probs.get(a, 0.0) > 0] or list(labels)
        weights = [probs.get(a, 0.0) for a in ids] if any(probs.get(a, 0.0) for a in ids) else None
        choice = random.Random(_turn_seed(self.seed, obs)).choices(ids, weights=weights)[0]
        return _reply(labels[choice])
