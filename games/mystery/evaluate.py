"""MIRAGE's evaluation protocol on any set of scripts for several served models side by side (`stratagem eval
mystery`): per model, script and seed one game with every seat played by the model. Under the `mirage` protocol
(the default) the model under test judges suspicion and trust and one fixed evaluation model grades ICI and SCI for
all models, so those scores compare; under `stratagem` one fixed judge does everything; Victory, TII, CIC, ICI, SCI and Overall per script and averaged over scripts, each with
a Student-t 95% interval over seeds; laid out like the MIRAGE leaderboard (a row per model, a column per metric).

Each game is stored as `<out>/<model>/<script>/seed-<k>.jsonl` with its transcript (`.md`) beside it; a rerun with
the same `out` loads the games already there and plays only the missing ones (resumable)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from stratagem.concurrency import map_concurrent
from stratagem.files import Journal, atomic_write
from stratagem.games.core import Episode
from stratagem.games.metrics import mean_interval
from stratagem.games.mystery.game import MysteryConfig
from stratagem.games.mystery.library import load_script, script_dir
from stratagem.games.mystery.metrics import HEADLINE
from stratagem.games.mystery.schema import is_script_dir
from stratagem.games.mystery.transcript import transcript_markdown

LABELS = {"victory": "Victory", "tii": "TII", "cic": "CIC", "ici": "ICI", "sci": "SCI", "overall": "Overall"}


@dataclass
class MysteryEvalConfig:
    models: list[str] = field(default_factory=lambda: ["base"], metadata={"help": "Served model / adapter names."})
    scripts: list[str] = field(default_factory=lambda: ["lighthouse"], metadata={"help": "Shipped script names, script folders, or folders of script folders (a MIRAGE dataset/<language>)."})
    seeds: int = field(default=3, metadata={"help": "Games per model and script (seeds seed..seed+seeds-1)."})
    seed: int = field(default=0, metadata={"help": "First seed."})
    judge: str = field(default="base", metadata={"help": "Served model of the judge (the same for every model); under the mirage protocol the base model that summarises scripts and history, and the default evaluation model."})
    eval_model: str | None = field(default=None, metadata={"help": "mirage: the evaluation model that grades ICI and SCI (sees the truth); default: `judge`."})
    eval_base_url: str | None = field(default=None, metadata={"help": "mirage: the OpenAI-compatible endpoint of eval_model (default: the players' endpoint)."})
    eval_api_key: str | None = field(default=None, metadata={"help": "mirage: the bearer token of eval_base_url."})
    out: str = field(default="runs/eval-mystery", metadata={"help": "Folder of the per-game JSONL and transcripts (resumable)."})
    concurrency: int = field(default=2, metadata={"help": "Games in flight at once."})
    game: MysteryConfig = field(default_factory=MysteryConfig.mirage, metadata={"help": "The game's options (default: MIRAGE's, MysteryConfig.mirage())."})


def expand_scripts(items: list[str]) -> list[Path]:
    """Script folders from names and paths; a folder of script folders gives each of them."""
    out: list[Path] = []
    for it in items:
        d = script_dir(it)
        out += [d] if is_script_dir(d) else sorted(p for p in d.iterdir() if is_script_dir(p))
    if not out:
        raise ValueError(f"no script folder in {items}")
    return out


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


async def run_mystery_eval(cfg: MysteryEvalConfig, base_url: str,
                           on_game: Callable[[], Any] | None = None) -> dict[str, Any]:
    from stratagem.games.mystery.rollout import collect_mystery_episodes

    folders = expand_scripts(cfg.scripts)
    for f in folders:
        load_script(f)  # every script valid before any game
    games: dict[tuple[str, str], list[dict[str, float]]] = {}

    async def one(model: str, folder: Path, seed: int) -> None:
        path = Path(cfg.out) / _slug(model) / _slug(folder.name) / f"seed-{seed}.jsonl"
        journal = Journal(path)
        eps = [Episode.from_dict(rec) for rec in journal.records()] if path.exists() else []
        played = eps[0].params.get("protocol", "stratagem") if eps else None
        if played is not None and played != cfg.game.protocol:
            raise ValueError(f"{path} was played under the {played!r} protocol, not {cfg.game.protocol!r}: "
                             "give another --out")
        if not eps:  # not played yet, or a write cut before its commit
            eps = await collect_mystery_episodes(str(folder), 1, base_url=base_url, player_model=model,
                                                 judge_model=cfg.judge, config=cfg.game, concurrency=1, seed=seed,
                                                 eval_model=cfg.eval_model, eval_base_url=cfg.eval_base_url,
                                                 eval_api_key=cfg.eval_api_key)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path.with_suffix(".md"), transcript_markdown(eps))
            journal.write_all([ep.to_json() for ep in eps])
        ep: Episode = eps[0]
        games.setdefault((model, folder.name), []).append(
            {k: float(ep.metrics[k]) for k in (*HEADLINE, "failed_action_rate")})
        if on_game is not None:
            on_game()

    jobs = [(m, f, cfg.seed + k) for m in cfg.models for f in folders for k in range(cfg.seeds)]
    await map_concurrent(lambda job: one(*job), jobs, max(1, cfg.concurrency))
    return summarise(games, cfg.models, [f.name for f in folders])


def _cell(values: list[float]) -> dict[str, float]:
    lo, hi = mean_interval(values)
    return {"mean": mean(values), "lo": lo, "hi": hi, "n": len(values)}


def summarise(games: dict[tuple[str, str], list[dict[str, float]]], models: list[str],
              scripts: list[str]) -> dict[str, Any]:
    """Per model: per script each metric's mean and 95% interval over seeds; 'average': the per-seed mean over
    scripts, with its interval over seeds."""
    out: dict[str, Any] = {"models": models, "scripts": scripts, "results": {}}
    keys = (*HEADLINE, "failed_action_rate")
    for m in models:
        per = {s: {k: _cell([g[k] for g in games[(m, s)]]) for k in keys} for s in scripts}
        n = min(len(games[(m, s)]) for s in scripts)
        avg = {k: _cell([mean(games[(m, s)][i][k] for s in scripts) for i in range(n)]) for k in keys}
        out["results"][m] = {"scripts": per, "average": avg}
    return out


def fmt(c: dict[str, float]) -> str:
    if math.isnan(c["lo"]):
        return f"{c['mean']:.3f}"
    return f"{c['mean']:.3f} ± {(c['hi'] - c['lo']) / 2:.3f}"


def leaderboard(result: dict[str, Any]):
    """A rich Table: a row per (script, model) and one 'Average' row per model; a column per MIRAGE metric."""
    from rich.table import Table

    t = Table(title="MIRAGE leaderboard (mean ± 95% interval over seeds)")
    t.add_column("script")
    t.add_column("model")
    for k in (*HEADLINE, "failed_action_rate"):
        t.add_column(LABELS.get(k, "Failed acts"), justify="right")
    for s in (*result["scripts"], "Average"):
        for m in result["models"]:
            r = result["results"][m]
            cells = r["average"] if s == "Average" else r["scripts"][s]
            t.add_row(s, m, *(fmt(cells[k]) for k in (*HEADLINE, "failed_action_rate")))
    return t
