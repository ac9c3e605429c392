"""`stratagem eval`: the downstream evaluations (multi-agent systems on reasoning benchmarks, held-out games).

Without `--base-url` a command starts its own vLLM server with the default model (and the `--adapter NAME=PATH`
adapters it is given) and stops it at the end; with it, it uses that endpoint, whose models must already be served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Iterator, Optional

import typer

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate served models in multi-agent systems and games.")


def _split(csv_list: str, what: str) -> list[str]:
    items = [s.strip() for s in csv_list.split(",") if s.strip()]
    if not items or len(set(items)) != len(items):
        raise typer.BadParameter(f"{what} expects a comma-separated list of distinct names, got {csv_list!r}")
    return items


@contextlib.contextmanager
def endpoint(base_url: Optional[str], adapters: list[str], model: str = "default") -> Iterator[str]:
    """The endpoint to use: `base_url` as given, or a server started here (adapters loaded) for the block."""
    if base_url:
        if adapters:
            raise typer.BadParameter("--adapter loads adapters into a server this command starts; with --base-url "
                                     "load them into that server instead")
        yield base_url
        return
    from stratagem.cli import _parse_adapters
    from stratagem.integrations.vllm_server import ServerConfig, VLLMServer

    with VLLMServer(ServerConfig(model=model, adapters=_parse_adapters(adapters))) as srv:
        yield srv.base_url


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # on stderr, so that --json leaves stdout to the one JSON object
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True, console=Console(stderr=True))


@eval_app.command("mas")
def eval_mas(
    system: str = typer.Option("single", help="single, autogen, mad or debate."),
    benchmark: str = typer.Option(..., help="gsm8k, math500, aime, amc or gpqa."),
    data: Optional[str] = typer.Option(None, help="Benchmark file (JSONL; CSV for GPQA). Default: the hub."),
    limit: Optional[int] = typer.Option(None, help="Only the first N questions."),
    models: str = typer.Option("base", help="Comma-separated served model / adapter names; the first is the reference."),
    out: Optional[str] = typer.Option(None, help="Directory for per-question JSONL with transcripts (resumable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    base_url: Optional[str] = typer.Option(None, help="Use this endpoint instead of starting a server."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=PATH adapter to load into the started server."),
    concurrency: int = typer.Option(8, help="Questions in flight at once."),
    max_tokens: int = typer.Option(256, help="Longest reply of one agent turn."),
    temperature: float = typer.Option(0.7, help="Sampling temperature."),
    rounds: Optional[int] = typer.Option(None, help="Debate rounds (mad default 3, debate default 2)."),
    agents: int = typer.Option(3, help="debate: agents; autogen round_robin/selector: solvers."),
    team: str = typer.Option("two_agent", help="autogen team: two_agent, round_robin or selector."),
    ci: str = typer.Option("wilson", help="Accuracy interval: wilson or bootstrap."),
    seed: int = typer.Option(0, help="Seed (sampling, option shuffling, bootstrap)."),
) -> None:
    """Run a multi-agent system on a benchmark with each model; accuracy with 95% CIs and paired differences."""
    from rich.console import Console

    from stratagem.integrations.benchmarks import BenchmarkFormatError, load_benchmark
    from stratagem.integrations.mas_eval import CI_METHODS, SYSTEMS, EvalConfig, run_eval, summary_table

    if system not in SYSTEMS:
        raise typer.BadParameter(f"--system expects one of {', '.join(SYSTEMS)}, got {system!r}")
    if ci not in CI_METHODS:
        raise typer.BadParameter(f"--ci expects one of {', '.join(CI_METHODS)}, got {ci!r}")
    try:
        questions = load_benchmark(benchmark, data, limit=limit, seed=seed)
    except BenchmarkFormatError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1)
    names = _split(models, "--models")
    with endpoint(base_url, adapter) as url:
        cfg = EvalConfig(system=system, models=names, base_url=url, out=out, concurrency=concurrency,
                         temperature=temperature, max_tokens=max_tokens, seed=seed, rounds=rounds, agents=agents,
                         team=team, ci=ci)
        with _progress() as progress:
            task = progress.add_task(f"{system} on {benchmark}", total=len(questions) * len(names))
            summary = asyncio.run(run_eval(cfg, questions, on_result=lambda _: progress.advance(task)))
    summary["benchmark"] = benchmark
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        Console().print(summary_table(summary))
    if any(m["errors"] for m in summary["models"].values()):
        typer.secho("some questions failed on the endpoint (see 'error' in the JSONL); rerun with --out to resume",
                    fg="yellow", err=True)


@eval_app.command("games")
def eval_games(
    models: str = typer.Option("base", help="Comma-separated served model / adapter names."),
    games: str = typer.Option("connect_four,leduc_poker,simple_hanabi", help="Comma-separated game names."),
    opponent: str = typer.Option("auto", help="auto (mcts:N on board games, cfr on poker), an agent spec "
                                 "(mcts:N, cfr, random), self, or GAME=SPEC pairs separated by commas."),
    episodes: int = typer.Option(10, help="Episodes per model, game and seat order."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
    out: Optional[str] = typer.Option(None, help="Directory for the episodes (JSONL) and the summary."),
    base_url: Optional[str] = typer.Option(None, help="Use this endpoint instead of starting a server."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=PATH adapter to load into the started server."),
    concurrency: int = typer.Option(8, help="Games in flight at once."),
    max_tokens: Optional[int] = typer.Option(None, help="Longest reply of one move (default: the agent's)."),
    seed: int = typer.Option(0, help="Seed of the first game."),
) -> None:
    """Held-out game evaluation (MARS): normalized return, first and second seat reported separately."""
    from rich.console import Console

    from stratagem.integrations.games_eval import GamesEvalConfig, plan, results_table, run_games_eval

    cfg = GamesEvalConfig(models=_split(models, "--models"), games=_split(games, "--games"), opponent=opponent,
                          episodes=episodes, out=out, concurrency=concurrency, max_tokens=max_tokens, seed=seed)
    try:
        total = len(plan(cfg)) * episodes
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1)
    with endpoint(base_url, adapter) as url, _progress() as progress:
        cfg.base_url = url
        task = progress.add_task("held-out games", total=total)
        result = asyncio.run(run_games_eval(cfg, on_episode=lambda _: progress.advance(task)))
    if json_out:
        typer.echo(json.dumps(result))
    else:
        Console().print(results_table(result))


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
