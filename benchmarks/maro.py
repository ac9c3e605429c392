"""MARO on the murder mystery, end to end with the default model: train a LoRA adapter with the MARO loss on the
shipped scripts (every character played by the current policy, the judge the base model), then compare the base
model and the trained adapter on a MIRAGE script it never trained on. Prints one JSON object.

Training: `stratagem.training.loop.run_training` with `loop.algo: maro`, `loop.games: [mystery]`; each iteration's
episodes are split evenly over the training scripts (default: every shipped script). The policy is served as a LoRA
adapter (`iter-k`): the mystery's judge is the base model, so the weights cannot be merged into it.

Evaluation on the held-out script (`--mirage DIR`, a MIRAGE `dataset/<language>` folder, and `--mirage-script`), per
seed, the judge always the base model:
- culprit win rate: the model plays the culprit(s), the base model the civilians; civilian win rate: the model plays
  the civilians, the base model the culprit(s) (for the base model both are its self-play games);
- failed-action rate: the acts of the model's own seats in those games that did not parse into a legal act;
- the MIRAGE metrics (Victory, TII, CIC, ICI, SCI, Overall) of self-play games, through `stratagem eval mystery`'s
  protocol (games/mystery/evaluate.py);
rates with Wilson 95% intervals over games, metrics with Student-t 95% intervals over seeds. Without --mirage the
evaluation is skipped with a message in the JSON.

    python benchmarks/maro.py --mirage path/to/MIRAGE/dataset/En    # the defaults: one iteration of 3 games, 3 seeds
    python benchmarks/maro.py --mirage DIR --iterations 4 --episodes-per-iteration 24 --eval-seeds 16 --rounds 2

On 2 CPU cores the defaults take 20-30 minutes: the MARO update (reference, policy and mismatched-pair passes over
about 15,000 prompt tokens) is most of the training time, and the adapter's games are sampled on vLLM's LoRA path.

The endpoint is --base-url (a server of the default model with runtime LoRA loading, e.g. `stratagem serve`), else
a vLLM server is started and stopped around the run. The run directory (--out) keeps the training run (resumed when
it is there) and the evaluation games (reused when there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_MIRAGE_SCRIPT = "The Eastern Star Cruise Ship"  # MIRAGE's smallest: 5 characters, one stage


def split(n: int, k: int) -> list[int]:
    """n episodes over k scripts as evenly as possible, the first ones getting one more."""
    return [n // k + (i < n % k) for i in range(k)]


def multi_script_rollout(cfg: Any, base_url: str, scripts: list[str]):
    """A training rollout (loop.Rollout) that plays the iteration's mystery episodes on several scripts at once."""
    from stratagem.games.mystery.rollout import collect_mystery_episodes

    async def rollout(game: str, model: str, n: int, seed: int, on_episode) -> list:
        if game != "mystery":
            raise ValueError(f"this benchmark trains on the mystery only, got game {game!r}")
        jobs = [collect_mystery_episodes(s, k, base_url=base_url, player_model=model, judge_model="base",
                                         config=cfg.mystery, concurrency=cfg.loop.concurrency,
                                         seed=seed + 100 * i, on_episode=on_episode)
                for i, (s, k) in enumerate(zip(scripts, split(n, len(scripts)))) if k]
        return [ep for eps in await asyncio.gather(*jobs) for ep in eps]

    return rollout


def mystery_section(a: argparse.Namespace) -> dict[str, Any]:
    """The run config's mystery section: MIRAGE's settings (MysteryConfig.mirage) with --rounds, or the compact
    protocol's defaults."""
    import dataclasses

    from stratagem.games.mystery.game import MysteryConfig

    if a.protocol != "mirage":
        return {"rounds": a.rounds}
    cfg = MysteryConfig.mirage(rounds=a.rounds, **({"summary_tokens": a.summary_tokens} if a.summary_tokens else {}))
    return {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}


def train(a: argparse.Namespace, server: Any, scripts: list[str]) -> tuple[str, list[dict[str, Any]], float]:
    """Run (or resume) the MARO training; returns the trained adapter's served name, the per-iteration metrics and
    the wall time."""
    from stratagem.training.loop import RunConfig, adapter_name, run_training

    cfg = RunConfig.from_dict({
        "loop": {"algo": "maro", "games": ["mystery"], "mystery_script": scripts[0], "iterations": a.iterations,
                 "episodes_per_iteration": a.episodes_per_iteration, "seed": a.seed, "concurrency": a.concurrency,
                 "policy_weights": "lora", "base_url": server.base_url},
        "mystery": mystery_section(a),
        "trainer": {"lr": a.lr, "epochs": a.epochs},
    })
    out = Path(a.out) / "train"
    resume = (out / "checkpoint.json").exists()
    t0 = time.perf_counter()
    store = run_training(cfg, out, resume=resume, server=server,
                         rollout=multi_script_rollout(cfg, server.base_url, scripts), progress=a.progress)
    k = store.completed_iterations()
    name = adapter_name(k)
    # this run's adapter under that name, also after a resume or when the server holds another run's iter-k
    server.load_adapter(name, store.adapter_dir(k), replace=True)
    keep = ("iteration", "episodes", "rollout_s", "update_s", "loss", "z0", "kl", "trained_acts", "dropped_acts",
            "illegal_rate/mystery")
    per_it = [{key: (round(v, 4) if isinstance(v, float) else v) for key, v in m.items() if key in keep}
              for m in store.metrics()]
    eps = list(store.episodes())
    for row in per_it:  # the rollout's outcomes: civilians' wins among the iteration's games
        mine = [ep for ep in eps if ep.iteration == row["iteration"]]
        row["civilians_win"] = round(sum(ep.winning_faction == "civilian" for ep in mine) / max(1, len(mine)), 4)
    return name, per_it, time.perf_counter() - t0


