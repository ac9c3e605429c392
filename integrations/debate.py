"""Multi-agent debate on the OpenAI client: the Liang et al. MAD protocol and the Du et al. protocol.

MAD (Liang et al., 2023, "Encouraging Divergent Thinking in Large Language Models through Multi-Agent Debate"): an
affirmative debater answers, a negative debater disagrees, and after each round a moderator returns JSON saying
whether it prefers a side, which, why, and the debate answer; the debate stops at the first preference or after
`rounds` rounds, when a judge lists the candidates and picks the final answer. The structure follows the paper's code;
the words are the project's own (integrations/prompts/maslab.yaml, shared with the maslab protocol).

Du et al. (2023, "Improving Factuality and Reasoning in Language Models through Multiagent Debate"): N agents answer;
for R rounds each sees the others' latest answers and revises; the final answer is the majority vote.

Every message sent and received is kept in the `Solution.transcript`, in order. The moderator's JSON is parsed
without `eval`: a malformed verdict is data (no preference), never a crash.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stratagem.agents.llm import LLMAgent, LLMAgentConfig
from stratagem.games.core import Observation
from stratagem.integrations.benchmarks import Question, extract_answer, instruction, task_text


@dataclass
class Solution:
    """What a multi-agent system produced for one question."""

    prediction: str | None = field(default=None, metadata={"help": "Extracted final answer (None: none found)."})
    final_text: str = field(default="", metadata={"help": "The text the final answer was extracted from."})
    transcript: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "Every message, in order: "
                                             "{agent, round, role, content}."})
    calls: int = field(default=0, metadata={"help": "Chat completions made."})
    meta: dict[str, Any] = field(default_factory=dict, metadata={"help": "Protocol details (rounds run, votes, verdict)."})


@dataclass
class ChatConfig:
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "OpenAI-compatible endpoint."})
    model: str = field(default="base", metadata={"help": "Served model or adapter name."})
    api_key: str = field(default="EMPTY", metadata={"help": "API key."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of every agent."})
    max_tokens: int = field(default=256, metadata={"help": "Longest reply of one agent turn."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed (None: unseeded)."})
    timeout: float = field(default=300.0, metadata={"help": "Seconds to wait for one completion."})


class Speaker:
    """One debate participant: its own chat history, every exchange copied into the shared transcript."""

    def __init__(self, name: str, system: str, llm: LLMAgent, transcript: list[dict[str, Any]]):
        self.name = name
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}]
        self.transcript = transcript
        self.calls = 0
        self._llm = llm
        transcript.append({"agent": name, "round": 0, "role": "system", "content": system})

    async def say(self, prompt: str, round_: int) -> str:
        self.messages.append({"role": "user", "content": prompt})
        self.transcript.append({"agent": self.name, "round": round_, "role": "user", "content": prompt})
        obs = Observation(game="mas", seat=0, role=self.name, phase=f"round-{round_}", messages=list(self.messages),
                          legal_actions=[])
        reply = await self._llm.act(obs)
        self.calls += 1
        self.messages.append({"role": "assistant", "content": reply.text})
        self.transcript.append({"agent": self.name, "round": round_, "role": "assistant", "content": reply.text,
                                "finish_reason": reply.finish_reason})
        return reply.text


def make_llm(chat: ChatConfig) -> LLMAgent:
    return LLMAgent(LLMAgentConfig(base_url=chat.base_url, model=chat.model, api_key=chat.api_key,
                                   temperature=chat.temperature, max_tokens=chat.max_tokens, seed=chat.seed,
                                   logprobs=False, timeout=chat.timeout))


# ---- the moderator's verdict -------------------------------------------------------------------------------------

@dataclass
class Verdict:
    preference: bool = field(default=False, metadata={"help": "Whether the moderator prefers a side."})
    supported_side: str = field(default="", metadata={"help": "'affirmative', 'negative' or ''."})
    reason: str = field(default="", metadata={"help": "The moderator's reason."})
    answer: str = field(default="", metadata={"help": "The debate answer it gives."})
    parsed: bool = field(default=False, metadata={"help": "Whether an object with at least one known field was found."})
    missing: list[str] = field(default_factory=list, metadata={"help": "Known fields absent from the reply."})


_FIELDS = ("preference", "supported_side", "reason", "answer")


def _field_of(key: str) -> str | None:
    k = re.sub(r"[^a-z]+", "_", key.lower())
    if "preference" in k:
        return "preference"
    if "side" in k:
        return "supported_side"
    if "reason" in k:
        return "reason"
    if "answer" in k:
        return "answer"
    return None


def _objects(text: str) -> list[str]:
    """Top-level {...} spans in the text, braces inside quoted strings ignored; an unclosed span runs to the end."""
    spans, depth, start, quote, escaped = [], 0, -1, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'" and depth > 0:
            # an apostrophe inside a bare word (it's) is not a quote
            if ch == "'" and i > 0 and text[i - 1].isalnum():
                continue
            quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
    if depth > 0:
        spans.append(text[start:])
    return spans


_PAIR = re.compile(r"""["']?([A-Za-z][A-Za-z _-]*)["']?\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([^,}\n]*))""")


def _pairs(obj: str) -> dict[str, Any]:
    try:
        data = json.loads(obj)
        if isinstance(data, dict):
            return data
    except json.JSONDecodeError:
        pass
    # not strict JSON (single quotes, a cut-off reply, Python literals): read key: value pairs one by one
    out: dict[str, Any] = {}
    for m in _PAIR.finditer(obj):
        value = next((g for g in m.groups()[1:] if g is not None), "")
        out.setdefault(m.group(1).strip(), value.strip())
    return out


def parse_verdict(text: str) -> Verdict:
    """The moderator's JSON verdict, read robustly: the first object with a known field wins; missing fields default."""
    for obj in _objects(text):
        values: dict[str, Any] = {}
        for key, value in _pairs(obj).items():
            f = _field_of(str(key))
            if f and f not in values:
                values[f] = value
        if not values:
            continue
        pref = values.get("preference", False)
        pref = pref if isinstance(pref, bool) else str(pref).strip().lower().startswith(("yes", "true"))
        side = str(values.get("supported_side", "")).strip().lower()
        side = "affirmative" if side.startswith("aff") else "negative" if side.startswith("neg") else ""
        answer = values.get("answer", "")
        return Verdict(preference=pref, supported_side=side, reason=str(values.get("reason", "")).strip(),
                       answer="" if answer is None else str(answer).strip(), parsed=True,
                       missing=[f for f in _FIELDS if f not in values])
    return Verdict(missing=list(_FIELDS))


# ---- MAD (Liang et al.) ------------------------------------------------------------------------------------------

def _mad_prompts() -> dict[str, str]:
    """The MAD prompts, in the project's own words: the file the maslab protocol uses (integrations/prompts/
    maslab.yaml), shared so that the two protocols differ in structure only."""

    return yaml.safe_load((Path(__file__).resolve().parent / "prompts" / "maslab.yaml").read_text())


_P = _mad_prompts()
PLAYER_META = _P["mad_player_system"]
MODERATOR_META = _P["mad_moderator_system"]
NEGATIVE_FIRST = _P["mad_negative_first"]
DEBATE_PROMPT = _P["mad_rebuttal"]
MODERATOR_PROMPT = _P["mad_moderator_round"]
JUDGE_CANDIDATES = _P["mad_judge_candidates"]
JUDGE_DECIDE = _P["mad_judge_decide"]
ORDINALS = ("first", "second", "third", "fourth", "fifth")


@dataclass
class MADConfig:
    chat: ChatConfig = field(default_factory=ChatConfig, metadata={"help": "Endpoint, model and sampling."})
    rounds: int = field(default=3, metadata={"help": "Most debate rounds before the judge decides."})


class MADDebate:
    """`await MADDebate(config).solve(question)` runs one debate with fresh participants."""

    def __init__(self, config: MADConfig | None = None):
        self.config = config or MADConfig()
        if self.config.rounds < 1:
            raise ValueError(f"MADConfig.rounds must be >= 1, got {self.config.rounds}")

    async def solve(self, q: Question) -> Solution:
        topic = task_text(q)
        transcript: list[dict[str, Any]] = []
        llm = make_llm(self.config.chat)
        aff = Speaker("affirmative", PLAYER_META.format(topic=topic), llm, transcript)
        neg = Speaker("negative", PLAYER_META.format(topic=topic), llm, transcript)
        mod = Speaker("moderator", MODERATOR_META.format(topic=topic), llm, transcript)
        try:
            verdict, aff_text, neg_text, decision, rounds_run = Verdict(), "", "", "", 0
            for r in range(1, self.config.rounds + 1):
                rounds_run = r
                aff_text = await aff.say(topic if r == 1 else DEBATE_PROMPT.format(other=neg_text), r)
                neg_text = await neg.say(NEGATIVE_FIRST.format(aff=aff_text) if r == 1
                                         else DEBATE_PROMPT.format(other=aff_text), r)
                ordinal = ORDINALS[r - 1] if r <= len(ORDINALS) else f"{r}th"
                decision = await mod.say(MODERATOR_PROMPT.format(ordinal=ordinal, aff=aff_text, neg=neg_text), r)
                verdict = parse_verdict(decision)
                if verdict.preference and verdict.answer:
                    break
            decided_by, speakers = "moderator", [aff, neg, mod]
            if not (verdict.preference and verdict.answer):
                judge = Speaker("judge", MODERATOR_META.format(topic=topic), llm, transcript)
                await judge.say(JUDGE_CANDIDATES.format(aff=aff_text, neg=neg_text), rounds_run)
                decision = await judge.say(JUDGE_DECIDE.format(topic=topic), rounds_run)
                verdict = parse_verdict(decision)
                decided_by, speakers = "judge", speakers + [judge]
        finally:
            await llm.aclose()
        final_text = verdict.answer
        if not final_text:  # no usable JSON answer: the side it supports, else its free text, else the affirmative
            if verdict.supported_side:
                final_text = neg_text if verdict.supported_side == "negative" else aff_text
            else:
                final_text = decision if extract_answer(decision, q.kind, q.letters) is not None else aff_text
        return Solution(prediction=extract_answer(final_text, q.kind, q.letters), final_text=final_text, transcript=transcript,
                        calls=sum(s.calls for s in speakers),
                        meta={"rounds": rounds_run, "decided_by": decided_by, "verdict": verdict.__dict__})


# ---- Du et al. ---------------------------------------------------------------------------------------------------

DU_SYSTEM = "You are a careful problem solver. Solve the problem step by step."
DU_REVISE = ("Here is how the other agents solved the same problem:\n{others}\nTake their reasoning as advice: "
             "go through your own solution and theirs step by step, then give your updated answer. {instruction}")


@dataclass
class DuConfig:
    chat: ChatConfig = field(default_factory=ChatConfig, metadata={"help": "Endpoint, model and sampling."})
    agents: int = field(default=3, metadata={"help": "Number of debating agents."})
    rounds: int = field(default=2, metadata={"help": "Revision rounds after the first answers (0: plain voting)."})


def majority_vote(predictions: list[str | None]) -> str | None:
    """The most frequent non-empty prediction; a tie goes to the one that appeared first."""
    votes = [p for p in predictions if p]
    if not votes:
        return None
    counts = Counter(votes)
    best = max(counts.values())
    return next(p for p in votes if counts[p] == best)


class DuDebate:
    """`await DuDebate(config).solve(question)`: N agents, R revision rounds, majority vote."""

    def __init__(self, config: DuConfig | None = None):
        self.config = config or DuConfig()
        if self.config.agents < 1 or self.config.rounds < 0:
            raise ValueError(f"DuConfig needs agents >= 1 and rounds >= 0, got {self.config.agents}, {self.config.rounds}")

    async def solve(self, q: Question) -> Solution:
        transcript: list[dict[str, Any]] = []
        llm = make_llm(self.config.chat)
        agents = [Speaker(f"agent-{i}", DU_SYSTEM, llm, transcript) for i in range(self.config.agents)]
        try:
            answers = list(await asyncio.gather(*(a.say(task_text(q), 0) for a in agents)))
            for r in range(1, self.config.rounds + 1):
                prompts = [DU_REVISE.format(others="".join(f"\nAnother agent's solution: ```{t}```\n"
                                                           for j, t in enumerate(answers) if j != i),
                                            instruction=instruction(q))
                           for i in range(len(agents))]
                answers = list(await asyncio.gather(*(a.say(p, r) for a, p in zip(agents, prompts))))
        finally:
            await llm.aclose()
        preds = [extract_answer(t, q.kind, q.letters) for t in answers]
        winner = majority_vote(preds)
        final_text = answers[preds.index(winner)] if winner is not None else answers[0]
        return Solution(prediction=winner, final_text=final_text, transcript=transcript,
                        calls=sum(a.calls for a in agents), meta={"rounds": self.config.rounds, "votes": preds})
