"""The human seat: a LangGraph interrupt shows the observation and waits; the graph resumes with
`Command(resume="<X(1,1)>")` (or the bare action). It must run inside a graph compiled with a checkpointer."""

from __future__ import annotations

from langgraph.types import interrupt

from stratagem.games.base import ReplyFormat, parse_answer
from stratagem.games.core import Observation, Reply


class HumanAgent:
    def __init__(self) -> None:
        self.name = "human"

    async def act(self, obs: Observation) -> Reply:
        move = interrupt({"game": obs.game, "seat": obs.seat, "prompt": obs.messages[-1]["content"],
                          "legal_actions": obs.legal_actions})
        move = str(move).strip()
        text = move if move.startswith("<answer>") else f"<answer>{move}</answer>"
        # a typed move is the whole answer: no forced model prefix goes before it
        action, _ = parse_answer(text, obs.legal_actions, ReplyFormat(response_prefix="", open_answer=True))
        return Reply(text=text, action=action if action is not None else move)
