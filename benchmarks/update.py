"""One iteration's update on a recorded batch, today's path (every sequence from its first token, padded) against
the shared-prefix layouts (`tree`, the default: every common prefix of a micro-batch once, as a token tree;
`opening`: the micro-batch's common opening once, through the cache), on the default model. Prints one JSON object.

    python benchmarks/update.py [--episodes-dir DIR] [--base-url URL] [--layouts flat,tree] [--async-only]
        [--reference-only]

Two batches, recorded once by LLM self-play in the training protocol and kept in --episodes-dir (default
runs/bench-update; a rerun reuses them): the quickstart's shape (16 tic-tac-toe games) and a mixed one (Kuhn poker,
mini Hanabi and tic-tac-toe, 8 games each). The server (--base-url, else $STRATAGEM_BASE_URL, else a vLLM server
started here) plays only while recording and is gone before anything is timed. Each path is one PPO update (MARS's
two passes before it: the reference and old log-probs) by a fresh trainer with the same seed; `speedup` is the
tree layout's trained_tokens_per_s over today's on the quickstart's batch (`speedup_LAYOUT` per batch). `async_speedup` (`measure_async`; alone with --async-only): a short tic-tac-toe training run timed with rollout and
update alternating and then overlapped (`loop.async_rollout`), the vLLM server (started here, whatever --base-url
says) pinned to core 0 and the trainer to core 1; the alternating run's wall time over the overlapped one's.
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
    """`computed_tokens`: what one pass's forwards run, padding included (the tree layout: each micro-batch's tree
    of tokens; the opening layout: each micro-batch's shared opening once, then every row padded to the longest);
    `trie_tokens`: the floor, the whole batch's sequences as one tree of tokens (every common prefix once)."""
    from stratagem.token_tree import token_tree

    computed = 0
    for group in tr.mini_batches(len(samples)):
        for mb in tr.micro_batches(samples, group):
            ss = [samples[i] for i in mb]
            if tr.tree and len(ss) > 1:
                computed += len(token_tree([s.input_ids for s in ss])[0])
                continue
            share = tr.share_length(ss)
            computed += share + len(ss) * (max(len(s.input_ids) for s in ss) - share)
    return {"computed_tokens": computed, "trie_tokens": len(token_tree([s.input_ids for s in samples])[0])}


LAYOUTS = {"flat": {"shared_prefix": False}, "opening": {"shared_prefix": True, "prefix_tree": False},
           "tree": {"shared_prefix": True, "prefix_tree": True}}


def measure(model_path: str, episodes: list, layout: str, seed: int, tokens_only: bool = False,
            ppo: dict | None = None, trainer: dict | None = None) -> dict:
    from stratagem.agents.sampling import SamplingConfig
    from stratagem.training.losses import PPOConfig
    from stratagem.training.samples import build_batch
    from stratagem.training.trainer import LoRATrainer, TrainerConfig

    cfg = TrainerConfig(**LAYOUTS[layout], **(trainer or {}))
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
    st = tr.ppo_step(batch, adv, PPOConfig(**(ppo or {})))
    return {"sequences": len(batch.samples), "input_tokens": batch.n_input_tokens, **counts,
            "trained_tokens": batch.n_trained_tokens, "update_s": round(st["update_s"], 2),
            "ref_s": round(st["ref_s"], 2), "old_s": round(st["old_s"], 2), "policy_s": round(st["policy_s"], 2),
            "trained_tokens_per_s": round(st["tokens_per_s"], 2), "loss": st["loss"]}


def measure_async(model_path: str, seed: int, workdir: Path, iterations: int = 3, games: int = 8,
                  server_cpu: int = 0, trainer_cpu: int = 1) -> dict:
    """One short training run (tic-tac-toe, `iterations` iterations of `games` games, the same seed) twice: rollout
    and update alternating (loop.async_rollout false), then overlapped (true). One vLLM server started here serves
    both, pinned to core `server_cpu` (server.cpus: taskset) and reset to the base weights before each run; this
    process trains on core `trainer_cpu` alone (sched_setaffinity, one torch thread, for the rest of the process),
    so each side has a core of its own. Returns both runs' wall times (and their summed rollout / update / wait
    times from the metrics) and `async_speedup`, the alternating wall time over the overlapped one."""
    import shutil
    import time

    import torch

    from stratagem.integrations.vllm_server import VLLMServer
    from stratagem.training.loop import RunConfig, run_training

    if not {server_cpu, trainer_cpu} <= os.sched_getaffinity(0) or server_cpu == trainer_cpu:
        raise SystemExit(f"measure_async: needs two distinct usable cores {server_cpu} and {trainer_cpu}; this "
                         f"process may use {sorted(os.sched_getaffinity(0))}")
    os.sched_setaffinity(0, {trainer_cpu})
    torch.set_num_threads(1)
    out: dict = {"game": "tictactoe", "iterations": iterations, "episodes_per_iteration": games,
                 "server_cpus": str(server_cpu), "trainer_cpus": str(trainer_cpu)}
    with VLLMServer(model=model_path, cpus=str(server_cpu), weight_reload=True) as srv:
        for name, overlapped in (("alternating", False), ("overlapped", True)):
            cfg = RunConfig.from_dict({"loop": {"games": ["tictactoe"], "iterations": iterations,
                                                "episodes_per_iteration": games, "seed": seed, "model": model_path,
                                                "async_rollout": overlapped},
                                       "server": {"cpus": str(server_cpu)}})
            run = workdir / f"async-{name}"
            shutil.rmtree(run, ignore_errors=True)
            if srv.policy_version is not None:  # the last run's merged policy: back to the base weights
                srv.load_base_weights()
            t0 = time.perf_counter()
            store = run_training(cfg, run, server=srv, progress=False)
            wall = time.perf_counter() - t0
            sums = {key: round(sum(float(m.get(key, 0.0)) for m in store.metrics()), 2)
                    for key in ("rollout_s", "update_s", "install_s", "rollout_wait_s", "overlap_s")}
            out[name] = {"wall_s": round(wall, 2), **sums}
    out["async_speedup"] = round(out["alternating"]["wall_s"] / out["overlapped"]["wall_s"], 3)
    return out