async def mixed_games(script: str, model: str, seeds: list[int], base_url: str, game_cfg: Any, out: Path,
                      concurrency: int) -> dict[str, list[Any]]:
    """Per seed two games of `script`: `model` as the culprit(s) against base civilians, and `model` as the
    civilians against base culprit(s); the judge is the base model. Games stored in `out` are reused."""
    from stratagem.agents import close_agents
    from stratagem.concurrency import map_concurrent
    from stratagem.games.core import read_jsonl, write_jsonl
    from stratagem.games.mystery.library import load_script
    from stratagem.games.mystery.rollout import make_llm_agent, play_episode

    s = load_script(script)
    agents = {m: make_llm_agent(base_url, m, game_cfg.player_max_tokens, temperature=game_cfg.player_temperature,
                                structured=game_cfg.structured_outputs)
              for m in {model, "base"}}
    judge = make_llm_agent(base_url, "base", game_cfg.judge_max_tokens, temperature=game_cfg.judge_temperature,
                           structured=game_cfg.structured_outputs)
    # mirage: each statement judged by the model of its speaker's side; ICI / SCI by the base model
    side_judges = {m: make_llm_agent(base_url, m, game_cfg.judge_max_tokens, temperature=game_cfg.judge_temperature,
                                     structured=game_cfg.structured_outputs) for m in {model, "base"}}

    async def one(job: tuple[str, int]):
        side, seed = job
        path = out / f"{side}-seed-{seed}.jsonl"
        if path.exists():
            return side, next(iter(read_jsonl(path)))
        players = {c: agents[model if (c in s.culprits) == (side == "culprit") else "base"] for c in s.characters}
        if game_cfg.protocol == "mirage":
            judges = {"culprit": side_judges[model if side == "culprit" else "base"],
                      "civilian": side_judges["base" if side == "culprit" else model]}
            ep = await play_episode(str(s.path), players, judges, game_cfg, seed, evaluator=judge, summariser=judge)
        else:
            ep = await play_episode(str(s.path), players, judge, game_cfg, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl([ep], path)
        return side, ep

    try:
        done = await map_concurrent(one, [(side, sd) for sd in seeds for side in ("culprit", "civilian")],
                                    max(1, concurrency))
    finally:
        await close_agents([*agents.values(), judge, *side_judges.values()])
    return {side: [ep for sd, ep in done if sd == side] for side in ("culprit", "civilian")}


def side_won(ep: Any, side: str) -> bool:
    return ep.winning_faction == side


def failed_rate(episodes: list[Any], model: str) -> dict[str, Any]:
    """Failed acts among the turns `model` sampled."""
    from stratagem.games.metrics import rate

    turns = [t for ep in episodes for t in ep.turns if t.adapter == model]
    return rate(sum(t.illegal_reason is not None for t in turns), len(turns))


def evaluate(a: argparse.Namespace, base_url: str, models: list[str]) -> dict[str, Any]:
    """Win rates, failed-action rate and MIRAGE metrics of each model on the held-out MIRAGE script."""
    from stratagem.games.core import read_jsonl
    from stratagem.games.metrics import rate
    from stratagem.games.mystery.evaluate import MysteryEvalConfig, _slug, run_mystery_eval
    from stratagem.games.mystery.game import MysteryConfig
    from stratagem.games.mystery.library import load_script

    script = Path(a.mirage) / a.mirage_script
    s = load_script(str(script))  # a clear error for a wrong path before any game
    make = MysteryConfig.mirage if a.protocol == "mirage" else MysteryConfig
    game_cfg = make(rounds=a.rounds, **({"summary_tokens": a.summary_tokens} if a.summary_tokens else {}))
    seeds = [a.eval_seed + i for i in range(a.eval_seeds)]
    out = Path(a.out) / "eval"
    ecfg = MysteryEvalConfig(models=models, scripts=[str(script)], seeds=a.eval_seeds, seed=a.eval_seed,
                             judge="base", out=str(out / "self-play"), concurrency=a.concurrency, game=game_cfg)
    t0 = time.perf_counter()
    board = asyncio.run(run_mystery_eval(ecfg, base_url))
    res: dict[str, Any] = {"script": s.name, "characters": len(s.characters), "culprits": s.culprits,
                           "seeds": seeds, "rounds": a.rounds, "models": {}}
    for m in models:
        selfplay = [next(iter(read_jsonl(out / "self-play" / _slug(m) / _slug(script.name) / f"seed-{sd}.jsonl")))
                    for sd in seeds]
        if m == "base":  # base against base: its self-play games are both setups
            sides = {"culprit": selfplay, "civilian": selfplay}
        else:
            sides = asyncio.run(mixed_games(str(script), m, seeds, base_url, game_cfg, out / "mixed" / _slug(m),
                                            a.concurrency))
        games = selfplay if m == "base" else [*selfplay, *sides["culprit"], *sides["civilian"]]
        cells = board["results"][m]["scripts"][script.name]
        res["models"][m] = {
            "culprit_win": rate(sum(side_won(ep, "culprit") for ep in sides["culprit"]), len(sides["culprit"])),
            "civilian_win": rate(sum(side_won(ep, "civilian") for ep in sides["civilian"]), len(sides["civilian"])),
            "failed_action": failed_rate(games, m),
            "mirage": {k: {"mean": round(c["mean"], 4), "ci95": None if c["lo"] != c["lo"] else
                           [round(c["lo"], 4), round(c["hi"], 4)]} for k, c in cells.items()},
            "games": len(games),
        }
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirage", default=None, help="A MIRAGE dataset/<language> folder; without it the held-out "
                    "evaluation is skipped.")
    ap.add_argument("--mirage-script", default=DEFAULT_MIRAGE_SCRIPT, help="The script folder in --mirage to "
                    "evaluate on.")
    ap.add_argument("--scripts", default="", help="Comma-separated training scripts (shipped names or folders); "
                    "default: every shipped script.")
    ap.add_argument("--iterations", type=int, default=1, help="Training iterations (rollout + MARO update).")
    ap.add_argument("--episodes-per-iteration", type=int, default=3, help="Games per iteration, split over the "
                    "training scripts.")
    ap.add_argument("--rounds", type=int, default=1, help="Conversation rounds per stage, in training and evaluation.")
    ap.add_argument("--protocol", default="mirage", choices=("mirage", "stratagem"), help="The mystery's protocol "
                    "in training and evaluation (mirage: MIRAGE's game and judges).")
    ap.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate.")
    ap.add_argument("--epochs", type=int, default=1, help="Passes over each iteration's batch.")
    ap.add_argument("--eval-seeds", type=int, default=3, help="Evaluation games per model and setup (seeds).")
    ap.add_argument("--eval-seed", type=int, default=1000, help="First evaluation seed.")
    ap.add_argument("--summary-tokens", type=int, default=None, help="Model summaries of the held-out script's "
                    "characters to this many tokens (default: word-clipped scripts, no model call).")
    ap.add_argument("--concurrency", type=int, default=4, help="Games in flight at once.")
    ap.add_argument("--seed", type=int, default=0, help="Run seed.")
    ap.add_argument("--base-url", default=None, help="A running server of the default model with runtime LoRA "
                    "loading; default: start one.")
    ap.add_argument("--out", default="runs/maro-benchmark", help="Run directory (training run and evaluation games).")
    ap.add_argument("--progress", action="store_true", help="Show progress bars (on stderr).")
    a = ap.parse_args()
    if a.mirage is not None and not (Path(a.mirage) / a.mirage_script).is_dir():
        ap.error(f"--mirage-script: no folder {a.mirage_script!r} in --mirage {a.mirage}")

    from stratagem.games.mystery.library import shipped_scripts
    from stratagem.integrations.vllm_server import ServerConfig, VLLMServer
    from stratagem.models import resolve

    scripts = [x for x in a.scripts.split(",") if x] or list(shipped_scripts())
    t0 = time.perf_counter()
    if a.base_url:
        server = VLLMServer.attach(a.base_url, model_path=resolve("default"))
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext(server)
    else:
        server = VLLMServer(ServerConfig(model="default"))
        ctx = server
    result: dict[str, Any] = {"train_scripts": scripts, "iterations": a.iterations,
                              "episodes_per_iteration": a.episodes_per_iteration, "rounds": a.rounds, "lr": a.lr,
                              "seed": a.seed}
    with ctx, contextlib.redirect_stdout(sys.stderr):  # one JSON object on stdout: ours
        trained, per_it, train_s = train(a, server, scripts)
        result.update({"trained": trained, "train_wall_s": round(train_s, 1), "train": per_it})
        if a.mirage is None:
            result["heldout"] = "skipped: pass --mirage DIR (a MIRAGE dataset/<language> folder) to compare base " \
                                "and trained on a MIRAGE script"
        else:
            result["heldout"] = evaluate(a, server.base_url, ["base", trained])
            b, t = (result["heldout"]["models"][m] for m in ("base", trained))
            result["delta"] = {
                "culprit_win": round(t["culprit_win"]["rate"] - b["culprit_win"]["rate"], 4),
                "civilian_win": round(t["civilian_win"]["rate"] - b["civilian_win"]["rate"], 4),
                "failed_action": round(t["failed_action"]["rate"] - b["failed_action"]["rate"], 4),
                "overall": round(t["mirage"]["overall"]["mean"] - b["mirage"]["overall"]["mean"], 4)}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
