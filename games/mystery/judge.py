"""The judge: a model (any Agent; an LLM over the OpenAI-compatible endpoint in real games) that scores every
utterance for suspicion and trust, and every character for intelligence (ICI), role-play and a reconstruction of
their script (SCI). Replies are parsed leniently (JSON, `key: number` text, or bare numbers in order); a reply that
yields no number gets the default 0 for each missing score and is counted in `judge_parse_failures`. Numbers out
of range are clamped into it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from stratagem.agents.base import Agent
from stratagem.concurrency import map_concurrent
from stratagem.games.core import Observation
from stratagem.games.mystery import metrics as M
from stratagem.games.mystery.game import ANSWER, ASK, GAME, INTRODUCTION, MysteryConfig, MysteryState, clip
from stratagem.games.mystery.schema import Script

JUDGE_UTTERANCE, JUDGE_ICI, JUDGE_ROLEPLAY, JUDGE_RECONSTRUCT = (
    "judge_utterance", "judge_ici", "judge_roleplay", "judge_reconstruct")
JUDGE_SYSTEM = "You are the impartial judge of a murder mystery game. Follow the reply format exactly."
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Parsed:
    values: dict[str, float]
    ok: bool  # False when at least one value fell back to the default


def parse_scores(text: str, keys: tuple[str, ...], lo: float, hi: float, default: float = 0.0) -> Parsed:
    """Scores named `keys` from a judge reply. Tried in order: a JSON object (keys matched by prefix, any case);
    `key ... number` in the text; the bare numbers of the reply in the order of `keys`."""
    found: dict[str, float] = {}
    m = re.search(r"\{.*?\}", text, re.DOTALL)
    if m:
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            for k, v in obj.items():
                key = next((x for x in keys if str(k).lower().startswith(x[:5])), None)
                if key and isinstance(v, (int, float)) and not isinstance(v, bool):
                    found.setdefault(key, float(v))
    for key in keys:
        if key not in found:
            km = re.search(re.escape(key[:5]) + r"[a-z ]*\W{0,3}\s*(-?\d+(?:\.\d+)?)", text, re.IGNORECASE)
            if km:
                found[key] = float(km.group(1))
    if not found:
        nums = [float(x) for x in _NUM.findall(text)]
        found = dict(zip(keys, nums))
    ok = all(k in found for k in keys)
    return Parsed({k: min(hi, max(lo, found.get(k, default))) for k in keys}, ok)


def reply_format(keys: tuple[str, ...]) -> str:
    """The reply instruction of a score request: the JSON keys, without example values. A template with filled-in
    numbers ('{"reasoning": 0, ...}') is copied verbatim by a small model judging greedily, which made every ICI and
    role-play score 0; the structured-output schema (structured.JUDGE_SCHEMAS) already fixes the form."""
    return f"Reply with a JSON object with the keys {', '.join(keys)} and nothing else."


def _obs(phase: str, user: str) -> Observation:
    return Observation(game=GAME, seat=-1, role="judge", phase=phase, legal_actions=[],
                       messages=[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}])


def utterance_prompt(speaker: str, text: str, context: str) -> Observation:
    return _obs(JUDGE_UTTERANCE,
                f"Conversation before:\n{context}\n\nStatement by {speaker}: \"{text}\"\n"
                f"How suspicious does this statement make {speaker} look, and how trustworthy? Rate each with an "
                f"integer: 0 (not at all), 1 (somewhat) or 2 (very). {reply_format(('suspicion', 'trust'))}")


def behaviour(state: MysteryState, name: str, words: int) -> str:
    """What a character said and did, as the judge reads it (their legal acts, in order, clipped)."""
    lines = []
    for t in state.turns:
        if t["role"] == name and t["illegal_reason"] is None:
            said = t["response"] if t["phase"] in (INTRODUCTION, ANSWER) else t["action"]
            lines.append(f"- {t['phase']}: {said}")
    return clip("\n".join(lines), words) if lines else "(did nothing)"


def ici_prompt(name: str, acts: str) -> Observation:
    return _obs(JUDGE_ICI,
                f"Everything {name} said and did in the game:\n{acts}\n\nRate {name} on reasoning, communication, "
                "detail observation and creative thinking, each with an integer from 0 (very poor) to 20 "
                f"(excellent). {reply_format(M.ICI_KEYS)}")


def roleplay_prompt(name: str, role: str, acts: str) -> Observation:
    return _obs(JUDGE_ROLEPLAY,
                f"The role of {name}:\n{role}\n\nWhat {name} said and did:\n{acts}\n\nHow faithfully did {name} "
                f"play this role? Rate it with an integer from 0 (not at all) to 20 (perfectly). "
                f"{reply_format(('roleplay',))}")


def reconstruct_prompt(name: str, acts: str) -> Observation:
    return _obs(JUDGE_RECONSTRUCT,
                f"What {name} said and did in a murder mystery game:\n{acts}\n\nWrite {name}'s secret script: "
                f"who {name} is and what {name} did, in two to four sentences.")


@dataclass
class JudgeVerdict:
    metrics: dict[str, Any]
    utterance_scores: list[dict[str, Any]]  # per judged turn: index, speaker, suspicion, trust, ok, raw
    npc_scores: list[dict[str, Any]] = field(default_factory=list)  # mirage, rules.judge_npcs: per act and candidate


async def judge_game(judge: Agent, script: Script, state: MysteryState, config: MysteryConfig) -> JudgeVerdict:
    """Score every legal utterance and every character, then compute the metrics (see metrics.py)."""
    async def ask(obs: Observation) -> str:
        return (await judge.act(obs)).text or ""

    utter = [(i, t) for i, t in enumerate(state.turns)
             if t["illegal_reason"] is None and t["phase"] in (INTRODUCTION, ASK, ANSWER)]

    def utter_text(t: dict[str, Any]) -> str:
        return t["info"]["question"] if t["phase"] == ASK else t["response"]

    def context(i: int) -> str:
        before = [f"{t['role']}: {utter_text(t)}" for _, t in utter if _ < i][-6:]
        return clip("\n".join(before), config.judge_context_words) if before else "(none)"

    names = list(state.order)
    acts = {n: behaviour(state, n, 160) for n in names}
    roles = {n: clip(script.field_text(n, "Script"), 120) for n in names}
    prompts = [utterance_prompt(t["role"], clip(utter_text(t), 80), context(i)) for i, t in utter]
    for n in names:
        prompts += [ici_prompt(n, acts[n]), roleplay_prompt(n, roles[n], acts[n]), reconstruct_prompt(n, acts[n])]
    replies = await map_concurrent(ask, prompts, max(1, config.judge_concurrency))

    failures = 0
    scored: list[dict[str, Any]] = []
    for (i, t), raw in zip(utter, replies):
        p = parse_scores(raw, ("suspicion", "trust"), 0, 2)
        failures += not p.ok
        scored.append({"turn": i, "speaker": t["role"], "suspicion": int(round(p.values["suspicion"])),
                       "trust": int(round(p.values["trust"])), "ok": p.ok, "raw": raw})
    per_char: dict[str, dict[str, Any]] = {}
    rest = replies[len(utter):]
    for k, n in enumerate(names):
        ici_raw, rp_raw, rec_raw = rest[3 * k: 3 * k + 3]
        pi = parse_scores(ici_raw, M.ICI_KEYS, 0, 20)
        pr = parse_scores(rp_raw, ("roleplay",), 0, 20)
        failures += (not pi.ok) + (not pr.ok)
        per_char[n] = {**pi.values, "roleplay": pr.values["roleplay"],
                       "rouge_l": M.rouge_l(script.field_text(n, "Script"), rec_raw),
                       "raw": {"ici": ici_raw, "roleplay": rp_raw, "reconstruction": rec_raw}}

    triples = [(u["speaker"], u["suspicion"], u["trust"]) for u in scored]
    n_vote = config.vote_weight if config.vote_weight is not None else float(len(names))
    suspects = script.suspects  # the characters, or the candidates of a script whose players are detectives
    doubt = M.doubt_scores(suspects, [x for x in triples if x[0] in suspects], state.votes, n_vote)
    rank = M.ranking(suspects, doubt, state.votes)
    m: dict[str, Any] = M.game_scores(rank, script.culprits, M.tii(names, triples), len(state.revealed),
                                      script.total_clues, {n: per_char[n] for n in names}, state.turns)
    m.update({
        "judge_calls": len(prompts),
        "judge_parse_failures": failures,
        "doubt": doubt,
        "votes": dict(state.votes),
        "vote_weight": n_vote,
        "characters": per_char,
    })
    return JudgeVerdict(metrics=m, utterance_scores=scored)
