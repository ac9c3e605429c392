"""MASLab's MAD and AutoGen, the multi-agent systems MARSHAL's downstream numbers were measured with
(MASWorks/MASLab at 4ecccf5: methods/mad/mad_main.py with configs/config_main.yaml, methods/autogen/autogen_main.py
with its config_main.yaml), structure for structure; the words are Stratagem's (`prompts/maslab.yaml`, or a user's
file with the same keys: MASLab has no licence, so its texts are not shipped).

MAD (3 players, at most 3 rounds): the affirmative debater gets the question as it is (no answer-format line), the
negative debater reads the affirmative answer and disagrees; a moderator, keeping its own history, reads both
answers of each round and answers in JSON (preference, supported side, reason, debate_answer). Later rounds give
each side the other's latest answer. The debate ends as soon as the moderator's `debate_answer` is non-empty (MASLab
checks that field only); otherwise a judge with the moderator's system prompt reads the *first* round's two
answers (MASLab's `memory_lst[2]`), lists the candidates, then answers in JSON (reason, debate_answer).

AutoGen (a two-agent chat, at most 3 assistant turns): the assistant answers the question with a solver system
prompt; the user proxy is the same model with no system prompt, reading the assistant's replies as its user turns;
the chat stops when either says TERMINATE (the assistant's last reply is the answer) or after the third assistant
reply. Built with autogen-agentchat (`RoundRobinGroupChat`).

A thinking model's reply has its `<think>` block removed before anyone reads it or an answer is extracted (an
unclosed block counts as all thinking), and replies cut off at the token budget are counted (`meta.cut_off`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from stratagem.games.core import Observation
from stratagem.integrations import autogen_teams
from stratagem.integrations.benchmarks import Question, extract_answer
from stratagem.integrations.debate import ChatConfig, Solution, Verdict, make_llm, parse_verdict

PROTOCOLS = ("stratagem", "maslab")
DEFAULT_PROMPTS = Path(__file__).resolve().parent / "prompts" / "maslab.yaml"
PROMPT_KEYS = ("mad_player_system", "mad_moderator_system", "mad_affirmative_first", "mad_negative_first",
               "mad_rebuttal", "mad_moderator_round", "mad_judge_candidates", "mad_judge_decide",
               "autogen_assistant_system", "autogen_proxy_system")
# MASLab's sampling defaults (its general config): temperature 0.5, 2048 tokens
MASLAB_TEMPERATURE, MASLAB_MAX_TOKENS = 0.5, 2048
MAD_ROUNDS, AUTOGEN_TURNS = 3, 3
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def load_prompts(path: str | Path | None = None) -> dict[str, str | None]:
    """The protocol's prompts: every key of PROMPT_KEYS, a string (autogen_proxy_system may be null: no system
    message). A missing key or a non-string value is an error naming the file."""
    p = Path(path) if path else DEFAULT_PROMPTS
    if not p.is_file():
        raise ValueError(f"--prompts {p}: no such file")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of prompt names to texts")
    missing = [k for k in PROMPT_KEYS if k not in data]
    if missing:
        raise ValueError(f"{p}: missing prompt(s) {', '.join(missing)}")
    bad = [k for k in PROMPT_KEYS if not isinstance(data[k], str) and not (k == "autogen_proxy_system"
                                                                        and data[k] is None)]
    if bad:
        raise ValueError(f"{p}: prompt(s) {', '.join(bad)} must be text")
    return {k: data[k] for k in PROMPT_KEYS}


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def visible(text: str) -> str:
    """The reply without its thinking: closed <think> blocks removed, an unclosed one taken as thinking to the end
    (a reply cut off while it thinks shows nothing)."""
    text = _THINK.sub("", text)
    if "<think>" in text:
        text = text[: text.index("<think>")]
    return text.replace("</think>", "").strip()


class _Member:
    """One participant: its own message list (system first, when it has one), replies stored without thinking."""

    def __init__(self, name: str, system: str | None, llm: Any, transcript: list[dict[str, Any]], meta: dict):
        self.name, self.llm, self.transcript, self.meta = name, llm, transcript, meta
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system is not None else []
        self.answers: list[str] = []
        if system is not None:
            transcript.append({"agent": name, "round": 0, "role": "system", "content": system})

    async def say(self, prompt: str, round_: int) -> str:
        self.messages.append({"role": "user", "content": prompt})
        self.transcript.append({"agent": self.name, "round": round_, "role": "user", "content": prompt})
        reply = await self.llm.act(Observation(game="mas", seat=0, role=self.name, phase=f"round-{round_}",
                                               messages=list(self.messages), legal_actions=[]))
        self.meta["calls"] += 1
        self.meta["cut_off"] += reply.finish_reason == "length"
        text = visible(reply.text)
        self.messages.append({"role": "assistant", "content": text})
        self.answers.append(text)
        self.transcript.append({"agent": self.name, "round": round_, "role": "assistant", "content": text,
                                "finish_reason": reply.finish_reason})
        return text


class MASLabMAD:
    """`await MASLabMAD(chat).solve(question)`: one debate as MASLab runs it (see the module docstring)."""

    def __init__(self, chat: ChatConfig | None = None, rounds: int = MAD_ROUNDS,
                 prompts: dict[str, str | None] | None = None):
        if rounds < 1:
            raise ValueError(f"MAD rounds must be >= 1, got {rounds}")
        self.chat, self.rounds, self.p = chat or ChatConfig(), rounds, prompts or load_prompts()

    def _prompt(self, key: str) -> str:
        """The prompt `key`: text (of the prompts only autogen_proxy_system may be null, and MAD does not use it)."""
        text = self.p[key]
        if text is None:
            raise ValueError(f"prompt {key!r} is null; MAD needs it as text")
        return text

    async def solve(self, q: Question) -> Solution:
        topic, p = q.prompt, self._prompt
        transcript: list[dict[str, Any]] = []
        meta: dict[str, Any] = {"calls": 0, "cut_off": 0}
        llm = make_llm(self.chat)
        aff = _Member("affirmative", p("mad_player_system").format(topic=topic), llm, transcript, meta)
        neg = _Member("negative", p("mad_player_system").format(topic=topic), llm, transcript, meta)
        mod = _Member("moderator", p("mad_moderator_system").format(topic=topic), llm, transcript, meta)
        try:
            verdict, rounds_run, decided_by = Verdict(), 0, "moderator"
            for r in range(1, self.rounds + 1):
                rounds_run = r
                if r == 1:
                    a = await aff.say(p("mad_affirmative_first").format(topic=topic), r)
                    n = await neg.say(p("mad_negative_first").format(aff=a), r)
                else:
                    a = await aff.say(p("mad_rebuttal").format(other=neg.answers[-1]), r)
                    n = await neg.say(p("mad_rebuttal").format(other=a), r)
                ordinal = ORDINALS[r - 1] if r <= len(ORDINALS) else f"{r}th"
                verdict = parse_verdict(await mod.say(p("mad_moderator_round").format(ordinal=ordinal, aff=a, neg=n),
                                                      r))
                if verdict.answer:  # MASLab stops on a non-empty debate_answer, preference or not
                    break
            if not verdict.answer:
                decided_by = "judge"
                judge = _Member("judge", p("mad_moderator_system").format(topic=topic), llm, transcript, meta)
                # the judge reads the first round's answers, as MASLab's memory_lst[2] gives them
                await judge.say(p("mad_judge_candidates").format(aff=aff.answers[0], neg=neg.answers[0]), rounds_run)
                verdict = parse_verdict(await judge.say(p("mad_judge_decide").format(topic=topic), rounds_run))
        finally:
            await llm.aclose()
        final = verdict.answer
        return Solution(prediction=extract_answer(final, q.kind, q.letters) if final else None, final_text=final,
                        transcript=transcript, calls=meta["calls"],
                        meta={"protocol": "maslab", "rounds": rounds_run, "decided_by": decided_by,
                              "cut_off": meta["cut_off"], "verdict": verdict.__dict__})


class MASLabAutoGen:
    """`await MASLabAutoGen(chat).solve(question)`: MASLab's two-agent AutoGen chat on autogen-agentchat."""

    def __init__(self, chat: ChatConfig | None = None, max_turns: int = AUTOGEN_TURNS,
                 prompts: dict[str, str | None] | None = None):
        if max_turns < 1:
            raise ValueError(f"AutoGen max_turns must be >= 1, got {max_turns}")
        self.chat, self.max_turns, self.p = chat or ChatConfig(), max_turns, prompts or load_prompts()

    def team(self, client: Any) -> Any:
        from autogen_agentchat.agents import AssistantAgent
        from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
        from autogen_agentchat.teams import RoundRobinGroupChat

        assistant = AssistantAgent("assistant", model_client=client, system_message=self.p["autogen_assistant_system"])
        proxy = AssistantAgent("user_proxy", model_client=client, system_message=self.p["autogen_proxy_system"])
        # either side's TERMINATE ends it; the task plus 2 x turns - 1 replies is the third assistant reply
        stop = TextMentionTermination("TERMINATE") | MaxMessageTermination(2 * self.max_turns)
        return RoundRobinGroupChat([assistant, proxy], termination_condition=stop)

    async def solve(self, q: Question) -> Solution:
        c = self.chat
        client = autogen_teams.model_client(c.base_url, c.model, api_key=c.api_key, temperature=c.temperature,
                                            max_tokens=c.max_tokens, seed=c.seed, timeout=c.timeout)
        try:
            result = await self.team(client).run(task=q.prompt)
        finally:
            await client.close()
        transcript, cut = [], 0
        for i, m in enumerate(result.messages):
            text = m.to_text()
            if m.source != "user":
                text = visible(text)
                cut += getattr(getattr(m, "models_usage", None), "completion_tokens", 0) >= c.max_tokens
            transcript.append({"agent": m.source, "round": i, "role": "user" if m.source == "user" else "assistant",
                               "content": text})
        said = [t["content"] for t in transcript if t["agent"] == "assistant"]
        final = said[-1].replace("TERMINATE", "").strip() if said else ""
        calls = sum(1 for m in result.messages if getattr(m, "models_usage", None) is not None)
        return Solution(prediction=extract_answer(final, q.kind, q.letters), final_text=final, transcript=transcript,
                        calls=calls, meta={"protocol": "maslab", "stop_reason": result.stop_reason, "cut_off": cut,
                                           "assistant_turns": len(said)})
