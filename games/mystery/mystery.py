"""The murder mystery as a `Game` (games/base.py), so that the one graph builder (games/graph.py), the one rollout
with game retries (games/rollout.py) and the one conformance check (`check_game`) serve it as they serve the
strategic games: the rules of game.py, its judges and history summariser as the game's referee, the Episode.

Referee roles (the `referees` of `build_graph`, `play`, `collect_episodes` and `check_game`): `judge`, the
stratagem protocol's single judge; under the mirage protocol `culprit` and `civilian` (each statement is judged by
the model of its speaker's side; a missing side falls back to `judge`), `evaluator` (ICI and SCI; default the
civilians' judge) and `summariser` (the history once it passes history_tokens; default the evaluator). The judges'
scores decide the outcome (the doubt ranking names the accused), so the game is over only once they are in.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from stratagem.agents.base import Agent
from stratagem.games.base import Game, GameInfo, ReaskRule
from stratagem.games.core import Episode, Observation, Reply, Seat, Turn
from stratagem.games.mystery.game import (
    CIVILIAN,
    CONVERSE,
    CULPRIT,
    GAME,
    JUDGE,
    SELECT,
    VOTE,
    MysteryConfig,
    MysteryGame,
    MysteryState,
)
from stratagem.games.mystery.judge import judge_game
from stratagem.games.mystery.library import load_script
from stratagem.games.mystery.mirage_judge import judge_game_mirage
from stratagem.games.mystery.prompting import split_thought
from stratagem.games.mystery.schema import Script
from stratagem.games.mystery.summary import hf_token_counter
from stratagem.models import resolve

JUDGE_TASK, SUMMARISE = "judge", "summarise_history"
HUMAN = "human"


class Mystery(MysteryGame, Game):
    """One murder-mystery game of one script; `reset(seed)` deals a fresh one (the same summaries)."""

    def __init__(self, script: Script, state: MysteryState, config: MysteryConfig,
                 count_tokens: Callable[[str], int] | None = None):
        super().__init__(script, state, config)
        self.info = GameInfo(name=GAME, num_players=len(script.characters), roles=tuple(script.characters),
                             max_turns=self.max_acts(), zero_sum=False, cooperative=False,
                             perfect_information=False)
        self.params: dict[str, Any] = {"script": script.name}
        self._count = count_tokens

    @classmethod
    def deal(cls, script: Script | str, seed: int = 0, config: MysteryConfig | None = None,
             summaries: dict[str, list[str]] | None = None,
             count_tokens: Callable[[str], int] | None = None) -> Mystery:
        """A fresh game of `script` (a Script, a shipped name or a folder) dealt with `seed`."""
        s = load_script(script) if isinstance(script, str) else script
        game = cls(s, MysteryGame.new(s, seed, config or MysteryConfig(), summaries).state, config or MysteryConfig(),
                   count_tokens)
        return game

    @classmethod
    def restore(cls, state: MysteryState, config: MysteryConfig,
                count_tokens: Callable[[str], int] | None = None) -> Mystery:
        """The game a stored state is at (the mystery app keeps its state in the graph state)."""
        return cls(load_script(state.script_path), state, config, count_tokens)

    # ---- the Game interface ------------------------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        self.state = MysteryGame.new(self.script, seed, self.config, self.state.summaries).state

    def current_seat(self) -> int | None:
        if self.state.phase == JUDGE or self.referee_task() is not None:
            return None
        return self.seat(self.acting())

    def observe(self, seat: int) -> Observation:
        obs = self.observation(self.retry_reason())
        if obs.seat != seat:
            raise ValueError(f"{GAME}: seat {seat} does not act now (seat {obs.seat}, {obs.role}, does)")
        return obs

    def step(self, seat: int, reply: Reply) -> Turn:
        return self.apply(self.observe(seat), reply, reply.model)

    def is_over(self) -> bool:
        return self.state.verdict is not None

    def winner(self) -> str:
        if self.state.verdict is None:
            raise ValueError(f"{GAME}: the game has not been judged yet")
        return CIVILIAN if self.state.verdict["metrics"]["civilians_win"] else CULPRIT

    def raw_returns(self) -> list[float]:
        w, win = self.winner(), self.config.win_return
        return [win if self.faction(n) == w else -win for n in self.script.characters]

    def normal_loss(self, seat: int) -> float:
        return self.config.win_return

    def reask_rule(self) -> ReaskRule:
        return ReaskRule(reasks=self.config.max_reasks, penalty=self.config.failed_action_penalty)

    def legal_act_reward(self) -> float:
        return 0.0

    def random_reply(self, seat: int, observation: Observation, rng: random.Random) -> Reply:
        if observation.phase in (CONVERSE, SELECT):
            move = rng.choice(observation.legal_actions).replace("QUESTION", "where were you at nine?")
            return Reply(text=move[len(observation.response_prefix):] if move.startswith(observation.response_prefix)
                         else move)
        if observation.phase == VOTE:
            return Reply(text=rng.choice(observation.legal_actions))
        return Reply(text="I was in the hall all evening.")

    def bad_replies(self) -> dict[str, Reply]:
        return {"empty reply": Reply(text=""), "blank reply": Reply(text="  \n ")}

    # ---- the referee -------------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        if self._count is None:
            self._count = hf_token_counter(resolve(self.config.tokenizer))
        return self._count(text)

    def referee_task(self) -> str | None:
        st = self.state
        if st.phase == JUDGE:
            return JUDGE_TASK if st.verdict is None else None
        # mirage: MIRAGE's token check on the history before each act; one try per length of the history
        if (self.mirage and len(st.public) > st.history_checked
                and self.count_tokens(self.history_text()) > self.config.history_tokens):
            return SUMMARISE
        return None

    async def referee(self, task: str, referees: Mapping[str, Agent]) -> dict[str, Any]:
        if task == SUMMARISE:
            P = self.prompts
            obs = Observation(game=GAME, seat=-1, role="summariser", phase=SUMMARISE, legal_actions=[],
                              messages=[{"role": "user", "content": P["history_summary"].format(
                                  text=self.history_text()) + "\n\n" + P["reply_format"].format(
                                  response=P["history_summary_response"])}])
            agent = referees.get("summariser") or referees.get("evaluator") or _role(referees, CIVILIAN)
            return {"text": split_thought((await agent.act(obs)).text or "")[1]}
        if task != JUDGE_TASK:
            raise ValueError(f"{GAME}: unknown referee task {task!r}")
        if self.mirage:
            sides = {side: _role(referees, side) for side in (CULPRIT, CIVILIAN)}
            verdict = await judge_game_mirage(sides, referees.get("evaluator") or sides[CIVILIAN], self.script,
                                              self.state, self.config)
        else:
            verdict = await judge_game(_role(referees, "judge"), self.script, self.state, self.config)
        return {"metrics": verdict.metrics, "utterance_scores": verdict.utterance_scores}

    def apply_referee(self, task: str, record: dict[str, Any]) -> None:
        if task == SUMMARISE:
            self.add_history_summary(record["text"])
        elif task == JUDGE_TASK:
            self.state.verdict = record
        else:
            raise ValueError(f"{GAME}: unknown referee task {task!r}")

    # ---- the finished game -------------------------------------------------------------------------------------
    def episode(self, seats: list[Seat]) -> Episode:
        """The judged game: each faction's outcome (+-win_return) credited to each seat's last turn on top of its
        failed-action penalties, the judges' scores on the turns they scored, the metrics of the verdict."""
        script, st, cfg = self.script, self.state, self.config
        winner, verdict = self.winner(), st.verdict
        assert verdict is not None  # winner() raised otherwise
        turns = [Turn(**t) for t in st.turns]
        for u in verdict["utterance_scores"]:
            turns[u["turn"]].info["judge"] = {k: u[k] for k in ("suspicion", "trust", "ok", "raw")}
        agents = {s.index: s.agent for s in seats}
        out = [Seat(index=i, role=n, agent=agents.get(i, ""), faction=self.faction(n), name=n)
               for i, n in enumerate(script.characters)]
        outcome = self.raw_returns()
        for seat, i in {t.seat: i for i, t in enumerate(turns)}.items():
            turns[i].reward += outcome[seat]
        returns = [sum(t.reward for t in turns if t.seat == s.index) for s in out]
        humans = [s.name for s in out if s.agent == HUMAN]
        return Episode(
            game=GAME, seed=st.seed, seats=out, turns=turns, returns=returns,
            winners=[s.index for s in out if s.faction == winner], end_reason="vote", winning_faction=winner,
            id=f"mystery-{script.name}-{st.seed}-{uuid.uuid4().hex[:8]}", metrics=verdict["metrics"],
            params={"script": script.name, "script_path": script.path, "title": script.title,
                    "stages": len(script.stages), "rounds": cfg.rounds, "order": st.order,
                    "culprits": script.culprits, "max_reasks": cfg.max_reasks, "revealed": st.revealed,
                    "human_seats": humans, "protocol": cfg.protocol},
        )


def _role(referees: Mapping[str, Agent], role: str) -> Agent:
    """The referee of `role`; a side's judge falls back to the single `judge`."""
    agent = referees.get(role) or (referees.get("judge") if role in (CULPRIT, CIVILIAN) else None)
    if agent is None:
        raise KeyError(f"{GAME}: no referee for {role!r}; given: {', '.join(referees) or 'none'} (expected judge, "
                       "or culprit and civilian under the mirage protocol)")
    return agent
