"""The `stratagem` command line. Each area registers its own commands (games: play; mystery: mystery;
training: train, report; integrations: eval); this file holds the foundation ones (model, serve)."""

from __future__ import annotations

import signal
import time
from typing import Optional

import typer

app = typer.Typer(name="stratagem", no_args_is_help=True, add_completion=False,
                  help="Self-play games that make language models better reasoners.")
model_app = typer.Typer(no_args_is_help=True, help="Models Stratagem can make locally.")
app.add_typer(model_app, name="model")


@model_app.command("fetch")
def model_fetch(name: str = typer.Argument("smollm2-135m-instruct", help="Registered model name.")) -> None:
    """Make a registered model available locally (once) and print its directory."""
    from stratagem.models import ModelFetchError, fetch

    try:
        typer.echo(str(fetch(name)))
    except ModelFetchError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1)


@model_app.command("list")
def model_list() -> None:
    """List registered models and whether they are fetched."""
    from stratagem.models import REGISTRY, _is_complete, model_dir

    for name, spec in REGISTRY.items():
        state = "fetched" if _is_complete(model_dir(name)) else "not fetched"
        typer.echo(f"{name}\t{state}\t{spec.description}")


def _parse_adapters(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise typer.BadParameter(f"--adapter expects NAME=PATH, got {it!r}")
        n, p = it.split("=", 1)
        out[n] = p
    return out


@app.command()
def serve(
    model: str = typer.Option("default", help="Registered name, local directory or hub id."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=PATH of a LoRA adapter to serve (repeatable)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    api_key: Optional[str] = typer.Option(None, help="Require this API key."),
    max_lora_rank: int = typer.Option(16, help="Largest LoRA rank accepted."),
    dtype: str = typer.Option("auto", help="Engine dtype."),
) -> None:
    """Serve a model and its LoRA adapters with vLLM's OpenAI-compatible server (runtime adapter loading on)."""
    from stratagem.integrations.vllm_server import ServerConfig, ServerError, VLLMServer

    cfg = ServerConfig(model=model, host=host, port=port, api_key=api_key, adapters=_parse_adapters(adapter),
                       max_lora_rank=max_lora_rank, dtype=dtype)
    srv = VLLMServer(cfg)
    try:
        with srv:
            typer.echo(f"serving {', '.join(srv.models())} at {srv.base_url} (log: {srv.log_path}); Ctrl-C stops")
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            while srv.alive():
                time.sleep(2)
            typer.secho(f"the server stopped; log tail:\n{srv.log_tail()}", fg="red", err=True)
            raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    except ServerError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1)


def _register_areas() -> None:
    import importlib

    for mod in ("stratagem.games.cli", "stratagem.games.mystery.cli", "stratagem.training.cli",
                "stratagem.integrations.cli"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.register(app)


_register_areas()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
