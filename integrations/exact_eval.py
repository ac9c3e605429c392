"""Exact evaluation of a policy instead of a sample of games: the model's policy as a table over every decision
point of a poker game, and what OpenSpiel computes from it.

In Kuhn poker and Leduc hold'em a seat's prompt is determined by its information state (its card, the public card,
the betting so far): 12 and 936 of them. At each, the probability the model gives each legal action is the
probability of that action's reply in the training protocol, read from the served model's log-probs: the prompt as
the game renders it (`decision_points`, replaying the real `SpielGame` to that point, with the seat's earlier
replies written as the protocol's canonical reply of the action it took), the forced reply prefix, then the tokens
of the rest of the reply (`<answer><BET>` with the default prefix `<answer><` leaves `BET>`, where generation stops;
since it stops inside any token that begins with the last token's text, e.g. `>\n`, the last factor is the mass of
all such tokens among the top 20 candidates).
`VLLMScorer` asks vLLM for those prompt log-probs (`/tokenize` renders the chat exactly as the server renders it for
sampling, `/v1/completions` with `prompt_logprobs` scores the continuation), one scoring request at a time: a
LoRA-enabled vLLM fails on a batch mixing prompt log-probs with other requests (vllm-project/vllm#29955; seen here on
the CPU build), so do not score on a server that is serving a rollout at the same time.

What the table is, exactly: the model's untempered distribution (log-probs are at temperature 1, without top-p /
top-k; the training sampler is sharper), over each action's canonical tokenization (another token split of the same
text is possible and counts as mass outside). The mass outside the legal actions is reported as the illegal-move
probability (mean and max over information states); the exploitability and the expected returns use the table
renormalised over the legal actions, and `*_as_played` returns count that mass as a forfeit (the seat loses its
chips in the pot, as the game scores an illegal act).

From the table: OpenSpiel's exploitability and NashConv, and the exact expected return per seat against the CFR
average policy and the exact Nash equilibrium (agents/equilibrium.py). Known values (tests): the uniform random
policy's exploitability is 0.4583 in Kuhn poker and 2.3736 in Leduc hold'em. Bots are policies too (`random`,
`cfr`, `nash`: no server). The thinking protocol has no table (a reply's thinking is free text), so it is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from stratagem.agents.sampling import SamplingConfig
from stratagem.games.base import GameConfig, ReplyFormat, parse_answer, response_prefix
from stratagem.games.core import Reply
from stratagem.integrations.adapter_check import run_adapter

EXACT_GAMES = ("kuhn_poker", "leduc_poker")
# perfect-information games evaluated exactly below fixed openings: there a prompt carries the move history, so the
# policy is one per history, and the whole of tic-tac-toe has 294,778 decision points (FULL_TREE_POINTS)
TREE_GAMES = ("tictactoe",)
# the documented subtrees: four plies each (X, O, X, O; cells 0-8 row by row), X to move, covering the three kinds of
# first move (centre, corner, edge) and the usual replies; each leaves at most 5 empty cells (about 200 decision
# points below it)
OPENINGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "tictactoe": ((4, 0, 8, 2), (4, 1, 0, 8), (0, 4, 8, 1), (0, 1, 4, 8), (1, 4, 7, 0), (0, 8, 2, 4))}
FULL_TREE_POINTS = {"tictactoe": 294_778}
TOP = 20  # candidates per position read at a reply's last token (vLLM's default max_logprobs)
BOT_POLICIES = ("random", "cfr", "nash")
Table = dict[str, dict[int, float]]


@dataclass
class ExactEvalConfig:
    models: list[str] = field(default_factory=lambda: ["base"], metadata={"help": "Policies to evaluate: served "
                              "model / adapter names, or the bots random, cfr, nash (no server needed)."})
    games: list[str] = field(default_factory=lambda: ["kuhn_poker"], metadata={"help": "Games: kuhn_poker, "
                             "leduc_poker (whole), tictactoe (below OPENINGS)."})
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "OpenAI-compatible vLLM endpoint "
                          "(needs /tokenize and prompt_logprobs: vLLM's own server)."})
    api_key: str | None = field(default=None, metadata={"help": "Bearer token for the endpoint."})
    source: str = field(default="vllm", metadata={"help": "Where the log-probs come from: 'vllm' (the served "
                        "models; a reply's last factor over the top 20 candidates) or 'trainer' (the model loaded "
                        "here with transformers, adapters from run/adapters/NAME; exact over the whole vocabulary, "
                        "and faster on a CPU: every common start of the prompts computed once).",
                        "choices": ("vllm", "trainer")})
    model_path: str = field(default="default", metadata={"help": "With source 'trainer': the base model (a "
                            "registered name, a directory or a hub id)."})
    run: str | None = field(default=None, metadata={"help": "With source 'trainer': the run whose adapters "
                            "(run/adapters/iter-K) the model names refer to."})
    concurrency: int = field(default=8, metadata={"help": "Scoring requests in flight at once.", "min": 1})
    out: str | None = field(default=None, metadata={"help": "Directory for each policy table (JSON, reused by a "
                            "rerun with the same model, game and protocol) and summary.json."})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "The protocol's sampling "
                                     "fields that shape a reply (stop strings, chat template); temperature and "
                                     "top-p do not enter the table."})
    reply: ReplyFormat = field(default_factory=ReplyFormat, metadata={"help": "The reply protocol (the training "
                               "protocol's by default)."})
    per_role: bool = field(default=False, metadata={"help": "The models are per-role policies (a run trained with "
                           "trainer.adapters per_role): model M's seat s is scored by its role's adapter, M-ROLE "
                           "(served under that name, or run/adapters/M/ROLE); base stays base."})


# ---- decision points ------------------------------------------------------------------------------------------

@dataclass
class DecisionPoint:
    """One information state of one seat: the chat the game shows there and the legal actions (label -> id)."""

    key: str
    seat: int
    messages: list[dict[str, str]]
    response_prefix: str
    legal: dict[str, int]


def canonical_reply(fmt: ReplyFormat, stop: list[str], legal: list[str], action: str) -> str:
    """The completion (after the forced prefix) that plays `action` in the protocol `fmt` with stop strings `stop`:
    `<answer>ACTION` up to the action's closing '>' where generation stops there, else with `</answer>` (a protocol
    whose reply then ends at the end-of-turn token, which is not scored)."""
    if fmt.think:
        raise ValueError("reply.think: a thinking reply is free text before its answer, so the policy has no table; "
                         "evaluate exactly in a protocol without thinking")
    full = f"<answer>{action}" + ("" if ">" in stop else "</answer>")
    prefix = response_prefix(fmt, legal)
    if not full.startswith(prefix):
        raise ValueError(f"reply.response_prefix {fmt.response_prefix!r}: the reply {full!r} does not start with "
                         f"the forced prefix {prefix!r}")
    chosen, why = parse_answer(full, legal, fmt)
    if chosen != action:
        raise ValueError(f"the protocol does not read {full!r} as {action!r} ({why})")
    return full[len(prefix):]


def decision_points(game: str, fmt: ReplyFormat, stop: list[str]) -> dict[str, DecisionPoint]:
    """Every information state of `game` where a seat acts (in a tree game: every history below its openings), with
    the prompt the real game renders there: a depth-first walk of OpenSpiel's tree, the `SpielGame` replayed along each history (chance outcomes applied as
    the history says, each earlier move as its canonical reply). Two histories of one information state must give
    the same prompt (the game shows a seat only its information); a difference is an error."""
    from stratagem.games.registry import make_game

    if game not in EXACT_GAMES + TREE_GAMES:
        raise ValueError(f"exact evaluation covers {', '.join(EXACT_GAMES + TREE_GAMES)}, got {game!r}")
    out: dict[str, DecisionPoint] = {}

    def replay(history: list[int]) -> Any:
        g = make_game(game, GameConfig(reply=fmt))
        g.reset(0)
        g._advance_chance = lambda: None  # chance outcomes come from the history
        g.state = g.spiel.new_initial_state()
        for a in history:
            if g.state.is_chance_node():
                g.state.apply_action(a)
                continue
            seat = g.state.current_player()
            labels = {i: lab for lab, i in g.legal_actions(seat).items()}
            legal = list(labels.values())
            # a reply with its action set is recorded as written: the forced prefix and the completion
            text = response_prefix(fmt, legal) + canonical_reply(fmt, stop, legal, labels[a])
            g.step(seat, Reply(text=text, action=labels[a]))
        return g

    def walk(state: Any, history: list[int]) -> None:
        if state.is_terminal():
            return
        if state.is_chance_node():
            for a, _ in state.chance_outcomes():
                walk(state.child(a), history + [a])
            return
        seat = state.current_player()
        key = state.information_state_string(seat)
        g = replay(history)
        obs = g.observe(seat)
        point = DecisionPoint(key, seat, obs.messages, obs.response_prefix, g.legal_actions(seat))
        seen = out.setdefault(key, point)
        if (seen.messages, seen.response_prefix) != (point.messages, point.response_prefix):
            raise AssertionError(f"{game}: information state {key!r} is shown as two different prompts")
        for a in state.legal_actions():
            walk(state.child(a), history + [a])

    for root in roots(game):
        walk(_play(game, root), list(root))
    return out


def spiel_game(game: str) -> Any:
    """The OpenSpiel game behind a registered game name (tictactoe is OpenSpiel's tic_tac_toe)."""
    from stratagem.games.registry import make_game

    return make_game(game).spiel


def roots(game: str) -> tuple[tuple[int, ...], ...]:
    """Where the exact evaluation of `game` starts: the whole game (the empty history), or a tree game's openings."""
    return OPENINGS.get(game, ((),))


def _play(game: str, history: tuple[int, ...] | list[int]) -> Any:
    state = spiel_game(game).new_initial_state()
    for a in history:
        state.apply_action(a)
    return state


def estimate_tree_points(game: str, paths: int, seed: int = 0) -> dict[str, float]:
    """Knuth's estimate of the number of decision histories below `game`'s roots (a prompt per history where the
    prompt carries the history, as in tic-tac-toe and Hanabi): along a path taking uniform random children, chance
    outcomes included, each decision node counts the product of the branching factors above it; the mean over
    `paths` paths is unbiased. Returns the mean and its standard error."""
    import random
    import statistics

    rng = random.Random(f"tree:{seed}")
    starts = roots(game)  # built once: every path starts from one of them
    estimates = []
    for i in range(paths):
        state, weight, total = _play(game, starts[i % len(starts)]), float(len(starts)), 0.0
        while not state.is_terminal():
            children = [a for a, _ in state.chance_outcomes()] if state.is_chance_node() else state.legal_actions()
            if not state.is_chance_node():
                total += weight
            weight *= len(children)
            state.apply_action(rng.choice(children))
        estimates.append(total)
    mean = statistics.fmean(estimates)
    return {"mean": mean, "stderr": statistics.stdev(estimates) / math.sqrt(paths) if paths > 1 else math.inf,
            "paths": paths}


# ---- scoring ----------------------------------------------------------------------------------------------------

class Scorer(Protocol):
    async def logprobs(self, point: DecisionPoint, completions: dict[str, str]) -> dict[str, float]:
        """log P(completion | the point's prompt and forced prefix), per action label."""


class VLLMScorer:
    """Log-probs from a vLLM server: the chat (with the forced prefix as the partial assistant turn, and the
    protocol's chat template where one is sent) rendered by /tokenize as the server renders it for sampling, the
    completion tokenized on its own (generation continues after the prefix's tokens), then /v1/completions with
    `prompt_logprobs` over the concatenation."""

    def __init__(self, base_url: str, model: str, sampling: SamplingConfig, api_key: str | None = None,
                 timeout: float = 600.0):
        import httpx

        from stratagem.agents.llm import LLMAgent

        self.model = model
        self.stop = [x for x in sampling.stop if x]
        url = base_url.rstrip("/")
        self.root = url[: -len("/v1")] if url.endswith("/v1") else url
        self.agent = LLMAgent(**{**sampling.agent_kwargs(api_key), "model": model, "base_url": base_url})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(timeout=timeout, headers=headers)
        self.requests = 0
        self._completion_ids: dict[str, list[int]] = {}
        # one scoring request at a time: vLLM's LoRA logits path fails on a batch that mixes prompt log-probs
        # with other rows (measured on the CPU build; vllm-project/vllm#29955), which kills the engine
        self._one_at_a_time = asyncio.Lock()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post(f"{self.root}{path}", json=body)
        self.requests += 1
        if r.status_code != 200:
            raise RuntimeError(f"{path} answered {r.status_code} for model {self.model!r}: {r.text[:300]}")
        return r.json()

    async def _tokens(self, text: str) -> list[int]:
        if text not in self._completion_ids:
            data = await self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
            self._completion_ids[text] = data["tokens"]
        return self._completion_ids[text]

    async def logprobs(self, point: DecisionPoint, completions: dict[str, str]) -> dict[str, float]:
        from stratagem.games.core import Observation

        if self.agent.config.chat_template and self.agent.chatml is None:
            from stratagem.agents.llm import served_template_is_chatml

            self.agent.chatml = await served_template_is_chatml(self.agent.config.base_url, self.model,
                                                                self.agent.config.api_key)
        obs = Observation(game="", seat=point.seat, role="", phase="play", messages=point.messages,
                          legal_actions=list(point.legal), response_prefix=point.response_prefix)
        req = self.agent.request(obs)
        body = {"model": self.model, "messages": req["messages"],
                **{k: v for k, v in req["extra_body"].items()
                   if k in ("continue_final_message", "add_generation_prompt", "chat_template",
                            "chat_template_kwargs")}}
        body.setdefault("add_generation_prompt", True)
        prompt = (await self._post("/tokenize", body))["tokens"]
        out: dict[str, float] = {}
        for label, text in completions.items():
            tail = await self._tokens(text)
            ends_at_stop = any(text.endswith(x) for x in self.stop)
            async with self._one_at_a_time:
                data = await self._post("/v1/completions", {"model": self.model, "prompt": prompt + tail,
                                                            "max_tokens": 1, "temperature": 0.0,
                                                            "prompt_logprobs": TOP if ends_at_stop else 0})
            plp = data["choices"][0]["prompt_logprobs"]
            positions = list(zip(range(len(prompt), len(prompt) + len(tail)), tail))
            total = sum(float(plp[pos][str(tok)]["logprob"]) for pos, tok in positions[:-1])
            pos, tok = positions[-1]
            if ends_at_stop:
                # generation stops inside any token that starts with the last token's text (">" then more, e.g.
                # ">\n"), so each of those ends the reply with this action: their mass among the top candidates
                last = plp[pos][str(tok)]["decoded_token"]
                total += math.log(sum(math.exp(float(c["logprob"])) for c in plp[pos].values()
                                      if str(c.get("decoded_token", "")).startswith(last)))
            else:
                total += float(plp[pos][str(tok)]["logprob"])
            out[label] = total
        return out

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.agent.aclose()


class TrainerScorer:
    """Log-probs from the model in this process (a `LoRATrainer`'s, or a base model and adapter loaded from disk),
    exact where vLLM's are truncated: the chat rendered by the tokenizer's own template (the one vLLM applies, or
    the protocol's `chat_template`), then the continuation's tokens, and the last factor summed over the whole
    vocabulary (every token that starts with the last token's text). A whole table is scored by `score_all`: every
    (prompt + action reply) sequence of every point laid out as token trees (stratagem.token_tree: each common start,
    the rules, a seat's earlier prompt, the prompt before its actions, computed once) of at most `budget` tokens, one
    forward each, the output layer run only where a reply token is predicted. `logprobs` scores one point: prompts in
    token order (`prepare`), each continuing from the keys and values of the start it shares with the one before,
    each action from the prompt's (thousands of small forwards: overhead-bound on a CPU)."""

    def __init__(self, model: Any, tokenizer: Any, sampling: SamplingConfig,
                 activate: Callable[[], Any] | None = None, budget: int = 2048):
        """`activate`: called before each scoring, to put the adapter this scorer stands for in place (one of a
        trainer's per-role adapters). `budget`: tree tokens per forward of `score_all`."""
        self.model, self.tok, self.activate, self.budget = model, tokenizer, activate, budget
        self.stop = [x for x in sampling.stop if x]
        self.chat_template = None
        if sampling.chat_template != "model" and "<|im_start|>" in str(getattr(tokenizer, "chat_template", "")):
            from stratagem.games.base import chat_template  # as the agents send it: to a ChatML model only

            self.chat_template = chat_template(sampling.chat_template)
        self.requests = 0
        self._rendered: dict[str, list[int]] = {}
        self._cached: list[int] = []  # the tokens whose keys and values are in _cache
        self._cache: Any = None
        self._starts: dict[str, list[int]] = {}  # last-token text -> vocabulary ids whose text starts with it
        self._vocab: list[str] | None = None

    @classmethod
    def from_pretrained(cls, model_path: str, adapter_path: str | None, sampling: SamplingConfig) -> TrainerScorer:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model: Any = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)  # or the PeftModel around it
        if adapter_path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_path)
        return cls(model.eval(), AutoTokenizer.from_pretrained(model_path), sampling)

    def render(self, point: DecisionPoint) -> list[int]:
        messages = [*point.messages, {"role": "assistant", "content": point.response_prefix}] \
            if point.response_prefix else list(point.messages)
        kw = {"chat_template": self.chat_template} if self.chat_template else {}
        ids = self.tok.apply_chat_template(messages, tokenize=True, continue_final_message=bool(point.response_prefix),
                                           add_generation_prompt=not point.response_prefix, **kw)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def _forward(self, ids: list[int]) -> Any:
        import torch

        out = self.model(input_ids=torch.tensor([ids], device=self.model.device), past_key_values=self._cache,
                         use_cache=True)
        self._cache = out.past_key_values
        self.requests += 1
        return torch.log_softmax(out.logits[0].float(), dim=-1)

    def prepare(self, points: list[DecisionPoint]) -> list[DecisionPoint]:
        """The order to score in: by prompt tokens, so that each prompt shares the longest start with the one
        before it (the rules; a seat's later prompt extends its earlier one), which stays in the cache."""
        self.model.eval()  # a trainer's model may be in training mode (dropout)
        self._rendered = {p.key: self.render(p) for p in points}
        return sorted(points, key=lambda p: self._rendered[p.key])

    def _crop(self, n: int) -> None:
        """Forget every cached position from n on (a negative crop: newer transformers deprecate the positive)."""
        if self._cache is not None and self._cache.get_seq_length() > n:
            self._cache.crop(n - self._cache.get_seq_length())

    def _starting_with(self, text: str) -> list[int]:
        if text not in self._starts:
            if self._vocab is None:
                self._vocab = [self.tok.decode([i]) for i in range(len(self.tok))]
            self._starts[text] = [i for i, t in enumerate(self._vocab) if t.startswith(text)]
        return self._starts[text]

    async def score_all(self, items: list[tuple[DecisionPoint, dict[str, str]]],
                        on_point: Callable[[], Any] | None = None) -> list[dict[str, float]]:
        """What `logprobs` gives for each (point, completions) of `items`, in a few large forwards: every prompt +
        completion sequence in token trees of at most `budget` tokens (`tree_groups`, `tree_hidden`: a node's hidden
        state is the one it has in each sequence through it), the output layer only on the nodes that predict a
        completion token. `on_point` is called as each point's last sequence is scored. Leaves the per-point cache
        of `logprobs` alone."""
        import torch

        from stratagem.token_tree import tree_groups, tree_hidden

        if self.activate is not None:
            self.activate()  # the adapter this scorer stands for: peft injects it into the decoder's modules
        self.model.eval()  # a trainer's model may be in training mode (dropout)
        # a peft model's base model holds the injected adapter layers; its decoder skips the output layer
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        decoder, head = inner.get_decoder(), inner.get_output_embeddings()
        seqs: list[list[int]] = []
        # per sequence: its item, label, prompt length, completion tokens, whether the completion ends at a stop
        meta: list[tuple[int, str, int, list[int], bool]] = []
        for i, (point, completions) in enumerate(items):
            prompt = self.render(point)
            for label, text in completions.items():
                tail = self.tok(text, add_special_tokens=False)["input_ids"]
                seqs.append(prompt + tail)
                meta.append((i, label, len(prompt), tail, any(text.endswith(x) for x in self.stop)))
        out: list[dict[str, float]] = [{} for _ in items]
        left = [len(c) for _, c in items]
        for n in left:
            if n == 0 and on_point:  # nothing to score
                on_point()
        with torch.no_grad():
            for group in tree_groups(seqs, self.budget):
                hidden, paths = tree_hidden(decoder, [seqs[j] for j in group], self.model.device)
                self.requests += 1
                # completion token k of a sequence is predicted by the node of the position before it
                rows: dict[int, int] = {}
                for j, path in zip(group, paths):
                    _, _, n_prompt, tail, _ = meta[j]
                    for pos in range(n_prompt - 1, n_prompt + len(tail) - 1):
                        rows.setdefault(path[pos], len(rows))
                lps = torch.log_softmax(head(hidden[torch.tensor(list(rows), device=hidden.device)]).float(), -1)
                for j, path in zip(group, paths):
                    i, label, n_prompt, tail, ends_at_stop = meta[j]
                    at = [rows[path[pos]] for pos in range(n_prompt - 1, n_prompt + len(tail) - 1)]
                    total = sum(float(lps[r, t]) for r, t in zip(at[:-1], tail[:-1]))
                    if ends_at_stop:
                        ids = self._starting_with(self.tok.decode([tail[-1]]))
                        total += float(torch.logsumexp(lps[at[-1]][ids], dim=0))
                    else:
                        total += float(lps[at[-1], tail[-1]])
                    out[i][label] = total
                    left[i] -= 1
                    if left[i] == 0 and on_point:
                        on_point()
        # each point's labels in its completions' order, as logprobs gives them
        return [{label: got[label] for label in completions} for got, (_, completions) in zip(out, items)]

    async def logprobs(self, point: DecisionPoint, completions: dict[str, str]) -> dict[str, float]:
        import torch

        if self.activate is not None:
            self.activate()
        prompt = self._rendered.get(point.key) or self.render(point)
        # reuse the cached start this prompt shares with the last one, always running at least its last token
        n = min(len(os.path.commonprefix([self._cached, prompt])), len(prompt) - 1)
        out: dict[str, float] = {}
        with torch.no_grad():
            self._crop(n)
            if n == 0:
                self._cache = None
            last = self._forward(prompt[n:])[-1]
            for label, text in completions.items():
                tail = self.tok(text, add_special_tokens=False)["input_ids"]
                lps = [last] + (list(self._forward(tail[:-1])) if len(tail) > 1 else [])
                total = sum(float(lp[t]) for lp, t in zip(lps[:-1], tail[:-1]))
                if any(text.endswith(x) for x in self.stop):
                    ids = self._starting_with(self.tok.decode([tail[-1]]))
                    total += float(torch.logsumexp(lps[-1][ids], dim=0))
                else:
                    total += float(lps[-1][tail[-1]])
                out[label] = total
                self._crop(len(prompt))
        self._cached = prompt
        return out

    async def aclose(self) -> None:
        pass


