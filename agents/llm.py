"""The language-model agent: one chat completion per act, over any OpenAI-compatible endpoint.

Against our vLLM server it also records what training needs, exactly as sampled: the prompt and completion token
ids (`return_token_ids`) and each completion token's log-prob. Other providers return no ids; the reply then has
only text, which is enough to play and evaluate but not to train on. vLLM extensions it can send besides: a chat
template of its own per request (`chat_template`, for a model whose own template is ChatML) and a regex of the
turn's well-formed replies (`constrain`, vLLM structured outputs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import openai

from stratagem.endpoints import RoutedClient, parse_endpoints
from stratagem.games.base import think_answer_regex
from stratagem.games.core import Observation, Reply

if TYPE_CHECKING:
    from stratagem.endpoints import RoutedClient

log = logging.getLogger(__name__)
CONSTRAINTS = ("none", "think_answer")


@dataclass
class LLMAgentConfig:
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "OpenAI-compatible endpoint; "
                          "several, comma-separated, serving the same models: each request goes to the least-loaded "
                          "live one (stratagem.endpoints.RoutedClient)."})
    model: str = field(default="base", metadata={"help": "Served model or adapter name (e.g. base, iter-3)."})
    api_key: str = field(default="EMPTY", metadata={"help": "API key sent as a bearer token."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (1.0: sample the policy as is, "
                               "which is what on-policy training needs)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    stop: list[str] = field(default_factory=list, metadata={"help": "Stop strings (empty: none)."})
    max_tokens: int = field(default=256, metadata={"help": "Longest reply; a reply cut here ends with finish_reason "
                            "'length', which games treat as over-long."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed passed to the endpoint (None: unseeded)."})
    logprobs: bool = field(default=True, metadata={"help": "Ask for token ids and log-probs (vLLM extension)."})
    timeout: float = field(default=600.0, metadata={"help": "Seconds to wait for one completion."})
    retries: int = field(default=2, metadata={"help": "Retries of a request that failed on the transport, timed out "
                         "or got 408, 409, 429 or a server error (5xx), with the openai client's backoff "
                         "(`max_retries`); other errors are raised at once.", "min": 0})
    extra_body: dict[str, Any] = field(default_factory=dict, metadata={"help": "Extra request fields, e.g. "
                                       "{'chat_template_kwargs': {'enable_thinking': False}}."})
    chat_template: str | None = field(default=None, metadata={"help": "A Jinja chat template sent with every "
                                      "request (vLLM's chat_template field; the server must run with "
                                      "--trust-request-chat-template). None: the model's own."})
    chat_template_only_for_chatml: bool = field(default=True, metadata={"help": "Send chat_template only when the "
                                                "served model's own template is ChatML (<|im_start|>ROLE ... "
                                                "<|im_end|>), asked once of the endpoint (vLLM's /tokenize); a "
                                                "model with another template, or an endpoint that cannot tell, "
                                                "keeps its own."})
    constrain: str = field(default="none", metadata={"help": "Structured outputs: none, or think_answer (a regex of "
                           "the think protocol's replies with one of the observation's legal actions; vLLM "
                           "structured_outputs).", "choices": CONSTRAINTS})
    constrain_think_chars: int = field(default=200, metadata={"help": "Longest reasoning in characters that "
                                       "constrain think_answer allows.", "min": 0})


class LLMAgent:
    """`act(observation)` sends the observation's chat messages; a `response_prefix` is sent as a partial assistant
    turn that the model continues. `Reply.text` is the generated continuation only (the game prepends the prefix);
    the prefix's tokens are the last tokens of `prompt_token_ids`. `chatml` caches whether the served model's own
    template is ChatML (None: not asked yet), which decides whether `chat_template` is sent."""

    def __init__(self, config: LLMAgentConfig | None = None, **overrides: Any):
        self.config = config or LLMAgentConfig(**overrides)
        if config is not None and overrides:
            raise TypeError("pass either a config or keyword overrides, not both")
        if self.config.constrain not in CONSTRAINTS:
            raise ValueError(f"constrain must be one of {', '.join(CONSTRAINTS)}, got {self.config.constrain!r}")
        self.name = f"llm:{self.config.model}"
        self.chatml: bool | None = None
        self._client: RoutedClient | openai.AsyncOpenAI
        if "," in self.config.base_url:  # several endpoints: each request to the least-loaded live one

            self._client = RoutedClient(parse_endpoints(self.config.base_url), api_key=self.config.api_key,
                                        timeout=self.config.timeout, max_retries=self.config.retries)
        else:
            self._client = openai.AsyncOpenAI(base_url=self.config.base_url, api_key=self.config.api_key,
                                              timeout=self.config.timeout,
                                              max_retries=self.config.retries)

    def request(self, observation: Observation) -> dict[str, Any]:
        """The keyword arguments of the chat-completion call for this observation."""
        cfg = self.config
        messages = list(observation.messages)
        extra: dict[str, Any] = dict(cfg.extra_body)
        if observation.response_prefix:
            messages.append({"role": "assistant", "content": observation.response_prefix})
            extra.update(continue_final_message=True, add_generation_prompt=False)
        if cfg.chat_template and (self.chatml or not cfg.chat_template_only_for_chatml):
            extra["chat_template"] = cfg.chat_template
        if cfg.constrain == "think_answer":
            extra["structured_outputs"] = {"regex": think_answer_regex(observation.legal_actions,
                                                                       cfg.constrain_think_chars)}
        if cfg.logprobs:
            extra["return_token_ids"] = True
        kw: dict[str, Any] = dict(model=cfg.model, messages=messages, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_tokens=cfg.max_tokens, extra_body=extra)
        if cfg.logprobs:
            kw["logprobs"] = True
        if cfg.stop:
            kw["stop"] = list(cfg.stop)
        if cfg.seed is not None:
            kw["seed"] = cfg.seed
        return kw

    async def act(self, observation: Observation) -> Reply:
        cfg = self.config
        if cfg.chat_template and cfg.chat_template_only_for_chatml and self.chatml is None:
            self.chatml = await served_template_is_chatml(cfg.base_url, cfg.model, cfg.api_key, cfg.timeout)
            if not self.chatml:
                log.warning("%s: the served model's chat template is not ChatML (or the endpoint does not say): "
                            "requests use its own template, not the configured one", self.name)
        resp = await self._client.chat.completions.create(**self.request(observation))
        return reply_from_completion(resp)

    async def aclose(self) -> None:
        await self._client.close()


async def served_template_is_chatml(base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                                    transport: httpx.AsyncBaseTransport | None = None) -> bool:
    """Whether `model`'s own chat template on the (first) endpoint of `base_url` is ChatML: vLLM's /tokenize renders
    a system and a user message with it, and the tokens must include <|im_start|> and <|im_end|>. An endpoint
    without /tokenize (or that refuses it) counts as not ChatML; an unreachable one raises (httpx.HTTPError), so a
    transient failure is not remembered."""
    url = base_url.strip().rstrip("/")
    if "," in url:
        url = parse_endpoints(url)[0]
    root = url[: -len("/v1")] if url.endswith("/v1") else url
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "add_generation_prompt": True, "return_token_strs": True}
    async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
        r = await client.post(f"{root}/tokenize", json=body, headers=headers)
    if r.status_code != 200:
        return False
    try:
        strs = r.json().get("token_strs") or []
    except ValueError:
        return False
    return "<|im_start|>" in strs and "<|im_end|>" in strs


def check_endpoint(base_url: str, api_key: str | None = None, timeout: float = 10.0) -> None:
    """Fail at once when the endpoint cannot be reached (before games or a run start): the httpx connection error
    propagates, and the console script reports it in one line with what to run. Any HTTP answer passes."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=timeout)


def reply_from_completion(resp: Any) -> Reply:
    """A Reply from an OpenAI chat completion, with vLLM's token ids and log-probs when present."""
    choice = resp.choices[0]
    extra = resp.model_extra or {}
    choice_extra = choice.model_extra or {}
    logprobs = None
    if choice.logprobs is not None and choice.logprobs.content is not None:
        logprobs = [t.logprob for t in choice.logprobs.content]
    completion_ids = choice_extra.get("token_ids")
    if completion_ids is not None and logprobs is not None and len(completion_ids) != len(logprobs):
        raise ValueError(f"endpoint returned {len(completion_ids)} token ids but {len(logprobs)} log-probs")
    return Reply(text=choice.message.content or "", prompt_token_ids=extra.get("prompt_token_ids"),
                 completion_token_ids=completion_ids, logprobs=logprobs, model=resp.model,
                 finish_reason=choice.finish_reason)
