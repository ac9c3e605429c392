"""MARS's ablation table, reproduced at laptop scale: train from one seed in self-play (every seat learns) on the three
training games with each variant, then evaluate the base model and every variant on all six games in the training
protocol against the paper's opponents (MCTS on tic-tac-toe and Connect Four, CFR on the poker games, the model with
itself on Hanabi), reporting normalized returns (mean of the model-first and model-second games; the team score in
Hanabi) with 95% intervals.

Variants: mars; mars without turn-level advantages (the trajectory return on every turn); mars without agent-specific
normalization (one baseline per game); grpo; rae; mars against a fixed opponent (`--fixed-opponent`, default random:
only seat 0 learns). One vLLM server serves every run (merged policy weights, base-model speed), reset to the base
weights between variants. Prints one JSON object, then the markdown table (to stderr with --table-stderr).

    python benchmarks/ablation.py                        # the documented CPU run (about an hour on 2 cores)
    python benchmarks/ablation.py --iterations 1 --episodes-per-iteration 6 --eval-episodes 2 --variants mars,grpo
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

TRAIN_GAMES = ["tictactoe", "kuhn_poker", "mini_hanabi"]
EVAL_GAMES = ["tictactoe", "kuhn_poker", "mini_hanabi", "connect_four", "leduc_poker", "simple_hanabi"]
VARIANTS = {
    "mars": {},
    "mars_no_turn_level": {"advantage": {"turn_level": False}},
    "mars_no_agent_norm": {"advantage": {"agent_specific": False}},
    "grpo": {"loop": {"algo": "grpo"}},
    "rae": {"loop": {"algo": "rae"}},
    "mars_fixed_opponent": {"fixed": True},
}
LABELS = {"base": "base model", "mars": "MARS", "mars_no_turn_level": "w/o turn-level advantage",
          "mars_no_agent_norm": "w/o agent-specific normalization", "grpo": "GRPO (trajectory-level)",
          "rae": "RAE (SPIRAL)", "mars_fixed_opponent": "fixed opponent"}


def run_config(name: str, a: argparse.Namespace, fixed_opponent: str):
    from stratagem.training.loop import RunConfig

    v = VARIANTS[name]
    loop = {"algo": "mars", "games": TRAIN_GAMES, "iterations": a.iterations,
            "episodes_per_iteration": a.episodes_per_iteration, "seed": a.seed, "concurrency": a.concurrency,
            "model": a.model,
            **v.get("loop", {})}
    if v.get("fixed"):
        loop["opponents"] = [fixed_opponent]
    d = {"loop": loop, "advantage": v.get("advantage", {}), "trainer": {**({"lr": a.lr} if a.lr else {})}}
    return RunConfig.from_dict(d)


def game_score(per_seat: dict) -> dict:
    """The model's score in one game: its seat orders pooled (normalized return: the mean of the model-first and
    model-second games, or the team's in Hanabi, with the interval of that mean; illegal rate over all its turns)."""
    from stratagem.games.metrics import pooled_seats

    p = pooled_seats(per_seat)
    return {"normalized_return": round(p["normalized_return"], 4), "illegal_rate": round(p["illegal_rate"], 4),
            **({"ci95": [round(x, 4) for x in p["normalized_return_ci95"]]} if p["normalized_return_ci95"] else {}),
            "seats": per_seat}