@dataclass
class PolicyTable:
    """A policy over a game's information states: `table` renormalised over the legal actions (what OpenSpiel
    reads), `legal_mass` the probability the model put on the legal actions' replies before that (1 - the
    illegal-move probability)."""

    game: str
    table: Table
    legal_mass: dict[str, float] = field(default_factory=dict)


class SeatScorer:
    """One policy whose seats are played by different models (per-role adapters): each seat's decision points
    scored by that seat's scorer, one seat after the other (a trainer scorer keeps one adapter's keys and values)."""

    def __init__(self, scorers: dict[int, Any]):
        self.scorers = scorers

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.scorers.values())

    def prepare(self, points: list[DecisionPoint]) -> list[DecisionPoint]:
        out: list[DecisionPoint] = []
        for seat, sc in sorted(self.scorers.items()):
            mine = [p for p in points if p.seat == seat]
            out += sc.prepare(mine) if hasattr(sc, "prepare") else mine
        if len(out) != len(points):
            raise ValueError(f"SeatScorer: points of seats {sorted({p.seat for p in points} - set(self.scorers))} "
                             "have no scorer")
        return out

    async def logprobs(self, point: DecisionPoint, completions: dict[str, str]) -> dict[str, float]:
        return await self.scorers[point.seat].logprobs(point, completions)

    async def score_all(self, items: list[tuple[DecisionPoint, dict[str, str]]],
                        on_point: Callable[[], Any] | None = None) -> list[dict[str, float]]:
        """Each seat's items scored by its scorer, one seat after the other: in one `score_all` where it has one,
        else point by point (in its `prepare` order where it has one)."""
        missing = sorted({p.seat for p, _ in items} - set(self.scorers))
        if missing:
            raise ValueError(f"SeatScorer: points of seats {missing} have no scorer")
        out: list[dict[str, float]] = [{} for _ in items]
        for seat, sc in sorted(self.scorers.items()):
            mine = [i for i, (p, _) in enumerate(items) if p.seat == seat]
            if hasattr(sc, "score_all"):
                for i, lps in zip(mine, await sc.score_all([items[i] for i in mine], on_point)):
                    out[i] = lps
                continue
            where = {id(items[i][0]): i for i in mine}
            order = [items[i][0] for i in mine]
            for point in sc.prepare(order) if hasattr(sc, "prepare") else order:
                i = where[id(point)]
                out[i] = await sc.logprobs(point, items[i][1])
                if on_point:
                    on_point()
        return out

    async def aclose(self) -> None:
        for sc in {id(s): s for s in self.scorers.values()}.values():
            if hasattr(sc, "aclose"):
                await sc.aclose()


