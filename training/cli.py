"""`stratagem train` and `stratagem report`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _split(value: Optional[str]) -> Optional[list[str]]:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        out: Path = typer.Option(..., "--out", help="Run directory (created; with --resume, continued)."),
        algo: Optional[str] = typer.Option(None, help="mars, grpo, rae or maro (default: mars)."),
        games: Optional[str] = typer.Option(None, help="Comma-separated games, or 'mystery' (default: tictactoe)."),
        iterations: Optional[int] = typer.Option(None, help="Iterations in total (default: 2)."),
        episodes_per_iteration: Optional[int] = typer.Option(None, help="Episodes per iteration (default: 8)."),
        model: Optional[str] = typer.Option(None, help="Base model: registered name or directory (default: default)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML file with sections loop, trainer, "
                                              "advantage, ppo, maro (see config.yaml of any run)."),
        base_url: Optional[str] = typer.Option(None, help="Use this running vLLM server instead of starting one."),
        opponents: Optional[str] = typer.Option(None, help="Comma-separated agent specs for seats 1.. (random, "
                                                "mcts:50, llm:iter-2); default: self-play."),
        seed: Optional[int] = typer.Option(None, help="Run seed (default: 0)."),
        concurrency: Optional[int] = typer.Option(None, help="Games in flight (default: 8)."),
        max_tokens: Optional[int] = typer.Option(None, help="Longest reply in a strategic game (default: 48)."),
        lr: Optional[float] = typer.Option(None, help="Learning rate (default: 1e-3)."),
        rank: Optional[int] = typer.Option(None, help="LoRA rank (default: 8)."),
        policy_weights: Optional[str] = typer.Option(None, help="How the server samples the policy: lora, merged "
                                                     "(into the base weights, base-model speed) or auto (default: "
                                                     "auto, merged where possible on a CPU)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last completed "
                                    "iteration (its saved config is used; --iterations may extend it)."),
    ) -> None:
        """Self-play training: roll out, compute advantages (or MARO labels), update the LoRA adapter, hot-load
        it into vLLM, repeat."""
        import yaml

        from stratagem.training.loop import RunConfig, run_training
        from stratagem.training.run_store import RunStore

        try:
            if resume:
                cfg = RunConfig.from_dict(RunStore(out).read_config())
            else:
                raw = yaml.safe_load(config.read_text(encoding="utf-8")) if config else {}
                if raw is not None and not isinstance(raw, dict):
                    raise ValueError(f"--config {config}: expected a mapping of sections, got {type(raw).__name__}")
                cfg = RunConfig.from_dict(raw or {})
            given = {"algo": algo, "games": _split(games), "iterations": iterations, "model": model,
                     "episodes_per_iteration": episodes_per_iteration, "base_url": base_url,
                     "opponents": _split(opponents), "seed": seed, "concurrency": concurrency,
                     "max_tokens": max_tokens, "policy_weights": policy_weights}
            if resume:
                extra = [k for k, v in given.items() if v is not None and k not in ("iterations", "base_url")]
                if extra or lr is not None or rank is not None:
                    raise ValueError("--resume continues the saved configuration; only --iterations and --base-url "
                                     f"may be given with it (got {', '.join(extra) or 'trainer options'})")
            for k, v in given.items():
                if v is not None:
                    setattr(cfg.loop, k, v)
            if lr is not None:
                cfg.trainer.lr = lr
            if rank is not None:
                cfg.trainer.rank = rank
            cfg.validate()
            store = run_training(cfg, out, resume=resume)
        except (ValueError, FileExistsError, FileNotFoundError) as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2)
        typer.echo(f"{store.completed_iterations()} iterations done; adapters in {store.adapters_dir}; "
                   f"plots: stratagem report {out}")

    @app.command()
    def report(run_dir: Path = typer.Argument(..., help="A run directory written by `stratagem train`.")) -> None:
        """Write PNG plots of a run's metrics to RUN_DIR/plots/."""
        from stratagem.training.report import write_report

        try:
            paths = write_report(run_dir)
        except (ValueError, FileNotFoundError) as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2)
        for p in paths:
            typer.echo(str(p))
