"""`stratagem play GAME --players A,B ...`: play strategic games with any mix of agents; `stratagem play mystery`
hands over to the murder-mystery command (its own options: --script, --judge, --rounds, ...)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import typer

from stratagem.games.core import Episode


def summarize(episodes: list[Episode], cooperative: bool = False) -> dict[str, Any]:
    """Per seat: mean return, wins / draws / losses (`stratagem.games.metrics`: cooperative games have no draws,
    a win is a perfect score), the win rate's and the seat's illegal-act rate's 95% Wilson intervals; overall: the
    illegal-move rate (illegal acts over model turns; 0 when no model played) and the mean number of turns."""
    from stratagem.games.metrics import illegal_counts, is_draw, seat_won, wilson_interval

    n = len(episodes)
    seats = []
    for s in range(len(episodes[0].seats)):
        wins = sum(seat_won(e, s) for e in episodes)
        draws = sum(is_draw(e, cooperative) for e in episodes)
        k, turns = illegal_counts(episodes, seat=s)
        seats.append({"seat": s, "agent": episodes[0].seats[s].agent, "role": episodes[0].seats[s].role,
                      "mean_return": sum(e.returns[s] for e in episodes) / n,
                      "wins": wins, "draws": draws, "losses": n - wins - draws,
                      "win_rate_ci95": list(wilson_interval(wins, n)), "illegal_acts": k, "model_turns": turns})
    k, turns = illegal_counts(episodes)
    return {"game": episodes[0].game, "episodes": n, "seats": seats,
            "illegal_move_rate": k / turns if turns else 0.0, "illegal_move_rate_ci95": list(wilson_interval(k, turns)),
            "model_turns": turns, "mean_turns": sum(len(e.turns) for e in episodes) / n}


def transcript_text(episodes: list[Episode]) -> str:
    """A readable record: every reply and the action it was judged to be."""
    out = []
    for e in episodes:
        seats = ", ".join(f"{s.role}={s.agent}" for s in e.seats)
        out.append(f"# {e.game} seed {e.seed} ({seats}): returns {e.returns}, winners {e.winners}, {e.end_reason}")
        for t in e.turns:
            verdict = t.action if t.legal else f"ILLEGAL ({t.illegal_reason})"
            out.append(f"[{t.role}] {t.response.strip()!r} -> {verdict}  (reward {t.reward:+.2f})")
        out.append("")
    return "\n".join(out)


async def play_with_humans(game: str, agents: list, n: int, seed: int, config: Any, console: Any) -> list[Episode]:
    """Games with a human seat, one after another: each human move pauses the graph (a LangGraph interrupt); the
    move typed at the console resumes it."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    from stratagem.games.graph import GraphConfig, build_graph, episode_of, initial_state
    from stratagem.games.registry import make_game

    eps = []
    for i in range(n):
        g = make_game(game, config)
        graph = build_graph(g, agents, GraphConfig(seed=seed + i), checkpointer=InMemorySaver())
        run = {"configurable": {"thread_id": f"{game}-{seed + i}"}}
        result = await graph.ainvoke(initial_state(), run)
        while "__interrupt__" in result:
            ask = result["__interrupt__"][0].value
            console.print(f"\n[bold]{game}, seat {ask['seat']}[/bold]\n{ask['prompt']}")
            move = typer.prompt("your move")
            result = await graph.ainvoke(Command(resume=move), run)
        eps.append(episode_of(g, agents))
        console.print(f"game over: returns {eps[-1].returns}")
    return eps