async def policy_table(game: str, points: dict[str, DecisionPoint], scorer: Scorer, fmt: ReplyFormat,
                       stop: list[str], concurrency: int = 8,
                       on_point: Callable[[], Any] | None = None, batched: bool = True) -> PolicyTable:
    """Score every decision point into a PolicyTable: all at once through the scorer's `score_all` where it has one
    (and `batched`), else point by point (at most `concurrency` at once)."""
    import math

    from stratagem.concurrency import map_concurrent

    def completions(point: DecisionPoint) -> dict[str, str]:
        labels = list(point.legal)
        return {lab: canonical_reply(fmt, stop, labels, lab) for lab in labels}

    def row(point: DecisionPoint, lps: dict[str, float]) -> tuple[str, dict[int, float], float]:
        probs = {point.legal[lab]: math.exp(lp) for lab, lp in lps.items()}
        mass = sum(probs.values())
        if not mass > 0:
            raise ValueError(f"{game}: the model gives every legal action probability 0 at {point.key!r}")
        return point.key, {a: p / mass for a, p in probs.items()}, mass

    def forced(point: DecisionPoint) -> tuple[str, dict[int, float], float]:
        # the forced prefix already holds the one legal reply: the model has nothing left to choose
        return point.key, {next(iter(point.legal.values())): 1.0}, 1.0

    async def one(point: DecisionPoint) -> tuple[str, dict[int, float], float]:
        comps = completions(point)  # checks the protocol at a forced point too
        if len(comps) == 1:
            return forced(point)
        return row(point, await scorer.logprobs(point, comps))

    if batched and hasattr(scorer, "score_all"):
        items = [(p, completions(p)) for p in points.values()]
        todo = [(p, c) for p, c in items if len(c) > 1]
        scored = iter(await scorer.score_all(todo, on_point))
        rows = [row(p, next(scored)) if len(c) > 1 else forced(p) for p, c in items]
        if on_point:
            for _ in range(len(items) - len(todo)):
                on_point()
        return PolicyTable(game, {k: t for k, t, _ in rows}, {k: m for k, _, m in rows})

    order = list(points.values())
    if hasattr(scorer, "prepare"):
        order = scorer.prepare(order)
        concurrency = 1  # one model in this process, one cache
    rows = await map_concurrent(one, order, concurrency,
                                (lambda _: on_point()) if on_point else None)
    return PolicyTable(game, {k: t for k, t, _ in rows}, {k: m for k, _, m in rows})


