"""Before and after: the policy a run starts from and the one it ends with, evaluated on the run's own training games
in its own reply protocol, side by side with 95% intervals. This is what `stratagem train` prints at the end when
`loop.eval_episodes` > 0 (the quickstart does), so a run shows whether it learned."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path
from typing import Any

from stratagem.console import console
from stratagem.games.metrics import pooled_seats
from stratagem.games.registry import get_game_spec, make_game
from stratagem.integrations.exact_eval import EXACT_GAMES, ExactEvalConfig, SeatScorer, TrainerScorer, run_exact_eval


def evaluate_policy(cfg: Any, base_url: str, served: str, label: str, out_dir: Path | None = None) -> dict[str, Any]:
    """Play `cfg.loop.eval_episodes` games per seat order of each strategic game of `cfg.loop.eval_games` (default:
    the training games) with the served
    model `served` against `cfg.loop.eval_opponent`, in the run's sampling and reply format. Returns the eval
    summary of integrations.games_eval (per game and seat: illegal rate, win rate, normalized return, intervals),
    also written to out_dir/LABEL.json."""
    from stratagem.integrations.games_eval import GamesEvalConfig, run_games_eval

    lc = cfg.loop
    games = [g for g in (lc.eval_games or lc.games) if get_game_spec(g).kind == "strategic"]
    if not games:
        return {}
    ec = GamesEvalConfig(models=[served], games=games, opponent=lc.eval_opponent, episodes=lc.eval_episodes,
                         base_url=base_url, api_key=cfg.server.api_key, concurrency=lc.concurrency,
                         seed=10_000_000 + lc.seed,
                         sampling=cfg.sampling, reply=cfg.reply, per_role=cfg.trainer.adapters == "per_role")
    result = asyncio.run(run_games_eval(ec))
    result["label"] = label
    result["per_game"] = result["models"].pop(served)
    del result["models"]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{label}.json").write_text(json.dumps(result, indent=2))
    return result


def _cell(entry: dict[str, Any], key: str) -> str:
    if key not in entry:
        return "-"
    ci = entry.get(f"{key}_ci95")
    return f"{entry[key]:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{entry[key]:.2f}"


def comparison_rows(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, str]]:
    """One row per game and seat order, then one per game with the seat orders pooled ("both": twice the games, so
    the narrower interval), each with before and after cells."""

    def with_pooled(seats: dict[str, Any]) -> dict[str, Any]:
        return {**seats, "both": {**pooled_seats(seats), "opponent": next(iter(seats.values())).get("opponent", "")}} \
            if len(seats) > 1 else seats

    rows = []
    for game, after_seats in after.get("per_game", {}).items():
        before_seats = with_pooled(before.get("per_game", {}).get(game, {}))
        for seat, a in with_pooled(after_seats).items():
            b = before_seats.get(seat, {})
            rows.append({"game": game, "seat": seat, "opponent": a.get("opponent", ""),
                         **{f"{k} {when}": _cell(e, k) for k in ("illegal_rate", "win_rate", "normalized_return")
                            for when, e in (("before", b), ("after", a))}})
    return rows


def print_comparison(before: dict[str, Any], after: dict[str, Any], before_name: str, after_name: str) -> None:
    from rich.table import Table

    rows = comparison_rows(before, after)
    if not rows:
        return
    t = Table(title=f"{before_name} (before) vs {after_name} (after): {after.get('episodes')} games per seat order, "
                    "95% intervals")
    for col in rows[0]:
        t.add_column(col.replace("_", " "))
    for r in rows:
        t.add_row(*r.values())
    console().print(t)


def evaluate_exact(cfg: Any, trainer: Any, name: str, label: str, out_dir: Path) -> dict[str, Any]:
    """`stratagem eval exact` of the trainer's current policy (named `name`: base, or the adapter iter-K it
    holds) on the run's evaluated poker games, in the run's reply protocol, scored by the trainer's own model (no
    server: exact, and it leaves the server alone); the result (per game: exploitability, exact returns against
    CFR and Nash per seat, illegal-move probability) is written to out_dir/exact-LABEL.json, the tables beside
    it."""
    from transformers import AutoTokenizer

    lc = cfg.loop
    games = [g for g in (lc.eval_games or lc.games) if g in EXACT_GAMES]
    for stale in (out_dir / "exact").glob(f"policy-{name}-*.json"):
        stale.unlink()  # a table cached under this name is of the weights it had then (before a rollback)
    ec = ExactEvalConfig(models=[name], games=games, out=str(out_dir / "exact"), sampling=cfg.sampling,
                         reply=cfg.reply, source="trainer")
    tok = AutoTokenizer.from_pretrained(trainer.model_path)

    def scorer_for(model: str, game: str) -> Any:
        if not trainer.roles:
            return TrainerScorer(trainer.model, tok, cfg.sampling)
        # per-role adapters: each seat's points scored by its role's adapter
        return SeatScorer({seat: TrainerScorer(trainer.model, tok, cfg.sampling, activate=partial(trainer.use_role, r))
                           for seat, r in enumerate(make_game(game).info.roles)})

    result = asyncio.run(run_exact_eval(ec, scorer_for=scorer_for))
    result = {"label": label, "model": name, "per_game": result["models"][name]}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"exact-{label}.json").write_text(json.dumps(result, indent=2))
    return result


def print_exact_comparison(before: dict[str, Any], after: dict[str, Any], before_name: str, after_name: str) -> None:
    from rich.table import Table

    t = Table(title=f"{before_name} (before) vs {after_name} (after), exact: no sampling noise")
    for col in ("game", "exploitability", "vs cfr (mean of seats)", "vs nash (mean of seats)", "illegal prob"):
        t.add_column(col)
    for game, a in after.get("per_game", {}).items():
        b = before.get("per_game", {}).get(game, {})

        def cell(key: str, sub: str | None = None, a: dict = a, b: dict = b) -> str:
            x = b.get(key, {}).get(sub) if sub else b.get(key)
            y = a.get(key, {}).get(sub) if sub else a.get(key)
            return f"{x:.4f} -> {y:.4f}" if x is not None else f"- -> {y:.4f}"
        t.add_row(game, cell("exploitability"), cell("vs_cfr", "mean"), cell("vs_nash", "mean"),
                  cell("illegal_prob_mean"))
    console().print(t)
