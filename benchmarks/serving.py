"""Serving throughput: base model vs a rank-8 LoRA adapter vs the adapter merged into the served weights, and
transformers `generate` on the same prompts, all measured in one run. Prints one JSON object.

Sampling from the current policy is what rollouts do. vLLM's LoRA path costs a lot on a CPU; merging the adapter
into the base weights and reloading them in place (`VLLMServer.load_policy_weights`) samples the same policy at
base-model speed, paying one merge + reload per policy version. The JSON reports both as ratios of base
throughput, plus that reload cost and the log-prob gap that proves the merged weights are the adapter's.
`eval_requests_per_s` is the same comparison through `eval games` (tic-tac-toe against the random bot, the
training reply protocol, 8 games in flight): the adapter asked for under its own name, once as a LoRA adapter and
once merged into the weights as `eval games --adapter-weights merged` serves it; `eval_merged_over_base` is the
issue's target (>= 0.9).

    python benchmarks/serving.py [--max-tokens 64] [--levels 1,16,64] [--repeats 2] [--skip-hf] [--eval-games 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

PROMPTS = [
    "You play tic-tac-toe as X. The board is empty. Explain your opening move.",
    "Kuhn poker: you hold the King and your opponent bet. What do you do and why?",
    "Write two sentences about a detective who finds a clue in a library.",
    "Natalia sold clips to 48 friends in April and half as many in May. How many in total?",
]


async def _throughput(base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> float:
    """Generated tokens per second for `concurrency` simultaneous requests of exactly max_tokens tokens."""
    async with httpx.AsyncClient(timeout=1200) as client:
        async def one(i: int) -> int:
            r = await client.post(base_url + "/completions", json={
                "model": model, "prompt": prompts[i % len(prompts)], "max_tokens": max_tokens,
                "temperature": 1.0, "ignore_eos": True, "seed": i})
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(concurrency))))
        return tokens / (time.perf_counter() - start)


def _eval_rate(base_url: str, model: str, games: int) -> float:
    """Model requests per second of `eval games` on tic-tac-toe against the random bot, both seat orders."""
    from stratagem.integrations.games_eval import GamesEvalConfig, run_games_eval

    cfg = GamesEvalConfig(models=[model], games=["tictactoe"], opponent="random", episodes=games, base_url=base_url)
    start = time.perf_counter()
    res = asyncio.run(run_games_eval(cfg))
    wall = time.perf_counter() - start
    return sum(s["model_turns"] for s in res["models"][model]["tictactoe"].values()) / wall


def _hf_throughput(model_path: str, prompts: list[str], batch: int, max_tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    enc = tok([prompts[i % len(prompts)] for i in range(batch)], return_tensors="pt", padding=True)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=True,
                             temperature=1.0, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return (out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1])) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,16,64", help="concurrency levels")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--skip-hf", action="store_true", help="skip transformers generate")
    ap.add_argument("--eval-games", type=int, default=20, help="games per seat order of the eval-games rates (0: "
                    "skip them)")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs per point (a busy machine "
                    "only ever slows a run down, so the best run is the least disturbed)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    from helpers_lora import make_adapter

    from stratagem.integrations.cli import policy_switch
    from stratagem.integrations.vllm_server import VLLMServer
    from stratagem.models import resolve

    model_path = resolve(args.model)
    result: dict = {"model": model_path.rsplit("/", 1)[-1], "max_tokens": args.max_tokens, "levels": levels,
                    "lora_rank": args.rank}
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        adapter = make_adapter(model_path, Path(tmp) / "bench-lora", seed=0, rank=args.rank)
        with VLLMServer(model=model_path, max_lora_rank=max(16, args.rank), weight_reload=True,
                        model_aliases=["bench-merged"]) as srv:
            result["engine_dtype"] = srv.dtype
            srv.load_adapter("bench-lora", adapter)
            if args.eval_games:
                rate = {"base": _eval_rate(srv.base_url, "base", args.eval_games),
                        "lora": _eval_rate(srv.base_url, "bench-lora", args.eval_games)}
                start = time.perf_counter()
                policy_switch(srv, {"bench-merged": str(adapter)})("bench-merged")
                result["eval_switch_s"] = time.perf_counter() - start
                rate["merged"] = _eval_rate(srv.base_url, "bench-merged", args.eval_games)
                srv.load_base_weights()
                result["eval_requests_per_s"] = rate
                result["eval_lora_over_base"] = rate["lora"] / rate["base"]
                result["eval_merged_over_base"] = rate["merged"] / rate["base"]
            run = lambda model, c: max(asyncio.run(_throughput(srv.base_url, model, PROMPTS, c, args.max_tokens))
                                       for _ in range(args.repeats))
            run("base", 2), run("bench-lora", 2)  # warm-up
            result["base_tok_s"] = {c: run("base", c) for c in levels}
            result["lora_tok_s"] = {c: run("bench-lora", c) for c in levels}
            start = time.perf_counter()
            srv.load_policy_weights(adapter, "bench-merged")  # merges, reloads in place, verifies parity
            result["merged_reload_s"] = time.perf_counter() - start
            gaps = srv.verify_adapter("base", adapter)
            result["merged_logprob_max_abs_diff"] = gaps["max_abs_diff"]
            run("base", 2)
            result["merged_tok_s"] = {c: run("base", c) for c in levels}
        if not args.skip_hf:
            result["hf_generate_tok_s"] = {c: max(_hf_throughput(model_path, PROMPTS, c, args.max_tokens)
                                                  for _ in range(args.repeats)) for c in levels}
    base = result["base_tok_s"]
    result["lora_over_base"] = {c: result["lora_tok_s"][c] / base[c] for c in levels}
    result["merged_over_base"] = {c: result["merged_tok_s"][c] / base[c] for c in levels}
    if "hf_generate_tok_s" in result:
        result["hf_over_base"] = {c: result["hf_generate_tok_s"][c] / base[c] for c in levels}
    result["adapter_policy_over_base"] = min(result["merged_over_base"].values())
    result["target_adapter_policy_over_base"] = 0.9
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