def bot_table(game: str, name: str) -> PolicyTable:
    """A bot's policy as a table: uniform random, the CFR average policy, or the exact Nash equilibrium (a tree
    game: uniform random only, below its openings)."""
    if game in TREE_GAMES and name != "random":
        raise ValueError(f"{game}: the tabular bots there are random only (cfr and nash are poker's), got {name!r}")
    if name == "cfr":
        from stratagem.agents.bots import cfr_policy

        table = cfr_policy(game)
    elif name == "nash":
        from stratagem.agents.equilibrium import nash_policy

        table = nash_policy(game)
    elif name == "random":
        table = {}

        def walk(state: Any) -> None:
            if state.is_terminal():
                return
            if not state.is_chance_node():
                legal = state.legal_actions()
                table[state.information_state_string()] = {a: 1.0 / len(legal) for a in legal}
            for a in (state.legal_actions() if not state.is_chance_node() else [a for a, _ in state.chance_outcomes()]):
                walk(state.child(a))

        for root in roots(game):
            walk(_play(game, root))
    else:
        raise ValueError(f"unknown bot policy {name!r}; expected one of {', '.join(BOT_POLICIES)}")
    return PolicyTable(game, table, {k: 1.0 for k in table})


# ---- exact numbers ----------------------------------------------------------------------------------------------

