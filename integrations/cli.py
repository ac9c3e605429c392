"""`stratagem eval`: the downstream evaluations (multi-agent systems on reasoning benchmarks, held-out games).

Without `--base-url` a command starts its own vLLM server with the default model (and the `--adapter NAME=PATH`
adapters it is given) and stops it at the end; with it, it uses that endpoint, whose models must already be served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate served models in multi-agent systems and games.")


def _split(csv_list: str, what: str) -> list[str]:
    items = [s.strip() for s in csv_list.split(",") if s.strip()]
    if not items or len(set(items)) != len(items):
        raise typer.BadParameter(f"{what} expects a comma-separated list of distinct names, got {csv_list!r}")
    return items


@contextlib.contextmanager
def endpoint(base_url: list[str] | None | str, adapters: list[str], model: str = "default") -> Iterator[str]:
    """The endpoint to use: `base_url` as given (one URL, or several joined by commas: repeated --base-url,
    comma-separated lists and files of URLs, see stratagem.endpoints.parse_endpoints), or a server started here
    (adapters loaded) for the block."""
    if base_url:
        from stratagem.endpoints import EndpointError, parse_endpoints

        try:
            urls = parse_endpoints(base_url)
        except EndpointError as e:
            raise typer.BadParameter(str(e)) from None
        if adapters:
            raise typer.BadParameter("--adapter loads adapters into a server this command starts; with --base-url "
                                     "load them into that server instead")
        yield ",".join(urls)
        return
    from stratagem.cli import _parse_adapters
    from stratagem.integrations.vllm_server import ServerConfig, VLLMServer

    with VLLMServer(ServerConfig(model=model, adapters=_parse_adapters(adapters))) as srv:
        yield srv.base_url


def merged_serving(weights: str, base_url: Any, adapters: dict[str, str]) -> bool:
    """Whether the adapters are served merged into the base weights (--adapter-weights): 'merged', or 'auto' on a
    machine without a GPU (vLLM's CPU engine runs a LoRA adapter at about half the base model's speed)."""
    if weights not in ("auto", "lora", "merged"):
        raise typer.BadParameter(f"--adapter-weights must be auto, lora or merged, got {weights!r}")
    if weights == "merged" and base_url:
        raise typer.BadParameter("--adapter-weights merged replaces the weights of a server this command starts; "
                                 "it cannot with --base-url")
    if not adapters or base_url or weights == "lora":
        return False
    if weights == "merged":
        return True
    import torch

    return not torch.cuda.is_available()


def policy_switch(srv: Any, adapters: dict[str, str]) -> Callable[[str], None]:
    """switch(NAME) for a server started with weight_reload and the adapters' names as model_aliases: adapter
    NAME merged into the served weights and verified against transformers + peft as the training loop verifies its
    policy (the server then answers to NAME with it); any other name puts the base weights back. The server holds
    one policy at a time, so the models must be played one after the other (games_eval's `before_model`)."""
    def switch(name: str) -> None:
        if name in adapters:
            check = srv.load_policy_weights(adapters[name], name)
            typer.echo(f"{name}: merged into the served weights and verified (mean |dlogp| "
                       f"{check['mean_abs_diff']:.2g} over {check['tokens']} probe tokens)", err=True)
        elif srv.policy_version is not None:
            srv.load_base_weights()
            typer.echo(f"{name}: the base weights back in place", err=True)
    return switch


@contextlib.contextmanager
def merged_endpoint(adapters: dict[str, str], model: str = "default") -> Iterator[tuple[str, Callable[[str], None]]]:
    """A server started here that serves the adapters merged, one at a time, at the base model's speed: (URL,
    policy_switch)."""
    from stratagem.integrations.vllm_server import ServerConfig, VLLMServer

    with VLLMServer(ServerConfig(model=model, weight_reload=True, model_aliases=list(adapters))) as srv:
        yield srv.base_url, policy_switch(srv, adapters)


def run_adapters(run: str | None, names: list[str], adapters: list[str]) -> list[str]:
    """The --adapter list plus, for each model name not given there, the run's adapter of that name
    (RUN/adapters/NAME) where it exists."""
    from stratagem.integrations.adapter_check import run_adapter  # deferred, as every import of the CLI

    given = {a.split("=", 1)[0] for a in adapters}
    found = [f"{n}={run_adapter(run, n)}" for n in names
             if run and n not in given and (run_adapter(run, n) / "adapter_config.json").is_file()]
    return [*adapters, *found]


def _run_preset(run: str) -> str:
    """The preset a training run recorded (loop.preset in its config.yaml; 'laptop' when it names none)."""
    import yaml

    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise typer.BadParameter(f"--run {run}: no config.yaml there")
    return str(((yaml.safe_load(path.read_text()) or {}).get("loop") or {}).get("preset") or "laptop")


class LineProgress:
    """Progress as plain lines on stderr, for a log file or a pipe, where rich's bar draws nothing: a line about
    every 5% of a task (and at most a minute apart while it advances) with the rate and the time left."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr
        self.tasks: list[dict[str, Any]] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: int) -> int:
        now = time.monotonic()
        self.tasks.append({"what": description, "total": total, "done": 0, "start": now, "said": now})
        return len(self.tasks) - 1

    def advance(self, task: int, n: int = 1) -> None:
        t = self.tasks[task]
        t["done"] += n
        now = time.monotonic()
        step = max(1, t["total"] // 20)
        if t["done"] % step and t["done"] != t["total"] and now - t["said"] < 60:
            return
        t["said"] = now
        elapsed = now - t["start"]
        rate = t["done"] / elapsed * 60 if elapsed > 0 else 0.0
        left = ""
        if rate > 0 and t["done"] < t["total"]:
            left = f", about {(t['total'] - t['done']) / rate:.0f} min left"
        print(f"{t['what']}: {t['done']}/{t['total']} ({rate:.1f}/min, {elapsed / 60:.1f} min{left})",
              file=self.stream, flush=True)


def _progress() -> Any:
    if not sys.stderr.isatty():
        return LineProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # on stderr, so that --json leaves stdout to the one JSON object
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True, console=Console(stderr=True))


@eval_app.command("mas")
def eval_mas(
    system: str = typer.Option("single", help="single, autogen, mad or debate."),
    benchmark: str | None = typer.Option(None, help="gsm8k, math500, aime, amc, gpqa, aqua (AQUA-RAT) or "
                                            "mmlu_stem (with --table: a comma-separated list, default all seven)."),
    data: str | None = typer.Option(None, help="Benchmark file (JSONL; CSV for GPQA; an MMLU file's STEM "
                                       "subjects for mmlu_stem). Default: the hub. With --table: NAME=PATH pairs "
                                       "separated by commas (benchmarks left out come from the hub)."),
    table: bool = typer.Option(False, "--table", help="Every (system, benchmark) pair for each model, laid out as "
                               "MARSHAL's Table 1 (a block per system, a row per model, the seven benchmarks and "
                               "the average, each model's difference from the first with a paired 95% interval); "
                               "needs --out (resumable)."),
    systems: str = typer.Option("mad,autogen", help="--table: the systems, comma-separated."),
    reference: str | None = typer.Option(None, help="--table: print a published table's rows beside ours: "
                                            "marshal (the cells of MARSHAL's Table 1 its public sources state; the "
                                            "rest n/a) or a YAML file of that shape with every cell filled."),
    limit: int | None = typer.Option(None, help="Only the first N questions (of the sample)."),
    sample: str = typer.Option("first", help="first: the file's order; maslab: MASLab's sample (one shuffle with "
                               "seed 2024, the first 500, repeated questions dropped)."),
    repeats: int = typer.Option(1, help="Answer each question this many times (seeds seed .. seed+K-1); accuracy "
                                "and its interval over repeats and questions."),
    models: str = typer.Option("base", help="Comma-separated served model / adapter names; the first is the reference."),
    out: str | None = typer.Option(None, help="Directory for per-question JSONL with transcripts (resumable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    base_url: list[str] | None = typer.Option(None, help="Use this endpoint instead of starting a server; "
                                                 "repeat it, or give a comma-separated list or a file of URLs, to "
                                                 "spread the work over several endpoints serving the same models."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=PATH adapter to load into the started server."),
    concurrency: int = typer.Option(8, help="Questions in flight at once."),
    protocol: str | None = typer.Option(None, help="stratagem: this project's MAD and AutoGen; maslab: MASLab's "
                                           "structure, as MARSHAL evaluated (3 debate rounds, a judge reading the "
                                           "first round; a two-agent AutoGen chat either side ends with TERMINATE). "
                                           "Default: maslab for a --run trained with a marshal preset, else "
                                           "stratagem."),
    run: str | None = typer.Option(None, help="The training run the models come from: its preset picks the "
                                      "default --protocol."),
    prompts: str | None = typer.Option(None, help="--protocol maslab: a YAML file with the keys of "
                                          "integrations/prompts/maslab.yaml (e.g. MASLab's own texts)."),
    max_tokens: int | None = typer.Option(None, help="Longest reply of one agent turn (default 256; maslab: "
                                             "2048)."),
    temperature: float | None = typer.Option(None, help="Sampling temperature (default 0.7; maslab: 0.5)."),
    rounds: int | None = typer.Option(None, help="Debate rounds (mad default 3, debate default 2; maslab "
                                         "autogen: assistant turns, default 3)."),
    agents: int = typer.Option(3, help="debate: agents; autogen round_robin/selector: solvers."),
    team: str = typer.Option("two_agent", help="autogen team: two_agent, round_robin or selector."),
    ci: str = typer.Option("wilson", help="Accuracy interval: wilson or bootstrap."),
    seed: int = typer.Option(0, help="Seed (sampling, option shuffling, bootstrap)."),
) -> None:
    """Run a multi-agent system on a benchmark with each model; accuracy with 95% CIs and paired differences."""
    from stratagem.console import console
    from stratagem.integrations.benchmarks import BenchmarkFormatError, load_benchmark
    from stratagem.integrations.mas_eval import CI_METHODS, SYSTEMS, EvalConfig, run_eval, summary_table

    system_list = _split(systems, "--systems") if table else [system]
    for name in system_list:
        if name not in SYSTEMS:
            raise typer.BadParameter(f"--system expects one of {', '.join(SYSTEMS)}, got {name!r}")
    if not table and benchmark is None:
        raise typer.BadParameter("--benchmark is required (or --table for all of them)")
    if table and not out:
        raise typer.BadParameter("--table needs --out DIR (every pair is saved there and resumes)")
    if ci not in CI_METHODS:
        raise typer.BadParameter(f"--ci expects one of {', '.join(CI_METHODS)}, got {ci!r}")
    if protocol is None:
        protocol = "maslab" if run and _run_preset(run).startswith("marshal") else "stratagem"
    if protocol not in ("stratagem", "maslab"):
        raise typer.BadParameter(f"--protocol expects stratagem or maslab, got {protocol!r}")
    maslab = protocol == "maslab"
    published = None
    temperature = temperature if temperature is not None else (0.5 if maslab else 0.7)
    max_tokens = max_tokens if max_tokens is not None else (2048 if maslab else 256)
    try:
        if prompts is not None:
            from stratagem.integrations.maslab import load_prompts

            load_prompts(prompts)  # a bad file fails before any server starts
        if reference is not None:
            if not table:
                raise ValueError("--reference adds a published table's rows to --table; give --table")
            from stratagem.integrations.mas_table import load_reference

            published = load_reference(reference)
        if table:
            from stratagem.integrations.mas_table import TABLE_BENCHMARKS

            benches = _split(benchmark, "--benchmark") if benchmark else list(TABLE_BENCHMARKS)
            paths = dict(p.split("=", 1) for p in (data or "").split(",") if "=" in p)
            unknown = set(paths) - set(benches)
            if unknown:
                raise ValueError(f"--data names {', '.join(sorted(unknown))}, which --benchmark does not list")
            by_bench = {b: load_benchmark(b, paths.get(b), limit=limit, seed=seed, sample=sample) for b in benches}
        else:
            assert benchmark is not None  # required without --table (checked above)
            questions = load_benchmark(benchmark, data, limit=limit, seed=seed, sample=sample)
    except (BenchmarkFormatError, ValueError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    names = _split(models, "--models")
    if table:
        from stratagem.integrations.mas_table import run_table, table_markdown

        assert out is not None  # --table needs --out (checked above)
        with endpoint(base_url, adapter) as url:
            cfg = EvalConfig(models=names, base_url=url, out=out, concurrency=concurrency, temperature=temperature,
                             max_tokens=max_tokens, seed=seed, rounds=rounds, agents=agents, team=team, ci=ci,
                             repeats=repeats, protocol=protocol, prompts=prompts)
            total = sum(len(q) for q in by_bench.values()) * len(names) * repeats * len(system_list)
            with _progress() as progress:
                task = progress.add_task("the table", total=total)
                result = asyncio.run(run_table(cfg, system_list, by_bench, out,
                                               on_result=lambda _: progress.advance(task)))
        if published:
            result["reference"] = published
        (Path(out) / "table.md").write_text(table_markdown(result, published) + "\n")
        typer.echo(json.dumps(result) if json_out else table_markdown(result, published))
        return
    with endpoint(base_url, adapter) as url:
        if system == "autogen" and "," in url:
            raise typer.BadParameter("--system autogen talks to one endpoint (AutoGen's own OpenAI client); give "
                                     "one --base-url, or use single, mad or debate to spread over several")
        cfg = EvalConfig(system=system, models=names, base_url=url, out=out, concurrency=concurrency,
                         temperature=temperature, max_tokens=max_tokens, seed=seed, rounds=rounds, agents=agents,
                         team=team, ci=ci, repeats=repeats, protocol=protocol, prompts=prompts)
        with _progress() as progress:
            task = progress.add_task(f"{system} on {benchmark}", total=len(questions) * len(names) * repeats)
            summary = asyncio.run(run_eval(cfg, questions, on_result=lambda _: progress.advance(task)))
    summary["benchmark"] = benchmark
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        console().print(summary_table(summary))
    failed = sum(m["errors"] for m in summary["models"].values())
    if failed:
        typer.secho(f"error: {failed} question(s) failed on the endpoint {url} (see 'error' in the JSONL); rerun "
                    "with --out to resume", fg="red", err=True)
        raise typer.Exit(1)


@eval_app.command("games")
def eval_games(
    models: str = typer.Option("base", help="Comma-separated served model / adapter names."),
    games: str | None = typer.Option(None, help="Comma-separated game names (default: all six strategic games)."),
    opponent: str = typer.Option("auto", help="auto (MARS's: mcts:100 on tic-tac-toe and Connect Four, cfr on "
                                 "Kuhn, nash on Leduc, the model itself on Hanabi), marshal (MARSHAL's evaluation: "
                                 "also mcts:1000 on tic-tac-toe, mcts:10 on Connect Four), an agent spec (mcts:N, "
                                 "cfr, nash, random), self, or GAME=SPEC pairs separated by commas (SPEC|SPEC: "
                                 "several opponents of one game)."),
    mcts_simulations: int | None = typer.Option(None, help="Simulations of the auto MCTS opponent (default 100; "
                                                   "MARS also reports 1000 on tic-tac-toe, 10 on Connect Four)."),
    episodes: int = typer.Option(10, help="Episodes per model, game and seat order."),
    run: str | None = typer.Option(None, help="A training run directory: its config.yaml's sampling and reply "
                                      "format (what the model was trained with); the flags below override it."),
    temperature: float | None = typer.Option(None, help="Sampling temperature (default: the run's, else 0.6)."),
    top_p: float | None = typer.Option(None, help="Nucleus sampling mass (default: the run's, else 0.99)."),
    top_k: int | None = typer.Option(None, help="Top-k sampling, -1 off (default: the run's, else 100)."),
    max_tokens: int | None = typer.Option(None, help="Longest reply of one move (default: the run's, else 48)."),
    stop: list[str] | None = typer.Option(None, "--stop", help="Stop string, repeatable; backslash escapes "
                                             "decoded ('\\n'); 'none' for none (default: the run's, else '>' "
                                             "and newline)."),
    response_prefix: str | None = typer.Option(None, help="Forced start of every reply; '{legal_prefix}' is the "
                                                  "start the legal actions share (default: the run's, else "
                                                  "'<answer>{legal_prefix}'; '' for none)."),
    open_answer: bool | None = typer.Option(None, "--open-answer/--closed-answer", help="Accept an answer left "
                                               "unclosed by the stop string (default: the run's, else open)."),
    think: bool | None = typer.Option(None, "--think/--no-think", help="Require <think>...</think> before the "
                                         "answer (default: the run's, else no)."),
    vllm_extensions: bool | None = typer.Option(None, "--vllm-extensions/--no-vllm-extensions", help="Send "
                                                   "vLLM's extra request fields (top_k, stop strings kept)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
    out: str | None = typer.Option(None, help="Directory for the episodes (JSONL) and the summary."),
    base_url: list[str] | None = typer.Option(None, help="Use this endpoint instead of starting a server; "
                                                 "repeat it, or give a comma-separated list or a file of URLs, to "
                                                 "spread the work over several endpoints serving the same models."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=PATH adapter to load into the started server "
                                      "(with --run, the run's adapters named in --models are added)."),
    adapter_weights: str = typer.Option("auto", help="How the started server serves the adapters: lora (vLLM's "
                                        "LoRA path, all models at once), merged (each merged into the base weights "
                                        "in turn, verified, at base speed; models played one after the other), "
                                        "auto (merged on a machine without a GPU)."),
    api_key: str | None = typer.Option(None, "--api-key", help="Bearer token for --base-url (a server started "
                                          "with --api-key)."),
    concurrency: int = typer.Option(8, help="Games in flight at once."),
    seed: int = typer.Option(0, help="Seed of the first game."),
    per_role: bool = typer.Option(False, "--per-role", help="The models are per-role policies (a run trained with "
                                  "trainer.adapters per_role): MODEL plays each seat with its role's adapter, "
                                  "MODEL-ROLE (with --run, RUN/adapters/MODEL/ROLE); served as LoRA adapters."),
) -> None:
    """Strategic games as MARS evaluates them: normalized return of the model's seat, moving first and second, with
    95% intervals, in the training reply protocol."""
    import dataclasses

    from stratagem.agents.sampling import SamplingConfig
    from stratagem.config import check
    from stratagem.console import console
    from stratagem.games.base import ReplyFormat
    from stratagem.games.registry import make_game, role_model
    from stratagem.integrations.games_eval import (
        GamesEvalConfig,
        parse_stop,
        plan,
        results_table,
        run_games_eval,
        run_protocol,
    )

    try:
        sampling, reply = run_protocol(run) if run else (SamplingConfig(), ReplyFormat())
        sampling_given: dict[str, Any] = {k: v for k, v in (
            ("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("max_tokens", max_tokens),
            ("stop", parse_stop(stop) if stop else None), ("vllm_extensions", vllm_extensions)) if v is not None}
        sampling = dataclasses.replace(sampling, **sampling_given)
        reply_given: dict[str, Any] = {k: v for k, v in (
            ("response_prefix", response_prefix), ("open_answer", open_answer), ("think", think)) if v is not None}
        reply = dataclasses.replace(reply, **reply_given)
        games_given: dict[str, Any] = {"games": _split(games, "--games")} if games else {}
        cfg = GamesEvalConfig(models=_split(models, "--models"), opponent=opponent, mcts_simulations=mcts_simulations,
                              episodes=episodes, out=out, concurrency=concurrency, seed=seed, sampling=sampling,
                              reply=reply, api_key=api_key, per_role=per_role, **games_given)
        check(sampling, "sampling")
        if per_role and adapter_weights == "merged":
            raise ValueError("--per-role serves each role's adapter beside the others: --adapter-weights lora")
        total = len(plan(cfg)) * episodes
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    from stratagem.cli import _parse_adapters

    served = [role_model(m, r) for m in cfg.models for g in cfg.games for r in make_game(g).info.roles] \
        if per_role else cfg.models
    adapter = run_adapters(run, list(dict.fromkeys(served)), adapter) if not base_url else adapter
    parsed = _parse_adapters(adapter)
    with contextlib.ExitStack() as stack:
        switch = None
        if not per_role and merged_serving(adapter_weights, base_url, parsed):
            cfg.base_url, switch = stack.enter_context(merged_endpoint(parsed))
        else:
            cfg.base_url = stack.enter_context(endpoint(base_url, adapter))
        progress = stack.enter_context(_progress())
        task = progress.add_task("strategic games", total=total)
        result = asyncio.run(run_games_eval(cfg, on_episode=lambda _: progress.advance(task), before_model=switch))
    if json_out:
        typer.echo(json.dumps(result))
    else:
        console().print(results_table(result))


@eval_app.command("mystery")
def eval_mystery(
    models: str = typer.Option("base", help="Comma-separated served model / adapter names."),
    scripts: str = typer.Option("lighthouse", help="Comma-separated shipped script names, script folders or "
                                "folders of script folders (e.g. a MIRAGE dataset/En)."),
    seeds: int = typer.Option(3, help="Games per model and script."),
    seed: int = typer.Option(0, help="First seed."),
    protocol: str = typer.Option("mirage", help="mirage: MIRAGE's game and judges (MysteryConfig.mirage); "
                                 "stratagem: compact prompts and one judge, for small models."),
    rounds: int | None = typer.Option(None, help="Conversation rounds per stage (default: mirage 5, "
                                         "stratagem 2; lower it for a CPU budget)."),
    judge: str = typer.Option("base", help="Served model of the judge (mirage: of the summaries, and the default "
                              "evaluation model)."),
    eval_model: str | None = typer.Option(None, help="mirage: the model that grades ICI and SCI (default: "
                                             "--judge)."),
    eval_base_url: str | None = typer.Option(None, help="mirage: the OpenAI-compatible endpoint of "
                                                "--eval-model (default: the players' endpoint)."),
    eval_api_key: str | None = typer.Option(None, help="mirage: the bearer token of --eval-base-url."),
    prompts: str | None = typer.Option(None, help="mirage: a folder of prompt files (en.yaml, zh.yaml) that "
                                          "replace the shipped prompts key by key."),
    summary_tokens: int | None = typer.Option(None, help="Summarise each character's script with the served "
                                                 "model to this many tokens first (mirage: 1500)."),
    out: str = typer.Option("runs/eval-mystery", help="Folder of per-game JSONL and transcripts; reruns resume."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
    base_url: list[str] | None = typer.Option(None, help="Use this endpoint instead of starting a server; "
                                                 "repeat it, or give a comma-separated list or a file of URLs, to "
                                                 "spread the work over several endpoints serving the same models."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=PATH adapter to load into the started server."),
    concurrency: int = typer.Option(2, help="Games in flight at once."),
) -> None:
    """The murder mystery as MIRAGE evaluates it: Victory, TII, CIC, ICI, SCI, Overall per script and averaged,
    95% intervals over seeds, a leaderboard row per model."""
    from stratagem.console import console
    from stratagem.games.mystery.evaluate import MysteryEvalConfig, expand_scripts, leaderboard, run_mystery_eval
    from stratagem.games.mystery.game import MysteryConfig

    try:
        if protocol == "mirage":
            game = MysteryConfig.mirage(**{k: v for k, v in (("rounds", rounds), ("summary_tokens", summary_tokens),
                                                             ("prompts_dir", prompts)) if v is not None})
        elif protocol == "stratagem":
            game = MysteryConfig(rounds=2 if rounds is None else rounds, summary_tokens=summary_tokens)
        else:
            raise ValueError(f"--protocol must be mirage or stratagem, got {protocol!r}")
        cfg = MysteryEvalConfig(models=_split(models, "--models"), scripts=_split(scripts, "--scripts"), seeds=seeds,
                                seed=seed, judge=judge, out=out, concurrency=concurrency, game=game,
                                eval_model=eval_model, eval_base_url=eval_base_url, eval_api_key=eval_api_key)
        total = len(cfg.models) * len(expand_scripts(cfg.scripts)) * seeds
    except (ValueError, FileNotFoundError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    with endpoint(base_url, adapter) as url, _progress() as progress:
        task = progress.add_task("mystery games", total=total)
        result = asyncio.run(run_mystery_eval(cfg, url, on_game=lambda: progress.advance(task)))
    if json_out:
        typer.echo(json.dumps(result))
    else:
        console().print(leaderboard(result))


@eval_app.command("exact")
def eval_exact(
    models: str = typer.Option("base", help="Comma-separated served model / adapter names, or the bots random, "
                               "cfr, nash (no server needed)."),
    games: str = typer.Option("kuhn_poker", help="Comma-separated games: kuhn_poker, leduc_poker (the whole game), "
                              "tictactoe (below the fixed openings of integrations/exact_eval.py: OPENINGS)."),
    run: str | None = typer.Option(None, help="A training run directory: its reply protocol (what the model was "
                                      "trained with)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
    out: str | None = typer.Option(None, help="Directory for the policy tables (reused by a rerun) and the "
                                      "summary."),
    base_url: list[str] | None = typer.Option(None, help="Use this vLLM endpoint instead of starting a server."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=PATH adapter to load into the started server."),
    api_key: str | None = typer.Option(None, "--api-key", help="Bearer token for --base-url."),
    concurrency: int = typer.Option(8, help="Scoring requests in flight at once."),
    source: str = typer.Option("vllm", help="vllm: the served models' prompt log-probs; trainer: the model loaded "
                               "here (exact, faster on a CPU; adapters from --run RUN/adapters/NAME)."),
    model: str = typer.Option("default", help="With --source trainer: the base model."),
    per_role: bool = typer.Option(False, "--per-role", help="The models are per-role policies (a run trained with "
                                  "trainer.adapters per_role): each seat scored by MODEL-ROLE (served under that "
                                  "name; with --source trainer, RUN/adapters/MODEL/ROLE)."),
) -> None:
    """The policy itself, not a sample of games: the model's probability of every legal action at every information
    state of Kuhn poker or Leduc hold'em (its log-probs of each action's reply in the training protocol), then
    OpenSpiel's exploitability and the exact expected return against CFR and the Nash equilibrium, per seat."""
    from stratagem.agents.sampling import SamplingConfig
    from stratagem.console import console
    from stratagem.games.base import ReplyFormat
    from stratagem.integrations.exact_eval import BOT_POLICIES, EXACT_GAMES, TREE_GAMES, ExactEvalConfig, results_table
    from stratagem.integrations.exact_eval import run as run_exact
    from stratagem.integrations.games_eval import run_protocol

    try:
        names, game_list = _split(models, "--models"), _split(games, "--games")
        bad = [g for g in game_list if g not in EXACT_GAMES + TREE_GAMES]
        if bad:
            raise ValueError(f"--games: exact evaluation covers {', '.join(EXACT_GAMES + TREE_GAMES)}, got "
                             f"{', '.join(bad)}")
        sampling, reply = run_protocol(run) if run else (SamplingConfig(), ReplyFormat())
        if reply.think:
            raise ValueError("the run's protocol thinks before it answers (reply.think): a thinking reply has no "
                             "table of action probabilities")
        if source not in ("vllm", "trainer"):
            raise ValueError(f"--source must be vllm or trainer, got {source!r}")
        cfg = ExactEvalConfig(models=names, games=game_list, out=out, concurrency=concurrency, sampling=sampling,
                              reply=reply, api_key=api_key, source=source, model_path=model, run=run,
                              per_role=per_role)
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    served = [m for m in names if m not in BOT_POLICIES] if source == "vllm" else []
    with contextlib.ExitStack() as stack, _progress() as progress:
        if served:
            cfg.base_url = stack.enter_context(endpoint(base_url, adapter)).split(",")[0]

        def bar(what: str, total: int) -> Any:
            task = progress.add_task(what, total=total)
            return lambda: progress.advance(task)

        result = run_exact(cfg, bar)
    if json_out:
        typer.echo(json.dumps(result))
    else:
        console().print(results_table(result))


