"""Rollout throughput: LLM self-play on tic-tac-toe through the LangGraph game graphs, at concurrency 1 and high,
against raw vLLM throughput on the very same prompts in the same run; and the graph's own overhead per turn with
bots only. Prints one JSON object.

    python benchmarks/rollout.py [--base-url URL] [--episodes-high 64] [--concurrency-high 64] [--max-tokens 48]

The endpoint is --base-url, else $STRATAGEM_BASE_URL, else a vLLM server with the default model is started.
`ratio` = self-play generated tokens/s / raw tokens/s (target >= 0.9): what the games, graphs and agents cost.
The model replies in the training protocol (forced `<answer>{legal_prefix}` prefix, stop strings, MARS sampling:
`SamplingConfig`, `ReplyFormat`), as training rollouts do; the raw replay sends the same prompts and prefixes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time

from rich.console import Console

from stratagem.agents import make_agent
from stratagem.agents.sampling import SamplingConfig
from stratagem.concurrency import map_concurrent
from stratagem.games.core import Observation
from stratagem.games.graph import play
from stratagem.games.registry import make_game
from stratagem.games.rollout import collect_episodes


def _llm(base_url: str, model: str, max_tokens: int, salt: str):
    """The policy's agent in the training protocol; a cache salt per phase: the raw replay must not reuse the prefix
    cache the self-play phase filled (vLLM)."""
    kw = SamplingConfig(max_tokens=max_tokens).agent_kwargs()
    kw["extra_body"] = {**kw["extra_body"], "cache_salt": salt}
    return make_agent(f"llm:{model}", base_url=base_url, **kw)


class Recording:
    """Passes every act to `agent` and keeps the (messages, forced prefix) it was asked with."""

    def __init__(self, agent):
        self.agent, self.name, self.asked = agent, agent.name, []

    async def act(self, obs: Observation):
        self.asked.append((obs.messages, obs.response_prefix))
        return await self.agent.act(obs)

    async def aclose(self) -> None:
        await self.agent.aclose()


async def self_play(base_url: str, model: str, n: int, concurrency: int, max_tokens: int, seed: int) -> dict:
    llm = Recording(_llm(base_url, model, max_tokens, f"self-play-{concurrency}-{time.time()}"))
    t0 = time.perf_counter()
    eps = await collect_episodes("tictactoe", [llm, llm], n, concurrency, seed=seed)
    wall = time.perf_counter() - t0
    await llm.aclose()
    turns = [t for e in eps for t in e.turns]
    tokens = sum(len(t.completion_token_ids or []) for t in turns)
    return {"episodes": n, "concurrency": concurrency, "turns": len(turns), "generated_tokens": tokens,
            "illegal_acts": sum(t.illegal_reason is not None for t in turns),
            "wall_s": round(wall, 3), "episodes_per_s": round(n / wall, 3), "tokens_per_s": round(tokens / wall, 2),
            "_asked": llm.asked}


async def raw(base_url: str, model: str, prompts: list, concurrency: int, max_tokens: int) -> dict:
    """The same chat requests (token ids and log-probs included) sent straight to the endpoint, `concurrency` at a
    time, with no game, graph or agent around them."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
    shaper = _llm(base_url, model, max_tokens, f"raw-{concurrency}-{time.time()}")

    async def one(asked) -> int:
        messages, prefix = asked
        kw = shaper.request(Observation(game="tictactoe", seat=0, role="X", phase="play", messages=messages,
                                        legal_actions=[], response_prefix=prefix))
        r = await client.chat.completions.create(**kw)
        return r.usage.completion_tokens

    t0 = time.perf_counter()
    tokens = sum(await map_concurrent(one, prompts, concurrency))
    wall = time.perf_counter() - t0
    await client.close()
    await shaper.aclose()
    return {"requests": len(prompts), "generated_tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 2)}


async def bot_overhead(n: int) -> dict:
    """Per-turn cost of playing through the graph vs calling the game directly, random bots, tic-tac-toe."""
    agents = [make_agent("random", seed=0), make_agent("random", seed=1)]
    t0 = time.perf_counter()
    graph_turns = 0
    for i in range(n):
        graph_turns += len((await play(make_game("tictactoe"), agents, seed=i)).turns)
    graph_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    direct_turns = 0
    for i in range(n):
        game = make_game("tictactoe")
        game.reset(i)
        while not game.is_over():
            seat = game.current_seat()
            game.step(seat, await agents[seat].act(game.observe(seat)))
            direct_turns += 1
    direct_s = time.perf_counter() - t0
    per_graph, per_direct = graph_s / graph_turns, direct_s / direct_turns
    return {"episodes": n, "graph_ms_per_turn": round(1000 * per_graph, 3),
            "direct_ms_per_turn": round(1000 * per_direct, 3),
            "graph_overhead_ms_per_turn": round(1000 * (per_graph - per_direct), 3),
            "graph_vs_direct": round(per_graph / per_direct, 2)}


async def main_async(args, base_url: str, console: Console) -> dict:
    out: dict = {"game": "tictactoe", "model": args.model, "max_tokens": args.max_tokens}
    console.log("bots only: graph overhead")
    out["bots"] = await bot_overhead(args.bot_episodes)
    # unmeasured warm-up: the engine's first requests would land on whichever phase runs first
    await self_play(base_url, args.model, 4, 4, args.max_tokens, args.seed + 10_000)
    for _phase, n, c in (("low", args.episodes_low, 1), ("high", args.episodes_high, args.concurrency_high)):
        console.log(f"self-play at concurrency {c} ({n} episodes)")
        sp = await self_play(base_url, args.model, n, c, args.max_tokens, args.seed)
        prompts = sp.pop("_asked")
        console.log(f"raw engine on the same {len(prompts)} prompts at concurrency {c}")
        rw = await raw(base_url, args.model, prompts, c, args.max_tokens)
        out[f"concurrency_{c}"] = {"self_play": sp, "raw": rw,
                                   "ratio": round(sp["tokens_per_s"] / rw["tokens_per_s"], 3)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default=os.environ.get("STRATAGEM_BASE_URL"))
    p.add_argument("--model", default="base")
    p.add_argument("--episodes-low", type=int, default=8)
    p.add_argument("--episodes-high", type=int, default=64)
    p.add_argument("--concurrency-high", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=SamplingConfig().max_tokens)
    p.add_argument("--bot-episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    console = Console(stderr=True)
    server = contextlib.nullcontext()
    if not args.base_url:
        from stratagem.integrations.vllm_server import VLLMServer

        server = VLLMServer()
    with server as srv:
        url = args.base_url or srv.base_url
        print(json.dumps(asyncio.run(main_async(args, url, console))))


if __name__ == "__main__":
    main()