def expected_returns(game: str, policies: list[PolicyTable], forfeit_illegal: bool = False,
                     utility: Callable[[list[float]], list[float]] | None = None) -> list[float]:
    """Exact expected returns of both seats when seat s plays `policies[s]`: a walk of the whole tree weighting
    chance and both policies. With `forfeit_illegal`, a seat's illegal-move mass (1 - legal_mass) ends the game
    there as its forfeit (it loses its chips in the pot, the other seat wins them). `utility` maps a terminal's
    returns to what is averaged instead (e.g. win indicators: the exact win probabilities)."""
    import pyspiel

    from stratagem.games.registry import make_game

    if forfeit_illegal and utility is not None:
        raise ValueError("expected_returns: a utility of the returns and forfeited chips do not combine")
    scorer_game = make_game(game) if forfeit_illegal else None

    def value(state: Any) -> list[float]:
        if state.is_terminal():
            returns = [float(r) for r in state.returns()]
            return utility(returns) if utility else returns
        if state.is_chance_node():
            out = [0.0, 0.0]
            for a, p in state.chance_outcomes():
                out = [o + p * v for o, v in zip(out, value(state.child(a)))]
            return out
        seat = state.current_player()
        pol = policies[seat]
        key = state.information_state_string(seat)
        probs = pol.table[key]
        mass = pol.legal_mass.get(key, 1.0) if forfeit_illegal else 1.0
        out = [0.0, 0.0]
        for a, p in probs.items():
            out = [o + mass * p * v for o, v in zip(out, value(state.child(a)))]
        if mass < 1.0:
            assert scorer_game is not None  # mass < 1 only with forfeit_illegal
            scorer_game.state = state
            lost = scorer_game.normal_loss(seat)
            out[seat] -= (1.0 - mass) * lost
            out[1 - seat] += (1.0 - mass) * lost
        return out

    return value(pyspiel.load_game(game).new_initial_state())


