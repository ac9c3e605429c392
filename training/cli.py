"""`stratagem train` and `stratagem report`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import typer

from stratagem.training.run_config import RESUMABLE

# short flags of the most used fields (every field also has its own --section.field flag)
ALIASES = {"algo": "loop.algo", "games": "loop.games", "iterations": "loop.iterations",
           "episodes_per_iteration": "loop.episodes_per_iteration", "model": "loop.model",
           "base_url": "loop.base_url", "opponents": "loop.opponents", "seed": "loop.seed",
           "concurrency": "loop.concurrency", "policy_weights": "loop.policy_weights",
           "max_tokens": "sampling.max_tokens", "temperature": "sampling.temperature", "lr": "trainer.lr",
           "rank": "trainer.rank"}

def train_parser(require_out: bool = True) -> argparse.ArgumentParser:
    """The flags of `stratagem train`: --out, --config, --resume and one flag per RunConfig field."""
    from stratagem.config import flag_parser
    from stratagem.preset import DEFAULT, preset_names
    from stratagem.training.loop import RunConfig

    parser = flag_parser(
        RunConfig, aliases=ALIASES, prog="stratagem train",
        usage="stratagem train --out DIR [--config FILE] [--resume] [--SECTION.FIELD VALUE ...]",
        description="Self-play training: roll out, compute advantages (or MARO labels), update the LoRA adapter, "
                    "hot-load it into vLLM, repeat. Settings come from the defaults, then --config, then the flags; "
                    "lists are comma-separated (--games tictactoe,kuhn_poker), booleans true/false.")
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, required=require_out, help="Run directory (created; with --resume, "
                     "continued).")
    run.add_argument("--preset", help="A shipped run config laid under --config and the flags: "
                     f"{', '.join(preset_names())} (default {DEFAULT}; `stratagem config show --preset NAME` prints "
                     "it resolved).")
    run.add_argument("--config", type=Path, help="YAML file with any of the sections below (loop, sampling, reply, "
                     "rewards, ...), e.g. the config.yaml of a run.")
    run.add_argument("--resume", action="store_true", help="Continue the run in --out from its last completed "
                     f"iteration with its saved configuration (only {', '.join(RESUMABLE)} may be given). The "
                     "store is verified first (checksums of every commit); damage stops the resume with the way out.")
    run.add_argument("--resume-from", type=int, metavar="K", help="With --resume: roll the run back to its commit "
                     "of iteration K (0: the start), dropping the later iterations, and continue from there (the "
                     "way out of a damaged store: the resume's error names the last intact K).")
    return parser


def train_config(argv: list[str], require_out: bool = True) -> tuple[Any, Path, bool, int | None]:
    """(the validated RunConfig, the run directory, resume, resume-from) of `stratagem train`'s arguments:
    defaults, then the YAML of --config (or the saved config with --resume), then the flags. Raises ConfigError (a
    ValueError) naming the field; loads no model."""
    import yaml

    from stratagem.config import ConfigError, merge, parse_flags
    from stratagem.preset import DEFAULT, load_preset
    from stratagem.training.loop import RunConfig
    from stratagem.training.run_store import RunStore

    overrides, ns = parse_flags(train_parser(require_out), argv)
    if ns.resume_from is not None and not ns.resume:
        raise ConfigError("--resume-from rolls back a run to resume it: give --resume too")
    if ns.resume_from is not None and ns.resume_from < 0:
        raise ConfigError(f"--resume-from: an iteration >= 0, got {ns.resume_from}")
    if ns.resume:
        given = [f"{s}.{k}" for s, d in overrides.items() for k in d]
        extra = [g for g in given if g not in RESUMABLE] + (["--config"] if ns.config else []) \
            + (["--preset"] if ns.preset else [])
        if extra:
            raise ConfigError(f"--resume continues the saved configuration; only {', '.join(RESUMABLE)} may be "
                              f"given with it (got {', '.join(extra)})")
        raw = RunStore(ns.out).read_config()
    elif ns.config is not None:
        try:
            raw = yaml.safe_load(ns.config.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {ns.config}: not valid YAML: {e}") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"--config {ns.config}: expected a mapping of sections, got {type(raw).__name__}")
    else:
        raw = {}
    if not ns.resume:  # defaults < preset < --config < flags; a resumed run's config.yaml holds its preset already
        try:
            base = load_preset(ns.preset or DEFAULT)
        except ValueError as e:
            raise ConfigError(f"--preset: {e}") from None
        raw = merge(merge(base, {"loop": {"preset": ns.preset or DEFAULT}}), raw or {})
    return RunConfig.from_dict(merge(raw or {}, overrides)), ns.out, ns.resume, ns.resume_from


def check_endpoints(base_url: str | None, api_key: str | None = None) -> None:
    """Fail now, before a run directory is made or a model loads, when an endpoint of `--base-url` cannot be
    reached (`agents.llm.check_endpoint`)."""
    from stratagem.agents.llm import check_endpoint
    from stratagem.endpoints import parse_endpoints

    for url in parse_endpoints(base_url):
        check_endpoint(url, api_key)


def register(app: typer.Typer) -> None:
    @app.command(add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def train(ctx: typer.Context) -> None:
        """Self-play training: roll out, compute advantages (or MARO labels), update the LoRA adapter, hot-load
        it into vLLM, repeat. Every run-config field is a flag: stratagem train --help lists them."""
        from stratagem.training.loop import run_training

        try:
            cfg, out, resume, resume_from = train_config(list(ctx.args))
            check_endpoints(cfg.loop.base_url, cfg.server.api_key)
            store = run_training(cfg, out, resume=resume, resume_from=resume_from)
        except (ValueError, FileExistsError, FileNotFoundError) as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        from stratagem.training.distributed import current

        if current().is_main:  # under torchrun every rank returns here; one line is enough
            typer.echo(f"{store.completed_iterations()} iterations done; adapters in {store.adapters_dir}; "
                       f"plots: stratagem report {out}")

    config_app = typer.Typer(no_args_is_help=True, help="Run configurations: presets, resolved configs.")
    app.add_typer(config_app, name="config")

    @config_app.command("show", add_help_option=False,
                        context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def config_show(ctx: typer.Context) -> None:
        """Print the resolved run config (every field, as YAML) of `stratagem train`'s flags (--preset NAME,
        --config FILE, --SECTION.FIELD VALUE, or --out RUN --resume for a run's own) without starting anything."""
        import yaml

        try:
            cfg, *_ = train_config(list(ctx.args), require_out=False)
        except (ValueError, FileNotFoundError) as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)

    @config_app.command("presets")
    def config_presets() -> None:
        """List the shipped presets."""
        from stratagem.preset import preset_names

        for name in preset_names():
            typer.echo(name)

    @app.command()
    def verify(run_dir: Path = typer.Argument(..., help="A run directory written by `stratagem train`.")) -> None:
        """Check a run directory without writing: every commit's checksums and adapter files, and the store's
        invariants (readable lines, each committed episode once, one metrics line per iteration)."""
        from stratagem.training.run_store import RunStore

        store = RunStore(run_dir)
        problems = store.problems()
        if problems:
            for p in problems:
                typer.secho(f"error: {p}", fg="red", err=True)
            raise typer.Exit(1)
        cp = store.checkpoint()
        typer.echo(f"{run_dir}: intact ({cp['iteration']} iterations, {cp['episodes']} episodes, "
                   f"{len(cp['commits'])} commits verified)")

    @app.command()
    def export(run_dir: Path = typer.Argument(..., help="A run directory written by `stratagem train`."),
               to: Path = typer.Option(..., "--to", help="Directory for the dataset (datasets.save_to_disk).")) -> None:
        """Write a run's trained turns as a Hugging Face dataset, one row per trained turn: game, role, messages,
        response, action, reward, return, advantage (MARO: desirable), the adapter that sampled it, token ids and
        log-probs. Read it with datasets.load_from_disk."""
        from stratagem.training.export import export_run

        try:
            n = export_run(run_dir, to)
        except (RuntimeError, ValueError, FileNotFoundError) as e:  # a damaged store: StoreDamage
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"{to}: {n} trained turns from {run_dir}")

    @app.command()
    def report(run_dir: Path = typer.Argument(..., help="A run directory written by `stratagem train`.")) -> None:
        """Write PNG plots of a run's metrics to RUN_DIR/plots/."""
        from stratagem.training.report import write_report

        try:
            paths = write_report(run_dir)
        except (ValueError, FileNotFoundError) as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        for p in paths:
            typer.echo(str(p))
