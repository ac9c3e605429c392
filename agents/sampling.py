"""How a policy is sampled: the one definition of the sampling fields that training, `play`, `eval` and the
benchmarks share, so a model is evaluated with the reply protocol it was trained with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stratagem.games.base import chat_template


@dataclass
class SamplingConfig:
    """Sampling of every model reply in a strategic game (MARS's defaults: temperature 0.6, top_p 0.99, top_k 100).
    The reply format itself (forced prefix, open answers, the think protocol) is `games.base.ReplyFormat`; the think
    protocol needs stop [] here (and, for a ChatML model, chat_template chatml)."""

    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature (MARS: 0.6). The trainer divides "
                               "its logits by the same temperature, so old and new log-probs are those of the "
                               "sampling distribution.", "min": 0.0})
    top_p: float = field(default=0.99, metadata={"help": "Nucleus sampling mass (MARS: 0.99).", "min": 0.0,
                                                 "max": 1.0})
    top_k: int = field(default=100, metadata={"help": "Sample among the k most likely tokens (MARS: 100; -1 or 0: "
                       "off). Sent where the endpoint accepts it (vLLM does; the OpenAI API does not)."})
    max_tokens: int = field(default=48, metadata={"help": "Longest reply of one move (the turn budget; MARS: 4096); "
                            "a reply cut here is over-long (an illegal act: overlong_response).", "min": 1})
    stop: list[str] = field(default_factory=lambda: [">", "\n"], metadata={"help": "Stop strings, kept in the "
                            "reply. Every action ends with '>', so the reply ends with the action and nothing after "
                            "it is sampled or trained (see ReplyFormat.open_answer). Empty: none (the think "
                            "protocol, reply.think: the reply runs to the end-of-turn token or max_tokens)."})
    vllm_extensions: bool = field(default=True, metadata={"help": "Send vLLM's extra request fields (top_k, "
                                  "include_stop_str_in_output, chat_template, structured_outputs); off for endpoints "
                                  "that reject unknown fields."})
    chat_template: str = field(default="model", metadata={"help": "Chat template of every request. model: the "
                               "served model's own. chatml: Stratagem's ChatML template "
                               "(games/templates/chatml_verbatim.jinja), which writes every earlier reply verbatim, "
                               "<think> blocks included (Qwen3's own drops earlier thinking, so a seat's turns would "
                               "not extend each other), sent with each request to a model whose own template is "
                               "ChatML (checked once through vLLM's /tokenize; any other model keeps its own). The "
                               "server must accept request templates (server.trust_request_chat_template).",
                               "choices": ("model", "chatml")})
    constrain: str = field(default="none", metadata={"help": "Structured outputs (vLLM's structured_outputs.regex). "
                           "none: off. think_answer: for reply.think, each reply is at most constrain_think_chars "
                           "characters of reasoning without '<', then '</think><answer>', one of the turn's legal "
                           "actions and '</answer>' (a small model on the CPU then always plays; not MARS's "
                           "training protocol).", "choices": ("none", "think_answer")})
    constrain_think_chars: int = field(default=200, metadata={"help": "Longest reasoning, in characters, that "
                                       "constrain think_answer allows before '</think>'.", "min": 0})

    def agent_kwargs(self, api_key: str | None = None) -> dict[str, Any]:
        """Keyword arguments of `make_agent('llm:...')` / `LLMAgentConfig` for this sampling, with the endpoint's
        bearer token when it needs one (None keeps the agent's default)."""
        extra: dict[str, Any] = {}
        kw: dict[str, Any] = {}
        if self.vllm_extensions:
            if self.top_k and self.top_k > 0:
                extra["top_k"] = self.top_k
            if self.stop:
                extra["include_stop_str_in_output"] = True
            if self.chat_template != "model":
                kw.update(chat_template=chat_template(self.chat_template), chat_template_only_for_chatml=True)
            if self.constrain != "none":
                kw.update(constrain=self.constrain, constrain_think_chars=self.constrain_think_chars)
        kw.update(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, extra_body=extra)
        if self.stop:
            kw["stop"] = list(self.stop)
        if api_key:
            kw["api_key"] = api_key
        return kw