def exact_metrics(game: str, policy: PolicyTable) -> dict[str, Any]:
    """Exploitability and NashConv (OpenSpiel), the illegal-move probability, and the exact expected return per
    seat against the CFR average policy and the Nash equilibrium (first: the policy moves first), renormalised
    and as played."""
    import pyspiel

    from stratagem.agents.bots import tabular_policy

    spiel = pyspiel.load_game(game)
    tab = tabular_policy(policy.table)
    illegal = [1.0 - m for m in policy.legal_mass.values()]
    out: dict[str, Any] = {"exploitability": float(pyspiel.exploitability(spiel, tab)),
                           "nash_conv": float(pyspiel.nash_conv(spiel, tab)),
                           "illegal_prob_mean": sum(illegal) / len(illegal) if illegal else 0.0,
                           "illegal_prob_max": max(illegal, default=0.0), "information_states": len(policy.table)}
    for bot in ("cfr", "nash"):
        other = bot_table(game, bot)
        for played in (False, True):
            suffix = "_as_played" if played else ""
            first = expected_returns(game, [policy, other], played)[0]
            second = expected_returns(game, [other, policy], played)[1]
            out[f"vs_{bot}{suffix}"] = {"first": first, "second": second, "mean": (first + second) / 2}
    return out


def tree_metrics(game: str, policy: PolicyTable) -> dict[str, Any]:
    """A tree game's exact numbers below its openings (`OPENINGS`, each weighted equally), the policy in seat 0 (X,
    `first`) and in seat 1 (`second`): its expected return against the uniform random opponent and against a best
    response (the opponent that minimises it, by backward induction), both renormalised over the legal actions and
    `_as_played` (the mass outside them loses the game); `optimal`, what perfect play guarantees there (minimax), and
    `best_response_gap` = optimal - vs_best_response, mean of the seats: 0 exactly when the policy plays perfectly
    below the openings (the subtree's exploitability)."""
    lo = float(spiel_game(game).min_utility())

    def value(state: Any, seat: int, opponent: str, played: bool) -> float:
        if state.is_terminal():
            return float(state.returns()[seat])
        mover = state.current_player()
        if opponent == "minimax" or mover != seat:
            vals = [value(state.child(a), seat, opponent, played) for a in state.legal_actions()]
            if opponent == "random":
                return sum(vals) / len(vals)
            return max(vals) if mover == seat else min(vals)
        key = state.information_state_string(mover)
        mass = policy.legal_mass.get(key, 1.0) if played else 1.0
        return mass * sum(p * value(state.child(a), seat, opponent, played) for a, p in policy.table[key].items()) \
            + (1.0 - mass) * lo

    starts = [_play(game, r) for r in roots(game)]
    out: dict[str, Any] = {"scope": f"below {len(starts)} openings (OPENINGS), not the whole game",
                           "openings": [list(r) for r in roots(game)], "information_states": len(policy.table),
                           "full_tree_points": FULL_TREE_POINTS.get(game)}
    for name, opponent, played in (("vs_random", "random", False), ("vs_random_as_played", "random", True),
                                   ("vs_best_response", "best", False),
                                   ("vs_best_response_as_played", "best", True), ("optimal", "minimax", False)):
        first, second = (sum(value(s, seat, opponent, played) for s in starts) / len(starts) for seat in (0, 1))
        out[name] = {"first": first, "second": second, "mean": (first + second) / 2}
    out["best_response_gap"] = out["optimal"]["mean"] - out["vs_best_response"]["mean"]
    illegal = [1.0 - m for m in policy.legal_mass.values()]
    out.update(illegal_prob_mean=sum(illegal) / len(illegal) if illegal else 0.0,
               illegal_prob_max=max(illegal, default=0.0))
    return out


