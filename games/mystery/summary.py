"""Long scripts in a small context: each character's script summarised by the served model to a token budget.

MIRAGE's scripts run to 60,000 words; the default model reads 8,192 tokens. Before play, every character's script
is summarised (MIRAGE summarises with the base model to 1,500 tokens by default), counted in tokens of the served
model's tokenizer:

- stage 1's six fields share the budget (game.SUMMARY_SHARES; with several stages, 1 - game.STAGE_SHARE of it), and
  each later stage's added text gets an equal part of the STAGE_SHARE rest;
- a text within its share is kept as it is; a longer one is summarised by the model with `max_tokens` = its share;
  a text too long for one request is cut into chunks that fit the context, each chunk is summarised, and the joined
  chunk summaries are summarised again (MIRAGE's scheme for super-long scripts);
- results are cached in the user's cache dir per script content, model and budget (`summary_path`), so a script is
  summarised once.

`check_budget` refuses (before any game request) a configuration whose prompts could exceed the model's context,
naming the budget to lower; the summariser itself never sends a request over the context.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from stratagem.agents.llm import LLMAgent, LLMAgentConfig
from stratagem.concurrency import map_concurrent
from stratagem.files import Journal, StoreDamage
from stratagem.games.core import Observation
from stratagem.games.mystery.game import GAME, STAGE_SHARE, SUMMARY_SHARES, MysteryConfig
from stratagem.games.mystery.schema import Script
from stratagem.settings import cache_dir

log = logging.getLogger(__name__)

SUMMARY_PHASE = "summarise"
PROMPT_OVERHEAD = 96  # tokens of the summary request around the text (instructions, chat template)
GAME_PROMPT_OVERHEAD = 400  # tokens of a player prompt besides the summary and the history (rules, instruction)
TOKENS_PER_WORD = 2.0  # upper bound used for word budgets (English averages ~1.3 with SmolLM2's tokenizer)


class ContextBudgetError(ValueError):
    """A mystery configuration whose requests could exceed the model's context."""


def check_budget(summary_tokens: int, config: MysteryConfig, context: int) -> None:
    """Raise ContextBudgetError when the largest player prompt (summary + history + instructions) plus the reply
    could exceed `context` tokens; the message names the budgets to lower."""
    if config.protocol == "mirage":
        # the whole script up to full_script_tokens; the history up to its budget plus the act that passes it
        # (it is summarised before the next act); the own last act and its outcome; the reply
        script = max(summary_tokens, config.full_script_tokens)
        need = script + config.history_tokens + 3 * config.player_max_tokens + GAME_PROMPT_OVERHEAD + \
            config.player_max_tokens
        if need > context:
            raise ContextBudgetError(
                f"a mirage player prompt could take {need} tokens (full_script_tokens={config.full_script_tokens} + "
                f"history_tokens={config.history_tokens} + 4 x player_max_tokens={config.player_max_tokens} + "
                f"{GAME_PROMPT_OVERHEAD}), over the model's context of {context} tokens: lower full_script_tokens "
                f"or history_tokens by {need - context}")
        return
    history = int(config.history_words * TOKENS_PER_WORD)
    need = summary_tokens + history + GAME_PROMPT_OVERHEAD + config.player_max_tokens
    if need > context:
        raise ContextBudgetError(
            f"a player prompt could take {need} tokens (summary_tokens={summary_tokens} + history_words="
            f"{config.history_words} (~{history} tokens) + {GAME_PROMPT_OVERHEAD} + player_max_tokens="
            f"{config.player_max_tokens}), over the model's context of {context} tokens: lower summary_tokens "
            f"to at most {max(0, summary_tokens - (need - context))}")


