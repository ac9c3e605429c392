"""`stratagem mystery validate|list`, and `play_mystery`, which `stratagem play mystery` calls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import typer

from stratagem.games.mystery.library import SCRIPTS_DIR, load_script, script_dir, shipped_scripts
from stratagem.games.mystery.schema import ScriptError, is_script_dir, load_script_dir, validate_script_dir

mystery_app = typer.Typer(no_args_is_help=True, add_completion=False,
                          help="The murder-mystery game: check and list scripts (play it with `stratagem play mystery`).")


def _summary(path: Path) -> str:
    s = load_script_dir(path)
    locs = {loc for st in s.stages for loc in st.clues}
    return (f"ok: {path}: {s.title!r}: {len(s.characters)} characters, {len(s.stages)} stage(s), "
            f"{len(locs)} locations, {s.total_clues} clues, culprit(s): {', '.join(s.culprits)}"
            + (f" among the suspects {', '.join(s.candidates)}" if s.candidates else "")
            + (f", truth from {s.language} MIRAGE data" if s.source == "mirage" else ""))


@mystery_app.command("validate")
def validate(path: str = typer.Argument(..., help="A script folder (or a folder of script folders, or a shipped name).")) -> None:
    """Check a script folder against the format; print every error (file, path inside it, what was expected)."""
    try:
        root = script_dir(path)
    except FileNotFoundError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    folders = [root] if is_script_dir(root) else sorted(p for p in root.iterdir() if is_script_dir(p))
    if not folders:
        folders = [root]  # reports the missing files
    bad = 0
    for f in folders:
        errors = validate_script_dir(f)
        if errors:
            bad += 1
            typer.secho(f"invalid: {f}", fg="red")
            for err in errors:
                typer.echo(f"  {f / err.file if (f / err.file).exists() or err.file == 'meta.json' else err.file}: "
                           f"{err.path or '<root>'}: expected {err.expected}")
        else:
            typer.echo(_summary(f))
    if bad:
        raise typer.Exit(1)


@mystery_app.command("list")
def list_scripts() -> None:
    """List the scripts shipped with Stratagem."""
    for name in shipped_scripts():
        s = load_script(name)
        typer.echo(f"{name}\t{len(s.characters)} characters\t{len(s.stages)} stage(s)\t{s.title}")


def register(app: typer.Typer) -> None:
    app.add_typer(mystery_app, name="mystery")


def _served_name(spec: str) -> str:
    """A served model name from `MODEL` or the agent spec `llm:MODEL` that `stratagem play` uses for other games."""
    name = spec.split(":", 1)[1] if spec.startswith("llm:") else spec
    if not name or "," in name:
        raise typer.BadParameter(f"expected one served model name (or llm:MODEL), got {spec!r}")
    return name


def play_mystery(script: str = "lighthouse", players: str = "base", judge: str = "base", episodes: int = 1,
                 seed: int = 0, json_out: bool = False, transcript: str | None = None, rounds: int = 5,
                 base_url: str | None = None, model: str | None = None,
                 player_max_tokens: int | None = None, judge_max_tokens: int | None = None,
                 concurrency: int = 4, structured_outputs: bool = True,
                 summary_tokens: int | None = None, protocol: str = "stratagem") -> dict[str, Any]:
    """Play `episodes` games of `script` with the served model `players` (`MODEL` or `llm:MODEL`) in every seat and
    `judge` as judge; print the aggregated metrics (one JSON object with `json_out`); write the transcript (markdown)
    to `transcript` (default runs/mystery/<script>-<time>.md) and the episodes beside it (.jsonl) with the metrics
    (.metrics.json). The endpoint is `base_url`, else $STRATAGEM_BASE_URL; with neither, a vLLM server for `model`
    (default: the default model) is started and stopped around the games. Returns the metrics object."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from stratagem.console import console as make_console
    from stratagem.files import append_line
    from stratagem.games.core import write_jsonl
    from stratagem.games.mystery.game import MysteryConfig
    from stratagem.games.mystery.metrics import HEADLINE, aggregate
    from stratagem.games.mystery.rollout import collect_mystery_episodes
    from stratagem.games.mystery.transcript import transcript_markdown

    console = make_console(stderr=json_out)
    try:
        s = load_script(script)
    except (FileNotFoundError, ScriptError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    if episodes < 1 or rounds < 0:
        raise typer.BadParameter(f"episodes must be >= 1 and rounds >= 0, got {episodes}, {rounds}")
    players, judge = _served_name(players), _served_name(judge)
    overrides: dict[str, Any] = {k: v for k, v in (("player_max_tokens", player_max_tokens),
                                                   ("judge_max_tokens", judge_max_tokens)) if v is not None}
    if summary_tokens is not None:
        overrides["summary_tokens"] = summary_tokens
    if protocol not in ("stratagem", "mirage"):
        raise typer.BadParameter(f"protocol must be stratagem or mirage, got {protocol!r}")
    make = MysteryConfig.mirage if protocol == "mirage" else MysteryConfig
    cfg = make(rounds=rounds, structured_outputs=structured_outputs, **overrides)
    base_url = base_url or os.environ.get("STRATAGEM_BASE_URL") or None
    md_path = Path(transcript) if transcript else Path("runs/mystery") / f"{s.name}-{time.strftime('%Y%m%d-%H%M%S')}.md"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    est_acts = episodes * len(s.characters) * (2 + 2 * rounds * len(s.stages))
    # every act as it is played (one JSON line each): a long game stopped before its end keeps what it played
    acts_path = md_path.with_suffix(".acts.jsonl")
    acts_path.write_text("", encoding="utf-8")

    server: Any = contextlib.nullcontext()
    if base_url is None:
        from stratagem.integrations.vllm_server import ServerConfig, VLLMServer

        server = VLLMServer(ServerConfig(model=model or "default"))
    with server as srv:
        url = base_url or srv.base_url
        t0 = time.perf_counter()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            acts = progress.add_task(f"mystery {s.name}: acts (estimate)", total=est_acts)

            def played(turn: Any) -> None:
                append_line(acts_path, json.dumps(dataclasses.asdict(turn), ensure_ascii=False))
                progress.advance(acts)

            games = progress.add_task("games", total=episodes)
            eps = asyncio.run(collect_mystery_episodes(
                s.path, episodes, base_url=url, player_model=players, judge_model=judge, config=cfg, seed=seed,
                concurrency=concurrency,
                on_turn=played, on_episode=lambda _e: progress.advance(games)))
            progress.update(acts, completed=progress.tasks[acts].total)
        wall_s = time.perf_counter() - t0

    jsonl_path, metrics_path = md_path.with_suffix(".jsonl"), md_path.with_suffix(".metrics.json")
    write_jsonl(eps, jsonl_path)
    md_path.write_text(transcript_markdown(eps), encoding="utf-8")
    per_game = [{k: v for k, v in e.metrics.items() if not isinstance(v, (dict, list))} for e in eps]
    result: dict[str, Any] = {
        "script": s.name, "players": players, "judge": judge, "rounds": rounds, "protocol": protocol,
        "wall_s": round(wall_s, 1),
        "metrics": aggregate(per_game),
        "per_game": per_game, "episodes_path": str(jsonl_path), "transcript_path": str(md_path),
        "metrics_path": str(metrics_path), "acts_path": str(acts_path)}
    metrics_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    if json_out:
        typer.echo(json.dumps(result))
    else:
        table = Table(title=f"{s.title}: {episodes} game(s), {rounds} round(s) per stage")
        table.add_column("metric")
        table.add_column("mean", justify="right")
        agg = result["metrics"]
        for k in (*HEADLINE, "civilians_win", "failed_action_rate", "judge_parse_failures"):
            table.add_row(k, f"{agg[k]:.3f}")
        console.print(table)
        console.print(f"episodes: {jsonl_path}\ntranscript: {md_path}\nmetrics: {metrics_path}")
    return result


__all__ = ["SCRIPTS_DIR", "mystery_app", "play_mystery", "register"]