def protocol_key(model: str, game: str, sampling: SamplingConfig, fmt: ReplyFormat, source: str = "vllm",
                 weights: str = "") -> str:
    """What a cached table depends on: the model's name (and `weights`, a digest of its adapter file where it is
    known: a run rolled back and trained again writes other weights under the same name), the game and every
    protocol field that shapes a prompt or a reply."""
    blob = json.dumps({"model": model, "game": game, "source": source, "reply": asdict(fmt),
                       "stop": list(sampling.stop),
                       "chat_template": sampling.chat_template, **({"weights": weights} if weights else {})},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def adapter_digest(config: ExactEvalConfig, model: str) -> str:
    """sha256 of the adapter weights a trainer-source name refers to (run/adapters/NAME); '' for base, a served
    name or a bot."""
    if config.source != "trainer" or not config.run or model == "base" or model in BOT_POLICIES:
        return ""
    path = run_adapter(config.run, model) / "adapter_model.safetensors"
    if config.per_role and not path.is_file():  # a per-role policy: every role's weights
        parts = sorted(path.parent.glob("*/adapter_model.safetensors"))
        return hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()[:16] if parts else ""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def trainer_scorer(config: ExactEvalConfig, model: str) -> TrainerScorer:
    """A TrainerScorer for a model name of `config`: 'base' is config.model_path, any other name an adapter of
    config.run (run/adapters/NAME)."""
    from stratagem.models import resolve

    adapter = None
    if model != "base":
        if not config.run:
            raise ValueError(f"--models {model}: with --source trainer, a name other than base is an adapter of "
                             "a run; give --run RUN")
        adapter = run_adapter(config.run, model)
        if not (adapter / "adapter_config.json").is_file():
            raise ValueError(f"--models {model}: no adapter at {adapter}")
    return TrainerScorer.from_pretrained(resolve(config.model_path), str(adapter) if adapter else None,
                                         config.sampling)


async def run_exact_eval(config: ExactEvalConfig, progress: Callable[[str, int], Callable[[], Any]] | None = None,
                         scorer_for: Callable[[str, str], Any] | None = None,
                         tables: dict[str, dict[str, PolicyTable]] | None = None) -> dict[str, Any]:
    """Every (model, game) of `config`: the policy table (a bot's, or scored by `scorer_for(model, game)`, by default
    the source config.source names; read back from `config.out` when a rerun finds it), then exact_metrics.
    Returns {"models": {model: {game: metrics}}}, each with the seconds it took and the scoring requests (server
    requests, or forward passes) it made; `tables`, when given, receives every table ({model: {game: table}})."""
    from stratagem.files import atomic_write

    for g in config.games:
        if g not in EXACT_GAMES + TREE_GAMES:
            raise ValueError(f"exact evaluation covers {', '.join(EXACT_GAMES + TREE_GAMES)}, got {g!r}")
    stop = list(config.sampling.stop)
    result: dict[str, Any] = {"reply": asdict(config.reply), "stop": stop, "source": config.source, "models": {}}
    points_cache: dict[str, dict[str, DecisionPoint]] = {}

    def one_scorer(model: str) -> Any:
        if config.source == "trainer":
            return trainer_scorer(config, model)
        return VLLMScorer(config.base_url, model, config.sampling, config.api_key)

    def new_scorer(model: str, game: str) -> Any:
        if scorer_for is not None:
            return scorer_for(model, game)
        if per_game(model):
            from stratagem.games.registry import make_game, role_model

            return SeatScorer({s: one_scorer(role_model(model, r)) for s, r in enumerate(make_game(game).info.roles)})
        return one_scorer(model)

    def per_game(model: str) -> bool:  # a scorer of one game only: a seat's adapter is its role's
        return scorer_for is not None or (config.per_role and model != "base")

    for model in config.models:
        scorer: Any = None  # one per model, kept over its games (a loaded model, a client)
        # a per-role policy's table is not its shared namesake's
        digest = adapter_digest(config, model) + ("+per-role" if config.per_role and model != "base" else "")
        try:
            for game in config.games:
                t0 = time.perf_counter()
                requests = 0
                path = Path(config.out) / f"policy-{model.replace('/', '_')}-{game}-" \
                    f"{protocol_key(model, game, config.sampling, config.reply, config.source, digest)}.json" \
                    if config.out and model not in BOT_POLICIES else None
                if model in BOT_POLICIES:
                    pol = bot_table(game, model)
                elif path is not None and path.is_file():
                    raw = json.loads(path.read_text())
                    pol = PolicyTable(game, {k: {int(a): p for a, p in v.items()} for k, v in raw["table"].items()},
                                      raw["legal_mass"])
                else:
                    if game not in points_cache:
                        points_cache[game] = decision_points(game, config.reply, stop)
                    points = points_cache[game]
                    if scorer is not None and per_game(model):
                        await scorer.aclose()
                        scorer = None
                    scorer = scorer or new_scorer(model, game)
                    tick = progress(f"{model} {game}", len(points)) if progress else None
                    before = scorer.requests
                    pol = await policy_table(game, points, scorer, config.reply, stop, config.concurrency, tick)
                    requests = scorer.requests - before
                    if path is not None:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write(path, json.dumps({"model": model, "game": game, "table": pol.table,
                                                       "legal_mass": pol.legal_mass}))
                if tables is not None:
                    tables.setdefault(model, {})[game] = pol
                metrics = tree_metrics(game, pol) if game in TREE_GAMES else exact_metrics(game, pol)
                metrics.update(seconds=time.perf_counter() - t0, requests=requests)
                result["models"].setdefault(model, {})[game] = metrics
        finally:
            if scorer is not None:
                await scorer.aclose()
    if config.out:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(config.out) / "summary.json", json.dumps(result, indent=2))
    return result