def context_length(model_dir: str) -> int:
    """The model's context in tokens, from its config (max_position_embeddings)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048)


def served_context(models: dict[str, Any], model: str) -> int | None:
    """The context an OpenAI-compatible server grants `model`, from its `/v1/models` reply (vLLM reports
    `max_model_len`, which the server may set below the model's own context); None when it does not say."""
    for m in models.get("data", []):
        if m.get("id") == model and isinstance(m.get("max_model_len"), int):
            return m["max_model_len"]
    return None


async def endpoint_context(base_url: str, model: str, api_key: str | None = None) -> int | None:
    """`served_context` of the server at `base_url` (None when it cannot be asked)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.get(base_url.rstrip("/") + "/models", headers=headers)
            r.raise_for_status()
            return served_context(r.json(), model)
    except (httpx.HTTPError, ValueError):
        return None


@lru_cache(maxsize=4)
def hf_token_counter(model_dir: str) -> Callable[[str], int]:
    """Token counter of the served model's tokenizer (transformers AutoTokenizer from the model directory)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def summary_path(script: Script, model: str, budget: int) -> Path:
    """Cache file of a script's summaries: keyed by the script's content (every field and note), model and budget."""
    h = hashlib.sha256(json.dumps([script.characters, [s.characters for s in script.stages], script.notes],
                                  sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return cache_dir() / "mystery" / "summaries" / f"{h}-{safe}-{budget}.jsonl"


def _prompt(name: str, part: str, text: str, budget: int) -> Observation:
    words = max(10, int(budget / TOKENS_PER_WORD * 1.3))
    return Observation(game=GAME, seat=-1, role="summariser", phase=SUMMARY_PHASE, legal_actions=[], messages=[
        {"role": "system", "content": "You summarise parts of a murder mystery character's script faithfully."},
        {"role": "user", "content": f"The {part} of {name}:\n{text}\n\nSummarise it in at most {words} words, in "
                                    "the second person, keeping names, times, places and secrets."}])


Ask = Callable[[Observation, int], Awaitable[str]]  # (request, max_tokens) -> reply text


def llm_ask(base_url: str, model: str, api_key: str | None = None) -> tuple[Ask, Callable[[], Awaitable[None]]]:
    """An `Ask` over the served model at temperature 0, and the coroutine function that closes its client."""

    key: dict[str, Any] = {"api_key": api_key} if api_key else {}
    agent = LLMAgent(LLMAgentConfig(base_url=base_url, model=model, temperature=0.0, logprobs=False, **key))

    async def ask(obs: Observation, max_tokens: int) -> str:
        kw = agent.request(obs)
        kw["max_tokens"] = max_tokens
        resp = await agent._client.chat.completions.create(**kw)
        return resp.choices[0].message.content or ""

    return ask, agent.aclose


@dataclass
class Summariser:
    """Summaries by the served model (`ask`, with max_tokens = the share) counted by `count` within `context`."""

    ask: Ask
    count: Callable[[str], int]
    context: int
    calls: int = 0

    @staticmethod
    def chunks(text: str, n: int) -> list[str]:
        """`text` cut into `n` pieces of about equal length, at a space or line break near each cut when there is
        one (any language: Chinese text has no spaces)."""
        size = -(-len(text) // n)
        out, start = [], 0
        while start < len(text):
            end = min(len(text), start + size)
            cut = max(text.rfind(" ", start + size // 2, end), text.rfind("\n", start + size // 2, end))
            end = cut + 1 if end < len(text) and cut > start else end
            out.append(text[start:end])
            start = end
        return [c for c in out if c.strip()]

    async def summarise(self, name: str, part: str, text: str, budget: int) -> str:
        """`text` within `budget` tokens: as it is when it fits, else summarised by the model (in chunks that each
        fit the context in one request, then their joined summaries again, when it is longer than that)."""
        n = self.count(text) if text.strip() else 0
        if n <= budget:
            return text.strip()
        room = self.context - PROMPT_OVERHEAD - budget
        if room < 64:
            raise ContextBudgetError(f"a summary share of {budget} tokens leaves no room for the text in a context "
                                     f"of {self.context} tokens: lower summary_tokens")
        if n > room:
            pieces = self.chunks(text, -(-n * 5 // (room * 4)))  # 25% margin: tokens are not spread evenly
            parts = [await self.summarise(name, part, c, budget) for c in pieces]
            return await self.summarise(name, part, "\n".join(parts), budget)
        self.calls += 1
        return (await self.ask(_prompt(name, part, text, budget), budget)).strip()

    async def character(self, script: Script, name: str, budget: int) -> list[str]:
        """The character's summary for each stage (cumulative: stage k shows stage 1's fields and what stages 2..k
        add)."""
        first = script.stages[0].characters[name]
        n_later = len(script.stages) - 1
        base = budget * (1 - STAGE_SHARE) if n_later else budget
        lines = []
        for f, share in SUMMARY_SHARES.items():
            if first.get(f, "").strip():
                lines.append(f"{f}: {await self.summarise(name, f, first[f], max(16, int(base * share)))}")
        if name in script.notes:
            lines.append(f"Note: {script.notes[name]}")
        out = ["\n".join(lines)]
        for k in range(1, len(script.stages)):
            added = "\n".join(t for t in script.stages[k].characters.get(name, {}).values() if t)
            share = max(16, int(budget * STAGE_SHARE / n_later))
            new = await self.summarise(name, f"stage {k + 1} script", added, share) if added else ""
            out.append(out[-1] + (f"\nNew in stage {k + 1}: {new}" if new else ""))
        return out


async def prepare_summaries(script: Script, ask: Ask, model: str, budget: int, count: Callable[[str], int],
                            context: int, *, use_cache: bool = True,
                            on_character: Callable[[str], Any] | None = None,
                            concurrency: int = 8) -> dict[str, list[str]]:
    """character -> per-stage summary within `budget` tokens, from the cache when there (see summary_path)."""

    path = summary_path(script, model, budget)
    cache = Journal(path)
    if use_cache and path.exists():
        try:
            records = cache.records()
            if len(records) == 1:
                return records[0]
            raise StoreDamage(f"{path}: expected one record, found {len(records)}")
        except StoreDamage as e:  # a cache is derived data: say so, set it aside, compute it again
            log.warning("summary cache damaged, recomputing it (%s)", e)
            path.replace(path.with_name(path.name + ".damaged"))
            cache.sidecar.unlink(missing_ok=True)
            cache = Journal(path)
    s = Summariser(ask, count, context)

    async def one(name: str) -> list[str]:
        summary = await s.character(script, name, budget)
        if on_character is not None:
            on_character(name)
        return summary

    # characters at once: the server batches their requests (one after another took most of a MIRAGE run)
    done = await map_concurrent(one, list(script.characters), max(1, concurrency))
    out: dict[str, list[str]] = dict(zip(script.characters, done))
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.write_all([json.dumps(out, ensure_ascii=False)])
    return out