def measure_reference(model_path: str, episodes: list, seed: int, server_cpu: int = 0, trainer_cpu: int = 1) -> dict:
    """One update (tree layout) with the KL's reference log-probs from the trainer's own no-grad pass, then from a
    vLLM server of the base model (ppo.reference endpoint), the server pinned to core `server_cpu` and this process
    to core `trainer_cpu` (one torch thread): the reference then costs the trainer only the wait for the server.
    Both untempered (trainer.temper_logprobs off: vLLM's prompt log-probs are). Returns both updates' timings and
    `reference_speedup`, the trainer-reference update's wall time over the endpoint one's."""
    import torch

    from stratagem.integrations.vllm_server import VLLMServer

    os.sched_setaffinity(0, {trainer_cpu})
    torch.set_num_threads(1)
    out: dict = {"server_cpus": str(server_cpu), "trainer_cpus": str(trainer_cpu)}
    with VLLMServer(model=model_path, cpus=str(server_cpu)) as srv:
        for name, ppo in (("trainer", {}), ("endpoint", {"reference": "endpoint", "reference_url": srv.base_url})):
            out[name] = measure(model_path, episodes, "tree", seed, ppo=ppo, trainer={"temper_logprobs": False})
    out["reference_speedup"] = round(out["trainer"]["update_s"] / out["endpoint"]["update_s"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes-dir", default="runs/bench-update")
    p.add_argument("--base-url", default=os.environ.get("STRATAGEM_BASE_URL"))
    p.add_argument("--model", default="base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens-only", action="store_true", help="Only count the tokens each path computes (no timing).")
    p.add_argument("--async-only", action="store_true", help="Only time the short training run alternating vs "
                   "overlapped (measure_async: server on core 0, trainer on core 1).")
    p.add_argument("--reference-only", action="store_true", help="Only time the update on the quickstart's "
                   "recorded batch with the reference log-probs from the trainer vs from a vLLM server "
                   "(measure_reference: server on core 0, trainer on core 1).")
    p.add_argument("--layouts", type=lambda v: v.split(","), default=list(LAYOUTS),
                   help="Comma-separated update layouts to time: flat (today's path: every sequence from its first "
                        "token), opening (the common opening through the cache), tree (every common prefix once).")
    args = p.parse_args()
    from stratagem.games.core import read_jsonl, write_jsonl
    from stratagem.models import fetch

    model_path = str(fetch())
    root = Path(args.episodes_dir)
    root.mkdir(parents=True, exist_ok=True)
    if args.reference_only:
        eps = list(read_jsonl(root / "quickstart.jsonl"))
        print(json.dumps({"model": model_path.rsplit("/", 1)[-1],
                          "reference": measure_reference(model_path, eps, args.seed)}))
        return
    if args.async_only:
        timed = measure_async(model_path, args.seed, root)
        print(json.dumps({"model": model_path.rsplit("/", 1)[-1], "async": timed,
                          "async_speedup": timed["async_speedup"]}))
        return
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
        res = out["batches"][name] = {lay: measure(model_path, eps, lay, args.seed, args.tokens_only)
                                      for lay in args.layouts}
        if not args.tokens_only and "flat" in res:
            for lay in res.copy():
                if lay != "flat":  # each sharing layout's trained tokens per second over today's path's
                    res[f"speedup_{lay}"] = round(res[lay]["trained_tokens_per_s"] / res["flat"]["trained_tokens_per_s"], 3)
            res["speedup"] = res.get("speedup_tree")
    if not args.tokens_only:
        out["speedup"] = out["batches"]["quickstart"].get("speedup")
    if not args.tokens_only:  # last: it pins this process to one core
        out["async"] = measure_async(model_path, args.seed, root)
        out["async_speedup"] = out["async"]["async_speedup"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