def results_table(result: dict[str, Any]) -> Any:
    """The poker games' rows, and a second table for the tree games (their numbers are below openings)."""
    from rich.console import Group
    from rich.table import Table

    t = Table(title="exact evaluation (no sampling: the policy's table; returns in chips per game)")
    for col in ("model", "game", "exploitability", "vs cfr first / second", "vs nash first / second",
                "illegal prob mean (max)", "seconds"):
        t.add_column(col)
    tree = Table(title="exact evaluation below fixed openings (OPENINGS: not the whole game; returns per game)")
    for col in ("model", "game", "best-response gap", "vs best response first / second", "vs random first / second",
                "illegal prob mean (max)", "seconds"):
        tree.add_column(col)
    for model, games in result["models"].items():
        for game, m in games.items():
            illegal, secs = f"{m['illegal_prob_mean']:.3f} ({m['illegal_prob_max']:.3f})", f"{m['seconds']:.1f}"
            if "best_response_gap" in m:
                tree.add_row(model, game, f"{m['best_response_gap']:.4f}",
                             f"{m['vs_best_response']['first']:+.4f} / {m['vs_best_response']['second']:+.4f}",
                             f"{m['vs_random']['first']:+.4f} / {m['vs_random']['second']:+.4f}", illegal, secs)
                continue
            t.add_row(model, game, f"{m['exploitability']:.4f}",
                      f"{m['vs_cfr']['first']:+.4f} / {m['vs_cfr']['second']:+.4f}",
                      f"{m['vs_nash']['first']:+.4f} / {m['vs_nash']['second']:+.4f}", illegal, secs)
    return Group(*(x for x in (t, tree) if x.row_count))


def run(config: ExactEvalConfig, progress: Callable[[str, int], Callable[[], Any]] | None = None) -> dict[str, Any]:
    return asyncio.run(run_exact_eval(config, progress))
