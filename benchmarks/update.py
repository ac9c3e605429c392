"""One iteration's update on a recorded batch, today's path (every sequence from its first token) against the
shared-prefix path (a micro-batch's common opening run once), on the default model. Prints one JSON object.

    python benchmarks/update.py [--episodes-dir DIR] [--base-url URL]

Two batches, recorded once by LLM self-play in the training protocol and kept in --episodes-dir (default
runs/bench-update; a rerun reuses them): the quickstart's shape (16 tic-tac-toe games) and a mixed one (Kuhn poker,
mini Hanabi and tic-tac-toe, 8 games each). The server (--base-url, else $STRATAGEM_BASE_URL, else a vLLM server
started here) plays only while recording and is gone before anything is timed. Each path is one PPO update (MARS's
two passes before it: the reference and old log-probs) by a fresh trainer with the same seed; `speedup` is the
shared path's trained_tokens_per_s over today's, per batch. `async_speedup` is null: overlapped rollouts
(`loop.async_rollout`) are not built yet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
from pathlib import Path

BATCHES = {"quickstart": [("tictactoe", 16)],
           "mixed": [("kuhn_poker", 8), ("mini_hanabi", 8), ("tictactoe", 8)]}


async def record(base_url: str, model: str, plan: list[tuple[str, int]], seed: int) -> list:
    from stratagem.agents import make_agent
    from stratagem.agents.sampling import SamplingConfig
    from stratagem.games.rollout import collect_episodes

    eps = []
    for k, (game, n) in enumerate(plan):
        llm = make_agent(f"llm:{model}", base_url=base_url, **SamplingConfig().agent_kwargs())
        eps += await collect_episodes(game, [llm, llm], n, 8, seed=seed + 1000 * k)
        await llm.aclose()
    return eps


def token_counts(tr, samples: list) -> dict:
    """`computed_tokens`: what the forward passes run, padding included (each micro-batch's shared opening once,
    then every row padded to the longest); `trie_tokens`: the floor for this batch if every common opening were
    computed once, at any depth (a prefix tree of the sequences up to each one's first trained position)."""
    computed = 0
    for group in tr.mini_batches(len(samples)):
        for mb in tr.micro_batches(samples, group):
            ss = [samples[i] for i in mb]
            share = tr.share_length(ss)
            computed += share + len(ss) * (max(len(s.input_ids) for s in ss) - share)
    nodes: set = set()
    unshared = 0
    for s in samples:
        opening = min(s.positions) - 1
        nodes.update(tuple(s.input_ids[:k]) for k in range(1, opening + 1))
        unshared += len(s.input_ids) - opening
    return {"computed_tokens": computed, "trie_tokens": len(nodes) + unshared}


def measure(model_path: str, episodes: list, shared: bool, seed: int, tokens_only: bool = False) -> dict:
    from stratagem.agents.sampling import SamplingConfig
    from stratagem.training.losses import PPOConfig
    from stratagem.training.samples import build_batch
    from stratagem.training.trainer import LoRATrainer, TrainerConfig

    cfg = TrainerConfig(shared_prefix=shared)
    tr = LoRATrainer(model_path, cfg, seed=seed, temperature=SamplingConfig().temperature)
    batch = build_batch(episodes, lambda i, j: True, pack=cfg.pack, max_seq_len=cfg.max_seq_len)
    rng = random.Random(seed)
    adv = [rng.choice([-1.0, 1.0]) for _ in batch.acts]
    counts = token_counts(tr, batch.samples)
    if tokens_only:
        return counts
    import torch

    with torch.no_grad():
        tr.token_logprobs(batch.samples[:1])  # warm-up: allocations, kernel selection
    st = tr.ppo_step(batch, adv, PPOConfig())
    return {"sequences": len(batch.samples), "input_tokens": batch.n_input_tokens, **counts,
            "trained_tokens": batch.n_trained_tokens, "update_s": round(st["update_s"], 2),
            "ref_s": round(st["ref_s"], 2), "old_s": round(st["old_s"], 2), "policy_s": round(st["policy_s"], 2),
            "trained_tokens_per_s": round(st["tokens_per_s"], 2), "loss": st["loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes-dir", default="runs/bench-update")
    p.add_argument("--base-url", default=os.environ.get("STRATAGEM_BASE_URL"))
    p.add_argument("--model", default="base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens-only", action="store_true", help="Only count the tokens each path computes (no timing).")
    args = p.parse_args()
    from stratagem.games.core import read_jsonl, write_jsonl
    from stratagem.models import fetch

    model_path = str(fetch())
    root = Path(args.episodes_dir)
    root.mkdir(parents=True, exist_ok=True)
    missing = {name: plan for name, plan in BATCHES.items() if not (root / f"{name}.jsonl").is_file()}
    if missing:
        server = contextlib.nullcontext()
        if not args.base_url:
            from stratagem.integrations.vllm_server import VLLMServer

            server = VLLMServer(model=model_path)
        with server as srv:
            url = args.base_url or srv.base_url
            for name, plan in missing.items():
                eps = asyncio.run(record(url, args.model, plan, args.seed))
                write_jsonl(eps, root / f"{name}.jsonl.tmp")
                os.replace(root / f"{name}.jsonl.tmp", root / f"{name}.jsonl")
    out: dict = {"model": model_path.rsplit("/", 1)[-1], "batches": {}, "async_speedup": None}
    for name in BATCHES:
        eps = list(read_jsonl(root / f"{name}.jsonl"))
        flat = measure(model_path, eps, False, args.seed, args.tokens_only)
        shared = measure(model_path, eps, True, args.seed, args.tokens_only)
        out["batches"][name] = {"flat": flat, "shared_prefix": shared}
        if not args.tokens_only:
            out["batches"][name]["speedup"] = round(shared["trained_tokens_per_s"] / flat["trained_tokens_per_s"], 3)
    if not args.tokens_only:
        out["speedup"] = out["batches"]["quickstart"]["speedup"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