@eval_app.command("league")
def eval_league(
    run: str = typer.Argument(..., help="A training run directory (its adapters RUN/adapters/iter-K)."),
    games: str = typer.Option("kuhn_poker", help="Comma-separated games: kuhn_poker, leduc_poker."),
    bots: str = typer.Option("random,cfr,nash", help="Comma-separated bots of the pool: random, cfr, nash; the "
                             "first is the anchor (Elo 0)."),
    every: int = typer.Option(1, help="Rate base, every N-th adapter and the last."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
) -> None:
    """Rate a run's policies (base, iter-1, ...) against each other and the bots, exactly: every pair's exact score
    (win probability + half the tie probability, both seat orders) from the policies' tables (the run's base model
    with each adapter, loaded here, no server), an Elo fit anchored at the first bot, and each one's
    exploitability."""
    from stratagem.console import console
    from stratagem.training.league import rate_run, rating_rich_table

    try:
        with _progress() as progress:
            def bar(what: str, total: int) -> Any:
                task = progress.add_task(what, total=total)
                return lambda: progress.advance(task)

            result = rate_run(run, _split(games, "--games"), _split(bots, "--bots"), every=every, progress=bar)
    except (ValueError, FileNotFoundError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(result))
    else:
        for game in result["games"]:
            console().print(rating_rich_table(result, game))


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
