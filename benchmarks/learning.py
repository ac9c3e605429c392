"""Does training help? Tic-tac-toe against the `random` bot on the default model: illegal-move rate and win rate of
the base model and of the adapter after a training run of a stated size (mars, against random), each with a 95%
Wilson interval, plus wall times. Uses the server at --base-url (or STRATAGEM_BASE_URL), else starts one.
Prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path


def wilson(k: int, n: int) -> list[float]:
    from stratagem.games.metrics import wilson_interval

    return [round(x, 4) for x in wilson_interval(k, n)]


def evaluate(base_url: str, model: str, n: int, cfg, seed: int) -> dict:
    from stratagem.games.metrics import illegal_counts, seat_won
    from stratagem.training.loop import default_rollout

    t0 = time.perf_counter()
    episodes = asyncio.run(default_rollout(cfg, base_url)("tictactoe", model, n, seed, lambda ep: None))
    illegal, turns = illegal_counts(episodes, seat=0)  # the model's seat; the other is the random bot
    wins = sum(seat_won(e, 0) for e in episodes)
    return {"model": model, "episodes": n, "win_rate": round(wins / n, 4), "win_rate_ci95": wilson(wins, n),
            "illegal_move_rate": round(illegal / max(turns, 1), 4),
            "illegal_move_rate_ci95": wilson(illegal, turns), "model_turns": turns,
            "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base-url", default=os.environ.get("STRATAGEM_BASE_URL"))
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--episodes-per-iteration", type=int, default=16)
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--algo", default="mars")
    ap.add_argument("--lr", type=float, default=None, help="Learning rate (default: the trainer's).")
    ap.add_argument("--dtype", default="auto", help="Trainer dtype: auto, float32 or bfloat16.")
    ap.add_argument("--seed", type=int, default=0, help="Run seed (trainer init, sampling, opponents).")
    ap.add_argument("--out", default=None, help="Run directory (default: a temporary one).")
    a = ap.parse_args()

    from stratagem.integrations.vllm_server import VLLMServer
    from stratagem.models import resolve
    from stratagem.settings import cache_dir
    from stratagem.training.loop import RunConfig, run_training

    model_path = resolve("default")
    cfg = RunConfig.from_dict({"loop": {"algo": a.algo, "games": ["tictactoe"], "iterations": a.iterations,
                                        "episodes_per_iteration": a.episodes_per_iteration, "opponents": ["random"],
                                        "seed": a.seed},
                                "trainer": {"dtype": a.dtype, **({"lr": a.lr} if a.lr else {})}})
    server = VLLMServer.attach(a.base_url, model_path=model_path) if a.base_url else \
        VLLMServer(model=model_path, max_lora_rank=16, weight_reload=True).start()
    try:
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            out = Path(a.out or Path(tmp) / "run")
            before = evaluate(server.base_url, "base", a.eval_episodes, cfg, seed=10_000_000)
            t0 = time.perf_counter()
            store = run_training(cfg, out, server=server, progress=False)
            train_s = time.perf_counter() - t0
            # a server this run started samples the policy from merged weights (served as `base`), else by name
            final = f"iter-{a.iterations}"
            served = "base" if server.policy_version == final else final
            after = evaluate(server.base_url, served, a.eval_episodes, cfg, seed=10_000_000)
            after["model"] = final
            curve = store.metrics()  # read before the temporary run directory goes
    finally:
        server.stop()
    print(json.dumps({"game": "tictactoe", "opponent": "random", "algo": a.algo, "lr": cfg.trainer.lr,
                      "dtype": a.dtype, "seed": a.seed, "iterations": a.iterations,
                      "episodes_per_iteration": a.episodes_per_iteration, "train_wall_s": round(train_s, 1),
                      "trained_episodes": a.iterations * a.episodes_per_iteration, "base": before, "trained": after,
                      "per_iteration": [{k: m[k] for k in m if k.startswith(("illegal_rate/", "win_rate/", "return/"))
                                         or k in ("iteration", "rollout_s", "update_s", "install_s", "kl")}
                                        for m in curve]}))


if __name__ == "__main__":
    main()