def play_strategic(game: str, players: str, episodes: int = 1, seed: int = 0, json_out: bool = False,
                   transcript: str | None = None, out: str | None = None, base_url: str | None = None,
                   model: str | None = None, max_tokens: int | None = None, concurrency: int = 8,
                   think: bool = False, response_prefix: str | None = None, temperature: float | None = None,
                   open_answer: bool | None = None) -> dict[str, Any]:
    """Play `episodes` games; model seats reply in the training protocol (`SamplingConfig`, `ReplyFormat`) unless
    the given options change it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from stratagem.agents import make_agent
    from stratagem.agents.sampling import SamplingConfig
    from stratagem.console import console as make_console
    from stratagem.games.base import GameConfig, ReplyFormat
    from stratagem.games.core import write_jsonl
    from stratagem.games.registry import GAME_NAMES, make_game
    from stratagem.games.rollout import collect_episodes

    if game not in GAME_NAMES:
        raise typer.BadParameter(f"unknown game {game!r}; expected one of {', '.join(GAME_NAMES)}, mystery")
    specs = [p.strip() for p in players.split(",") if p.strip()]
    n_players = make_game(game).info.num_players
    if len(specs) != n_players:
        raise typer.BadParameter(f"--players: {game} needs {n_players} comma-separated agents, got {players!r}")
    if episodes < 1:
        raise typer.BadParameter(f"--episodes must be >= 1, got {episodes}")
    uses_llm = any(s.startswith("llm:") for s in specs)
    base_url = base_url or os.environ.get("STRATAGEM_BASE_URL") or None
    console = make_console(stderr=json_out)
    server: Any = contextlib.nullcontext()
    if uses_llm and base_url is None:
        from stratagem.integrations.vllm_server import ServerConfig, VLLMServer

        server = VLLMServer(ServerConfig(model=model or "default"))
    elif uses_llm and base_url is not None:  # (always set here: the branch above took base_url None)
        from stratagem.agents.llm import check_endpoint

        check_endpoint(base_url)  # an unreachable endpoint fails now, not after every game's retries
    t0 = time.perf_counter()
    with server as srv:
        url = base_url or (srv.base_url if uses_llm else None)
        try:
            given: dict[str, Any] = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature))
                                     if v is not None}
            sampling = SamplingConfig(**given)
            agents = [make_agent(s, base_url=url, seed=seed + i, game=game,
                                 **(sampling.agent_kwargs() if s.startswith("llm:") else {}))
                      for i, s in enumerate(specs)]
        except ValueError as e:
            raise typer.BadParameter(f"--players: {e}") from None
        reply_given: dict[str, Any] = {k: v for k, v in (("response_prefix", response_prefix),
                                                         ("open_answer", open_answer)) if v is not None}
        config = GameConfig(reply=ReplyFormat(think=think, **reply_given))
        if "human" in specs:
            eps = asyncio.run(play_with_humans(game, agents, episodes, seed, config, console))
        else:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console) as progress:
                task = progress.add_task(f"{game}: {' vs '.join(specs)}", total=episodes)
                eps = asyncio.run(collect_episodes(game, agents, episodes, concurrency, seed=seed, config=config,
                                                   on_episode=lambda _e: progress.advance(task)))
    path = Path(out) if out else Path("runs/play") / f"{game}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    write_jsonl(eps, path)
    result = summarize(eps, cooperative=make_game(game).info.cooperative)
    result.update(players=specs, seed=seed, wall_s=round(time.perf_counter() - t0, 2), episodes_path=str(path))
    if transcript:
        Path(transcript).parent.mkdir(parents=True, exist_ok=True)
        Path(transcript).write_text(transcript_text(eps), encoding="utf-8")
        result["transcript_path"] = transcript
    if json_out:
        typer.echo(json.dumps(result))
    else:
        from rich.table import Table

        table = Table(title=f"{game}: {episodes} episode(s), seed {seed}")
        for col in ("seat", "agent", "mean return", "wins", "draws", "losses"):
            table.add_column(col)
        for s in result["seats"]:
            table.add_row(f"{s['seat']} ({s['role']})", s["agent"], f"{s['mean_return']:+.3f}", str(s["wins"]),
                          str(s["draws"]), str(s["losses"]))
        console.print(table)
        lo, hi = result["illegal_move_rate_ci95"]
        console.print(f"illegal-move rate {result['illegal_move_rate']:.3f} [{lo:.2f}, {hi:.2f}] of "
                      f"{result['model_turns']} model turns, mean turns {result['mean_turns']:.1f}"
                      f"\nepisodes: {path}" + (f"\ntranscript: {transcript}" if transcript else ""))
    return result


def play(
    game: str = typer.Argument(..., help="tictactoe, kuhn_poker, mini_hanabi, connect_four, leduc_poker, "
                               "simple_hanabi, or mystery."),
    players: str | None = typer.Option(None, help="Comma-separated agents, one per seat: llm:MODEL, random, "
                                          "mcts:N, cfr, human. For mystery: the served model of every seat."),
    episodes: int = typer.Option(1, help="Games to play."),
    seed: int = typer.Option(0, help="Game i uses seed + i; same seed and bots give the same episodes."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    transcript: str | None = typer.Option(None, help="Write a readable transcript here."),
    out: str | None = typer.Option(None, help="Episodes JSONL (default runs/play/GAME-TIME.jsonl)."),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible endpoint for llm: agents (default "
                                           "$STRATAGEM_BASE_URL, else a vLLM server is started)."),
    model: str | None = typer.Option(None, help="Model a started server serves (default: the default model)."),
    max_tokens: int | None = typer.Option(None, help="Longest LLM reply; longer ends the game as over-long "
                                             "(default: training's, 48)."),
    temperature: float | None = typer.Option(None, help="LLM sampling temperature (default: training's, 0.6)."),
    concurrency: int = typer.Option(8, help="Games in flight at once."),
    think: bool = typer.Option(False, help="Require <think>...</think><answer>...</answer> replies."),
    response_prefix: str | None = typer.Option(None, help="Forced start of every LLM reply; '{legal_prefix}' is "
                                                  "the start the legal actions share (default: training's, "
                                                  "'<answer>{legal_prefix}'; '' for none)."),
    open_answer: bool | None = typer.Option(None, "--open-answer/--closed-answer", help="Accept an answer left "
                                               "unclosed by the stop string '>' (default: training's, open)."),
    script: str = typer.Option("lighthouse", help="mystery: script name or folder."),
    judge: str = typer.Option("base", help="mystery: served model of the judge."),
    rounds: int = typer.Option(5, help="mystery: conversation rounds per stage."),
    player_max_tokens: int | None = typer.Option(None, help="mystery: longest player reply."),
    judge_max_tokens: int | None = typer.Option(None, help="mystery: longest judge reply."),
    structured_outputs: bool = typer.Option(True, "--structured-outputs/--no-structured-outputs",
                                            help="mystery: ask the endpoint for schema-constrained acts and judge "
                                            "answers (lenient parsing when it has no such support)."),
    summary_tokens: int | None = typer.Option(None, help="mystery: summarise each character's script with the "
                                                 "served model to this many tokens (cached); default: no summary."),
    protocol: str = typer.Option("stratagem", help="mystery: stratagem (compact prompts, one judge) or mirage "
                                 "(MIRAGE's game and judges)."),
) -> None:
    """Play games and print a summary (per-seat mean return, wins / draws / losses, illegal-move rate, mean turns);
    episodes are written as JSONL."""
    if game == "mystery":
        from stratagem.games.mystery.cli import play_mystery

        play_mystery(script=script, players=players or "base", judge=judge, episodes=episodes, seed=seed,
                     json_out=json_out, transcript=transcript, rounds=rounds, base_url=base_url, model=model,
                     player_max_tokens=player_max_tokens, judge_max_tokens=judge_max_tokens,
                     concurrency=concurrency, structured_outputs=structured_outputs, summary_tokens=summary_tokens,
                     protocol=protocol)
        return
    if players is None:
        raise typer.BadParameter("--players is required, e.g. --players mcts:100,random")
    play_strategic(game, players, episodes, seed, json_out, transcript, out, base_url, model, max_tokens, concurrency,
                   think, response_prefix, temperature=temperature, open_answer=open_answer)


def register(app: typer.Typer) -> None:
    app.command("play")(play)
