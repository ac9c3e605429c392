"""`check_mystery`: the murder mystery's conformance check. Every shipped script (or the given ones) first passes
`games.testing.check_game`, the check every game passes (random legal games, the returns, the re-ask rule, the JSONL
round trip), with a fixed judge as its referee; then full games with seeded random agents (random legal moves,
some malformed replies) check what only the mystery has:

- termination within the turn bound (`MysteryGame.max_acts`);
- each seat's return equals the sum of its turn rewards;
- a civilian's prompts never contain a culprit's own script or the truth;
- the JSONL round trip of the episodes;
- the episode is complete: a vote for every character, a winner, the MIRAGE metrics.

Raises `ConformanceError` listing every failure; returns a `CheckReport` otherwise."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from pathlib import Path

from stratagem.games.core import Episode, Observation, Reply, read_jsonl, write_jsonl
from stratagem.games.mystery.game import CIVILIAN, CONVERSE, SELECT, VOTE, MysteryConfig, MysteryGame
from stratagem.games.mystery.library import load_script, shipped_scripts
from stratagem.games.mystery.mystery import Mystery
from stratagem.games.mystery.rollout import play_episode
from stratagem.games.testing import CheckReport, ConformanceError, check_game


class RandomPlayer:
    """Random legal moves, a malformed reply one time in `bad_every`; records every observation."""

    name = "random"

    def __init__(self, seed: int, bad_every: int = 5):
        self.rng, self.bad_every = random.Random(seed), bad_every
        self.seen: list[Observation] = []

    async def act(self, obs: Observation) -> Reply:
        self.seen.append(obs)
        if self.rng.randrange(self.bad_every) == 0:
            return Reply(text="hmm")
        if obs.phase in (CONVERSE, SELECT):
            return Reply(text=self.rng.choice(obs.legal_actions).replace("QUESTION", "where were you at nine?"))
        if obs.phase == VOTE:
            return Reply(text=self.rng.choice(obs.legal_actions))
        return Reply(text="I was in the hall all evening.")


class FixedJudge:
    name = "fixed-judge"

    async def act(self, obs: Observation) -> Reply:
        return Reply(text={"judge_utterance": '{"suspicion": 1, "trust": 1}',
                           "judge_ici": '{"reasoning": 10, "communication": 10, "detail": 10, "creativity": 10}',
                           "judge_roleplay": '{"roleplay": 10}', "judge_suspicion": '{"score": 1}',
                           "judge_trust": '{"score": 1}', "judge_ability": '{"score": 10}'}.get(
            obs.phase, "A short reconstruction."))


def _hidden_texts(script) -> list[str]:
    """Snippets no civilian may ever see: the truth and each culprit's own script (first stage)."""
    out = [script.truth[:80]] if script.truth.strip() else []
    for c in script.culprits:
        if c in script.characters:
            text = script.stages[0].characters[c].get("Script", "").strip()
            if len(text) >= 40:
                out.append(text[-60:])  # the end: a prologue shared by every character comes first
    return out


def check_mystery(workdir: str | Path | None = None, scripts: Iterable[str] | None = None, games: int = 2,
                  seed: int = 0, config: MysteryConfig | None = None) -> CheckReport:

    cfg = config or MysteryConfig(rounds=2)
    failures: list[str] = []
    for name in list(scripts or shipped_scripts()):
        try:
            check_game(Mystery.deal(name, seed, cfg), episodes=games, seed=seed, workdir=workdir,
                       referees={"judge": FixedJudge(), "evaluator": FixedJudge(), "summariser": FixedJudge()})
        except ConformanceError as e:
            failures.append(f"{name}: {e}")
    eps: list[Episode] = []
    max_turns = 0
    names = list(scripts or shipped_scripts())
    for name in names:
        script = load_script(name)
        bound = MysteryGame.new(script, 0, cfg).max_acts()
        hidden = _hidden_texts(script)
        for g in range(games):
            player = RandomPlayer(seed * 1000 + g)
            ep = asyncio.run(play_episode(name, player, FixedJudge(), cfg, seed + g))
            eps.append(ep)
            max_turns = max(max_turns, len(ep.turns))
            where = f"{script.name} game {g}"
            if len(ep.turns) > bound:
                failures.append(f"{where}: {len(ep.turns)} acts > the bound {bound}")
            for s in ep.seats:
                total = sum(t.reward for t in ep.turns if t.seat == s.index)
                if abs(total - ep.returns[s.index]) > 1e-9:
                    failures.append(f"{where}: seat {s.index} return {ep.returns[s.index]} != sum of turn rewards "
                                    f"{total}")
            for obs in player.seen:
                if script.culprits and obs.role not in script.culprits:
                    text = "\n".join(m["content"] for m in obs.messages)
                    leaked = [h for h in hidden if h in text]
                    if leaked:
                        failures.append(f"{where}: civilian {obs.role} saw hidden text {leaked[0][:30]!r}")
                        break
            if ep.winning_faction not in (CIVILIAN, "culprit") or "overall" not in ep.metrics:
                failures.append(f"{where}: no winner or no metrics")
            if len(ep.metrics.get("votes", {})) + sum(1 for t in ep.turns if t.phase == VOTE and
                                                       t.info.get("passed")) != len(script.characters):
                failures.append(f"{where}: not every character voted or abstained")
    if workdir is not None:
        path = Path(workdir) / "mystery.jsonl"
        write_jsonl(eps, path)
        back = list(read_jsonl(path))
    else:
        back = [Episode.from_json(e.to_json()) for e in eps]
    if [e.to_dict() for e in back] != [e.to_dict() for e in eps]:
        failures.append("episodes changed in the JSONL round trip")
    if failures:
        raise ConformanceError("mystery: " + "; ".join(failures))
    return CheckReport(game="mystery", episodes=len(eps), max_turns_seen=max_turns, hidden_info_keys=len(names))
