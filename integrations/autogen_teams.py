"""AutoGen (autogen-agentchat 0.7) teams backed by the served model, base or any adapter by name.

`model_client` points AutoGen's OpenAI client at our server (model_info declared, since AutoGen cannot infer it for
a local name). Teams: the two-agent setup of the MARS evaluation (a solver that ends with TERMINATE and a user proxy
played by the same model, at most 3 solver turns), a round-robin team of N solvers and a verifier, and a selector
team of the same agents where the model picks the next speaker. AutoGen agents keep their history, so
`AutoGenSystem` builds fresh agents and a fresh client for every question.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
from autogen_agentchat.teams import RoundRobinGroupChat, SelectorGroupChat
from autogen_ext.models.openai import OpenAIChatCompletionClient

from stratagem.integrations.benchmarks import Question, extract_answer, task_text
from stratagem.integrations.debate import ChatConfig, Solution

if TYPE_CHECKING:
    from autogen_agentchat.base import ChatAgent, Team
    from autogen_core.models import ModelInfo

MODEL_INFO: ModelInfo = {"vision": False, "function_calling": False, "json_output": False, "family": "unknown",
              "structured_output": False}
TEAMS = ("two_agent", "round_robin", "selector")

SOLVER_SYSTEM = ("You are a helpful assistant who solves problems. Reason step by step, give the final answer, and "
                 "end your message with the word TERMINATE once you are confident in the answer.")
USER_PROXY_SYSTEM = ("You are the user who asked the question. Read the assistant's answer; if it has a mistake, "
                     "say which in one or two sentences; otherwise ask it to state the final answer and finish.")
TEAM_SOLVER_SYSTEM = "You are {name}, one of several solvers. Solve the problem step by step; be brief."
VERIFIER_SYSTEM = ("You are the verifier. Check the solvers' answers step by step, then state the correct final "
                   "answer in \\boxed{{}} and end with the word VERIFIED.")


def model_client(base_url: str, model: str = "base", *, api_key: str = "EMPTY", temperature: float = 0.7,
                 max_tokens: int = 256, seed: int | None = None, **kwargs: Any) -> OpenAIChatCompletionClient:
    """An `OpenAIChatCompletionClient` for our vLLM server (or any OpenAI-compatible endpoint)."""
    extra: dict[str, Any] = {"seed": seed} if seed is not None else {}
    return OpenAIChatCompletionClient(model=model, base_url=base_url, api_key=api_key, model_info=MODEL_INFO,
                                      temperature=temperature, max_tokens=max_tokens, **extra, **kwargs)


def two_agent_team(client: OpenAIChatCompletionClient, max_assistant_turns: int = 3) -> RoundRobinGroupChat:
    """MARS's AutoGen setting: solver and user proxy alternate until the solver says TERMINATE or has had
    `max_assistant_turns` turns (the task message counts as one message)."""
    solver = AssistantAgent("assistant", model_client=client, system_message=SOLVER_SYSTEM)
    proxy = AssistantAgent("user_proxy", model_client=client, system_message=USER_PROXY_SYSTEM)
    stop = TextMentionTermination("TERMINATE", sources=["assistant"]) | MaxMessageTermination(2 * max_assistant_turns)
    return RoundRobinGroupChat([solver, proxy], termination_condition=stop)


def _solvers_and_verifier(client: OpenAIChatCompletionClient, solvers: int) -> list[ChatAgent | Team]:
    team: list[ChatAgent | Team] = [
        AssistantAgent(f"solver_{i}", model_client=client, system_message=TEAM_SOLVER_SYSTEM.format(name=f"solver_{i}"),
                       description="Solves the problem step by step.") for i in range(solvers)]
    team.append(AssistantAgent("verifier", model_client=client, system_message=VERIFIER_SYSTEM,
                               description="Checks the solvers' answers and states the final one."))
    return team


def round_robin_team(client: OpenAIChatCompletionClient, solvers: int = 2, rounds: int = 1) -> RoundRobinGroupChat:
    """N solvers then a verifier, in turn, for `rounds` rounds or until the verifier says VERIFIED."""
    stop = (TextMentionTermination("VERIFIED", sources=["verifier"])
            | MaxMessageTermination(1 + (solvers + 1) * rounds))
    return RoundRobinGroupChat(_solvers_and_verifier(client, solvers), termination_condition=stop)


def selector_team(client: OpenAIChatCompletionClient, solvers: int = 2, max_messages: int = 4) -> SelectorGroupChat:
    """The same agents, the model choosing who speaks next (AutoGen falls back to a default speaker when the
    choice cannot be parsed), until the verifier says VERIFIED or `max_messages` messages."""
    stop = TextMentionTermination("VERIFIED", sources=["verifier"]) | MaxMessageTermination(max_messages)
    return SelectorGroupChat(_solvers_and_verifier(client, solvers), model_client=client, termination_condition=stop,
                             max_selector_attempts=1)


@dataclass
class AutoGenConfig:
    chat: ChatConfig = field(default_factory=ChatConfig, metadata={"help": "Endpoint, model and sampling."})
    team: str = field(default="two_agent", metadata={"help": f"Team: {', '.join(TEAMS)}."})
    max_assistant_turns: int = field(default=3, metadata={"help": "two_agent: most solver turns."})
    solvers: int = field(default=2, metadata={"help": "round_robin / selector: number of solvers."})
    rounds: int = field(default=1, metadata={"help": "round_robin: rounds of all agents."})
    max_messages: int = field(default=4, metadata={"help": "selector: most messages, the task included."})


def _final_text(messages: list[dict[str, Any]]) -> str:
    """The last agent message that commits to an answer; else the last agent message."""
    said = [m["content"] for m in messages if m["agent"] != "user"]
    for text in reversed(said):
        if extract_answer(text) is not None:
            return text
    return said[-1] if said else ""


class AutoGenSystem:
    """`await AutoGenSystem(config).solve(question)`: one fresh team per question."""

    def __init__(self, config: AutoGenConfig | None = None):
        self.config = config or AutoGenConfig()
        if self.config.team not in TEAMS:
            raise ValueError(f"unknown AutoGen team {self.config.team!r}; expected one of {', '.join(TEAMS)}")

    def build(self, client: OpenAIChatCompletionClient) -> RoundRobinGroupChat | SelectorGroupChat:
        c = self.config
        if c.team == "two_agent":
            return two_agent_team(client, c.max_assistant_turns)
        if c.team == "round_robin":
            return round_robin_team(client, c.solvers, c.rounds)
        return selector_team(client, c.solvers, c.max_messages)

    async def solve(self, q: Question) -> Solution:
        chat = self.config.chat
        client = model_client(chat.base_url, chat.model, api_key=chat.api_key, temperature=chat.temperature,
                              max_tokens=chat.max_tokens, seed=chat.seed, timeout=chat.timeout)
        try:
            result = await self.build(client).run(task=task_text(q))
        finally:
            await client.close()
        transcript = [{"agent": m.source, "round": i, "role": "user" if m.source == "user" else "assistant",
                       "content": m.to_text()} for i, m in enumerate(result.messages)]
        final = _final_text(transcript).replace("TERMINATE", "").replace("VERIFIED", "").strip()
        calls = sum(1 for m in result.messages if getattr(m, "models_usage", None) is not None)
        return Solution(prediction=extract_answer(final, q.kind, q.letters), final_text=final, transcript=transcript,
                        calls=calls, meta={"team": self.config.team, "stop_reason": result.stop_reason})