def evaluate(server, a: argparse.Namespace, label: str) -> dict:
    from stratagem.integrations.games_eval import GamesEvalConfig, run_games_eval

    ec = GamesEvalConfig(models=["base"], games=EVAL_GAMES, opponent="auto", episodes=a.eval_episodes,
                         mcts_simulations=a.mcts_simulations, base_url=server.base_url, concurrency=a.concurrency,
                         seed=20_000_000 + a.seed)
    t0 = time.perf_counter()
    res = asyncio.run(run_games_eval(ec))["models"]["base"]
    games = {g: game_score(seats) for g, seats in res.items()}
    print(f"[ablation] evaluated {label} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return {"games": games, "eval_s": round(time.perf_counter() - t0, 1)}


def markdown(result: dict) -> str:
    head = "| variant | " + " | ".join(EVAL_GAMES) + " | mean |"
    lines = [head, "|" + "---|" * (len(EVAL_GAMES) + 2)]
    for name, r in result["models"].items():
        cells = []
        for g in EVAL_GAMES:
            s = r["eval"]["games"][g]
            ci = s.get("ci95")
            cells.append(f"{s['normalized_return']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        mean = sum(r["eval"]["games"][g]["normalized_return"] for g in EVAL_GAMES) / len(EVAL_GAMES)
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + f" | {mean:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--episodes-per-iteration", type=int, default=24, help="Split evenly over the three games.")
    ap.add_argument("--eval-episodes", type=int, default=8, help="Games per model, game and seat order.")
    ap.add_argument("--mcts-simulations", type=int, default=None, help="MCTS opponent (default: the eval's, 100).")
    ap.add_argument("--fixed-opponent", default="random", help="The fixed opponent's agent spec.")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--lr", type=float, default=None, help="Trainer learning rate (default: the trainer's, tuned "
                    "for the small default model; MARS trains Qwen3-4B at 1e-6 with full fine-tuning).")
    ap.add_argument("--model", default="default", help="Base model: registered name, local directory or hub id.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="Where the runs go (default: a folder in the user cache).")
    ap.add_argument("--table-stderr", action="store_true", help="Print the markdown table to stderr.")
    a = ap.parse_args()
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    configs = {n: run_config(n, a, a.fixed_opponent) for n in names}  # validated before anything starts

    from stratagem.integrations.vllm_server import VLLMServer
    from stratagem.models import resolve
    from stratagem.files import atomic_write
    from stratagem.settings import cache_dir
    from stratagem.training.loop import run_training

    out = Path(a.out) if a.out else cache_dir() / "benchmarks" / f"ablation-{int(time.time())}"
    model_path = resolve(a.model)
    t_all = time.perf_counter()
    result: dict = {"benchmark": "ablation", "model": a.model, "train_games": TRAIN_GAMES, "eval_games": EVAL_GAMES,
                    "iterations": a.iterations, "episodes_per_iteration": a.episodes_per_iteration,
                    "eval_episodes_per_seat_order": a.eval_episodes, "seed": a.seed,
                    "fixed_opponent": a.fixed_opponent, "out": str(out), "models": {}}
    with VLLMServer(model=model_path, weight_reload=True, max_lora_rank=16) as server:
        result["models"]["base"] = {"eval": evaluate(server, a, "base")}
        atomic_write(out / "ablation.partial.json", json.dumps(result, indent=1))
        for name in names:
            t0 = time.perf_counter()
            server.load_base_weights()
            store = run_training(configs[name], out / name, server=server, progress=False)
            train_s = time.perf_counter() - t0
            last = store.metrics()[-1]
            k = store.completed_iterations()
            server.load_policy_weights(store.adapter_dir(k), f"{name}-iter-{k}")
            result["models"][name] = {
                "train_s": round(train_s, 1),
                "train_last_iteration": {key: v for key, v in last.items()
                                         if key.startswith(("illegal_rate/", "win_rate/", "return/", "kl",
                                                            "clip_frac"))},
                "eval": evaluate(server, a, name)}
            print(f"[ablation] {name}: trained in {train_s:.0f}s", file=sys.stderr)
            atomic_write(out / "ablation.partial.json", json.dumps(result, indent=1))  # an interrupted run keeps these
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    result["table_markdown"] = markdown(result)
    print(json.dumps(result, indent=1))
    print(result["table_markdown"], file=sys.stderr if a.table_stderr else sys.stdout)


if __name__ == "__main__":
    main()
