"""Before and after: the policy a run starts from and the one it ends with, evaluated on the run's own training games
in its own reply protocol, side by side with 95% intervals. This is what `stratagem train` prints at the end when
`loop.eval_episodes` > 0 (the quickstart does), so a run shows whether it learned."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any


def evaluate_policy(cfg: Any, base_url: str, served: str, label: str, out_dir: Path | None = None) -> dict[str, Any]:
    """Play `cfg.loop.eval_episodes` games per seat order of each strategic game of `cfg.loop.eval_games` (default:
    the training games) with the served
    model `served` against `cfg.loop.eval_opponent`, in the run's sampling and reply format. Returns the eval
    summary of integrations.games_eval (per game and seat: illegal rate, win rate, normalized return, intervals),
    also written to out_dir/LABEL.json."""
    from stratagem.games.registry import get_game_spec
    from stratagem.integrations.games_eval import GamesEvalConfig, run_games_eval

    lc = cfg.loop
    games = [g for g in (lc.eval_games or lc.games) if get_game_spec(g).kind == "strategic"]
    if not games:
        return {}
    ec = GamesEvalConfig(models=[served], games=games, opponent=lc.eval_opponent, episodes=lc.eval_episodes,
                         base_url=base_url, api_key=cfg.server.api_key, concurrency=lc.concurrency,
                         seed=10_000_000 + lc.seed,
                         sampling=cfg.sampling, reply=cfg.reply)
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
    from stratagem.games.metrics import pooled_seats

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
    from stratagem.console import console
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
