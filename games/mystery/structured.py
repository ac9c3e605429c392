"""Structured outputs for the murder mystery: every player act that has a closed set of choices (a conversation
move, a vote) and every judge score is requested with a JSON schema of the legal choices, which an endpoint with
structured-output support (vLLM: `extra_body={"structured_outputs": {"json": SCHEMA}}`) enforces while sampling.
Free-text acts (introductions, answers, the judge's reconstruction) are requested as plain text.

The game parses the reply leniently either way (game.parse_converse reads a JSON move, a JSON move cut short at
max_tokens, or a plain 'Ask NAME: QUESTION' line), so an endpoint without structured outputs still plays: the agent
sends the schema, and when the endpoint rejects the request field (HTTP 400) it drops it for the rest of its life
and asks again without it.
"""

from __future__ import annotations

import re
from typing import Any

import openai

from stratagem.agents.llm import LLMAgent
from stratagem.games.core import Observation, Reply

CONTENT_CHARS = 120  # longest question in a structured move: keeps the JSON within the player's token budget
_ASK = re.compile(r"^Ask (.+): QUESTION$")
_INVESTIGATE = re.compile(r"^Investigate (.+)$")


def _ints(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _object(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def move_schema(legal_actions: list[str], content_chars: int = CONTENT_CHARS) -> dict[str, Any] | None:
    """The schema of a conversation move from its legal actions ('Ask NAME: QUESTION', 'Investigate PLACE'):
    {"move": "Ask NAME" | "Investigate PLACE", "question": text}. One enum of whole moves (rather than separate
    action and target fields) makes an incoherent pair such as asking a place impossible; the question is bounded
    so that the JSON fits the player's token budget (it is ignored for an investigation)."""
    moves = [f"Ask {m.group(1)}" if (m := _ASK.match(a)) else a for a in legal_actions
             if _ASK.match(a) or _INVESTIGATE.match(a)]
    if not moves:
        return None
    return _object({"move": {"enum": moves}, "question": {"type": "string", "minLength": 2,
                                                          "maxLength": content_chars}})


JUDGE_SCHEMAS: dict[str, dict[str, Any]] = {
    "judge_utterance": _object({"suspicion": _ints(0, 2), "trust": _ints(0, 2)}),
    "judge_ici": _object({k: _ints(0, 20) for k in ("reasoning", "communication", "detail", "creativity")}),
    "judge_roleplay": _object({"roleplay": _ints(0, 20)}),
}


THOUGHT_CHARS = 400  # mirage: the THOUGHT before a structured move or score, bounded to fit the token budget
SCORE_PHASES = {"judge_suspicion": 2, "judge_trust": 2, "judge_ability": 20}  # mirage judges: phase -> top score


def schema_for(obs: Observation, content_chars: int = CONTENT_CHARS) -> dict[str, Any] | None:
    """The JSON schema of the reply to this observation, or None for a free-text reply. An observation that asks
    for a THOUGHT (the mirage protocol: `private["thought"]`) gets a bounded "thought" string first, so the
    reasoning still comes before the choice."""
    schema: dict[str, Any] | None
    if obs.phase in ("converse", "select"):
        schema = move_schema(obs.legal_actions, content_chars)
    elif obs.phase == "vote" and obs.legal_actions:
        schema = _object({"vote": {"enum": list(obs.legal_actions)}})
    elif obs.phase in SCORE_PHASES:
        schema = _object({"score": _ints(0, SCORE_PHASES[obs.phase])})
    else:
        schema = JUDGE_SCHEMAS.get(obs.phase)
    if schema is not None and obs.private.get("thought"):
        schema = _object({"thought": {"type": "string", "maxLength": THOUGHT_CHARS}, **schema["properties"]})
    return schema


class StructuredLLMAgent(LLMAgent):
    """An LLMAgent that adds the reply's JSON schema (see `schema_for`) to each request; it falls back to plain
    requests for good once the endpoint rejects the field. `structured` tells whether it is still on."""

    def __init__(self, *args: Any, content_chars: int = CONTENT_CHARS, **kw: Any):
        super().__init__(*args, **kw)
        self.structured = True
        self.content_chars = content_chars

    def request(self, observation: Observation) -> dict[str, Any]:
        kw = super().request(observation)
        schema = schema_for(observation, self.content_chars) if self.structured else None
        if schema is not None:
            kw["extra_body"] = {**kw["extra_body"], "structured_outputs": {"json": schema}}
        return kw

    async def act(self, observation: Observation) -> Reply:
        try:
            return await super().act(observation)
        except openai.BadRequestError as e:
            if not self.structured or schema_for(observation, self.content_chars) is None:
                raise
            if "context" in str(e).lower() and "length" in str(e).lower():
                raise
            self.structured = False
            return await super().act(observation)
