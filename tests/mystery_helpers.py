"""Scripted players and judge for the murder-mystery tests."""

from __future__ import annotations

import re

from stratagem.games.core import Observation, Reply


class ScriptedPlayers:
    """Replies from a per-character queue, in order; records the observations it saw."""

    name = "scripted"

    def __init__(self, replies: dict[str, list[str]]):
        self.replies = {k: list(v) for k, v in replies.items()}
        self.seen: list[Observation] = []

    async def act(self, obs: Observation) -> Reply:
        self.seen.append(obs)
        queue = self.replies[obs.role]
        assert queue, f"{obs.role} has no scripted reply left for phase {obs.phase}"
        text = queue.pop(0)
        return Reply(text=text, prompt_token_ids=[1, 2, 3], completion_token_ids=[4, 5], logprobs=[-0.1, -0.2],
                     model="scripted-model")


class ScriptedJudge:
    """utterance: scores by speaker; ici / roleplay / reconstruct: replies by character."""

    name = "scripted-judge"

    def __init__(self, utterance: dict[str, str], ici: dict[str, str], roleplay: dict[str, str],
                 reconstruct: dict[str, str]):
        self.tables = {"judge_utterance": utterance, "judge_ici": ici, "judge_roleplay": roleplay,
                       "judge_reconstruct": reconstruct}
        self.calls: list[Observation] = []

    async def act(self, obs: Observation) -> Reply:
        self.calls.append(obs)
        user = obs.messages[-1]["content"]
        table = self.tables[obs.phase]
        if obs.phase == "judge_utterance":
            name = re.search(r"Statement by (.+?): ", user).group(1)
        else:
            name = next((n for n in table if n in user.split("\n")[0] or f"of {n}:" in user), None)
        return Reply(text=table.get(name, ""))
