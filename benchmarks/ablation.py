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

`--exact` scores each policy without sampling noise instead: the exact exploitability and the exact expected
return against CFR (both seats' mean) on Kuhn poker and Leduc hold'em (`stratagem eval exact`, scored by the
trainer's model here), for every training seed of `--seeds`, so the only noise left is training's; the table gives
each variant's mean over seeds with the seed range, and `exceeds_seed_spread` says, per variant and metric, whether
the whole range lies on one side of the base model's value.

    python benchmarks/ablation.py --exact --seeds 0,1,2
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


EXACT_GAMES = ["kuhn_poker", "leduc_poker"]
EXACT_METRICS = {"exploitability": lambda m: m["exploitability"], "vs_cfr": lambda m: m["vs_cfr"]["mean"]}


def evaluate_exact(model_path: str, run_dir: Path | None, name: str, cfg, out: Path) -> dict:
    """Exact numbers of policy `name` (base, or the run's adapter iter-K) on the poker games, in the run's reply
    protocol; the tables cached in `out` (one folder per run: the cache is keyed by the policy's name)."""
    from stratagem.integrations.exact_eval import ExactEvalConfig
    from stratagem.integrations.exact_eval import run as run_exact

    ec = ExactEvalConfig(models=[name], games=EXACT_GAMES, source="trainer", model_path=model_path,
                         run=str(run_dir) if run_dir else None, sampling=cfg.sampling, reply=cfg.reply,
                         out=str(out))
    t0 = time.perf_counter()
    per_game = run_exact(ec)["models"][name]
    return {"games": {g: {k: round(f(m), 4) for k, f in EXACT_METRICS.items()} | {"illegal_prob_mean": round(
        m["illegal_prob_mean"], 4)} for g, m in per_game.items()}, "eval_s": round(time.perf_counter() - t0, 1)}


def exact_summary(result: dict) -> dict:
    """Per variant and (game, metric): the mean over seeds, the range, and whether the range lies wholly on one
    side of the base model's value (a difference the seed spread does not cover)."""
    base = result["models"]["base"]["exact"]["games"]
    out = {}
    for name, r in result["models"].items():
        if name == "base":
            continue
        cells = {}
        for g in EXACT_GAMES:
            for k in EXACT_METRICS:
                vals = [s["exact"]["games"][g][k] for s in r["seeds"].values()]
                lo, hi = min(vals), max(vals)
                cells[f"{g}/{k}"] = {"mean": round(sum(vals) / len(vals), 4), "range": [lo, hi],
                                     "base": base[g][k], "exceeds_seed_spread": lo > base[g][k] or hi < base[g][k]}
        out[name] = cells
    return out


def exact_markdown(result: dict) -> str:
    cols = [f"{g}/{k}" for g in EXACT_GAMES for k in EXACT_METRICS]
    lines = ["| variant | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    base = result["models"]["base"]["exact"]["games"]
    lines.append("| base model | " + " | ".join(f"{base[g][k]:.4f}" for g in EXACT_GAMES for k in EXACT_METRICS)
                 + " |")
    for name, cells in result["exact_summary"].items():
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(
            f"{cells[c]['mean']:.4f} [{cells[c]['range'][0]:.4f}, {cells[c]['range'][1]:.4f}]"
            + (" *" if cells[c]["exceeds_seed_spread"] else "") for c in cols) + " |")
    lines.append(f"\nMean over seeds {result['seeds']} [seed range]; * the whole range on one side of the base "
                 "model. Exploitability: lower is better; vs_cfr: exact expected return against CFR, seats averaged.")
    return "\n".join(lines)


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
    ap.add_argument("--exact", action="store_true", help="Score by exact exploitability and return vs CFR on "
                    "Kuhn and Leduc instead of sampled games, over --seeds.")
    ap.add_argument("--exact-games", default=",".join(EXACT_GAMES), help="With --exact: which poker games "
                    "(Leduc's 936 information states take minutes per policy on a CPU).")
    ap.add_argument("--seeds", default=None, help="Comma-separated training seeds with --exact (default 0,1,2).")
    ap.add_argument("--out", default=None, help="Where the runs go (default: a folder in the user cache).")
    ap.add_argument("--table-stderr", action="store_true", help="Print the markdown table to stderr.")
    ap.add_argument("--resume", default=None, help="With --exact: a partial result (OUT/ablation.partial.json of a "
                    "run that was cut) whose policies are kept, not trained and scored again; its settings must be "
                    "this run's.")
    a = ap.parse_args()
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    configs = {n: run_config(n, a, a.fixed_opponent) for n in names}  # validated before anything starts

    from stratagem.files import atomic_write
    from stratagem.integrations.vllm_server import VLLMServer
    from stratagem.models import resolve
    from stratagem.settings import cache_dir
    from stratagem.training.loop import run_training

    out = Path(a.out) if a.out else cache_dir() / "benchmarks" / f"ablation-{int(time.time())}"
    model_path = resolve(a.model)
    t_all = time.perf_counter()
    result: dict = {"benchmark": "ablation", "model": a.model, "train_games": TRAIN_GAMES, "eval_games": EVAL_GAMES,
                    "iterations": a.iterations, "episodes_per_iteration": a.episodes_per_iteration,
                    "eval_episodes_per_seat_order": a.eval_episodes, "seed": a.seed,
                    "fixed_opponent": a.fixed_opponent, "out": str(out), "models": {}}
    if a.exact:
        EXACT_GAMES[:] = [g.strip() for g in a.exact_games.split(",") if g.strip()]
        seeds = [int(x) for x in (a.seeds or "0,1,2").split(",")]
        result.update({"exact_games": EXACT_GAMES, "seeds": seeds})
        result.pop("eval_games"), result.pop("eval_episodes_per_seat_order"), result.pop("seed")
        if a.resume:
            done = json.loads(Path(a.resume).read_text())
            differ = [k for k in ("model", "iterations", "episodes_per_iteration", "exact_games", "fixed_opponent")
                      if done.get(k) != result.get(k)]
            if differ:
                ap.error(f"--resume {a.resume}: its {', '.join(differ)} differ from this run's")
            result["models"] = done["models"]
            result["resumed_from"] = a.resume
        with VLLMServer(model=model_path, weight_reload=True, max_lora_rank=16) as server:
            base_cfg = configs[names[0]]
            if "base" not in result["models"]:
                result["models"]["base"] = {"exact": evaluate_exact(model_path, None, "base", base_cfg,
                                                                           out / "exact-base")}
                atomic_write(out / "ablation.partial.json", json.dumps(result, indent=1))
            for name in names:
                result["models"].setdefault(name, {"seeds": {}})
                for seed in seeds:
                    if str(seed) in result["models"][name]["seeds"] or seed in result["models"][name]["seeds"]:
                        continue  # kept from --resume
                    a.seed = seed
                    cfg = run_config(name, a, a.fixed_opponent)
                    t0 = time.perf_counter()
                    server.load_base_weights()
                    run_dir = out / f"{name}-seed{seed}"
                    # a run the cut left behind continues from its last commit (its train_s then counts the rest)
                    cut = (run_dir / "config.yaml").exists()
                    store = run_training(cfg, run_dir, resume=cut, server=server, progress=False)
                    train_s = time.perf_counter() - t0
                    k = store.completed_iterations()
                    result["models"][name]["seeds"][seed] = {
                        "train_s": round(train_s, 1), **({"continued_cut_run": True} if cut else {}),
                        "exact": evaluate_exact(model_path, store.root, f"iter-{k}", cfg, store.root / "exact")}
                    print(f"[ablation] {name} seed {seed}: trained in {train_s:.0f}s", file=sys.stderr)
                    atomic_write(out / "ablation.partial.json", json.dumps(result, indent=1))
        result["wall_s"] = round(time.perf_counter() - t_all, 1)
        result["exact_summary"] = exact_summary(result)
        result["table_markdown"] = exact_markdown(result)
        print(json.dumps(result, indent=1))
        print(result["table_markdown"], file=sys.stderr if a.table_stderr else sys.stdout)
        return
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
