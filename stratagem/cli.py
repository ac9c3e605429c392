"""The `stratagem` command line. Each area registers its own commands (games: play; mystery: mystery;
training: train, report; integrations: eval); this file holds the foundation ones (model, serve)."""

from __future__ import annotations

import signal
import time

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
        raise typer.Exit(1) from None


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
    api_key: str | None = typer.Option(None, help="Require this API key."),
    max_lora_rank: int = typer.Option(16, help="Largest LoRA rank accepted."),
    dtype: str = typer.Option("auto", help="Engine dtype."),
    max_model_len: int = typer.Option(4096, min=0, help="Longest prompt + completion in tokens (vLLM --max-model-len; "
                                      "MARS's trajectory budget is 32768); 0: the model's own context length."),
    merged: bool = typer.Option(False, "--merged", help="Serve the one --adapter merged into the base weights "
                                "(verified against transformers + peft), at the base model's speed where vLLM's LoRA "
                                "path is slow (a CPU); it answers to its own name and, holding the same weights, "
                                "to base."),
) -> None:
    """Serve a model and its LoRA adapters with vLLM's OpenAI-compatible server (runtime adapter loading on)."""
    from stratagem.integrations.vllm_server import ServerConfig, ServerError, VLLMServer

    adapters = _parse_adapters(adapter)
    if merged and len(adapters) != 1:
        raise typer.BadParameter(f"--merged serves one adapter merged into the weights; got {len(adapters)}")
    cfg = ServerConfig(model=model, host=host, port=port, api_key=api_key, adapters={} if merged else adapters,
                       max_lora_rank=max_lora_rank, dtype=dtype, max_model_len=max_model_len or None,
                       weight_reload=merged, model_aliases=list(adapters) if merged else [])
    srv = VLLMServer(cfg)
    try:
        with srv:
            if merged:
                from stratagem.integrations.cli import policy_switch

                policy_switch(srv, adapters)(next(iter(adapters)))  # merged, verified, reported
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
        raise typer.Exit(1) from None


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


def unreachable_endpoint(exc: BaseException) -> tuple[str, str] | None:
    """(URL, what happened) when `exc`, or an exception it wraps (cause, context, exception group), is a failed
    connection to a model endpoint; None otherwise."""
    import httpx
    import openai

    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (openai.APIConnectionError, httpx.ConnectError, httpx.ConnectTimeout)):
            try:
                url = str(e.request.url)
            except (AttributeError, RuntimeError):
                url = "the model endpoint"
            for tail in ("/chat/completions", "/completions", "/models"):
                url = url[: -len(tail)] if url.endswith(tail) else url
            timed_out = isinstance(e, (openai.APITimeoutError, httpx.TimeoutException))
            return url, "it did not answer in time" if timed_out else "connection failed"
        stack += [e.__cause__, e.__context__] + list(getattr(e, "exceptions", ()))
    return None


def main() -> None:
    """The console script: logging to stderr (`STRATAGEM_LOG_LEVEL`, default INFO for stratagem's own loggers),
    and an unreachable model endpoint reported in one line instead of a traceback."""
    import logging
    import os
    import sys

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("stratagem").setLevel(os.environ.get("STRATAGEM_LOG_LEVEL", "INFO").upper())
    try:
        app()
    except Exception as e:  # noqa: BLE001  anything but an unreachable endpoint keeps its traceback
        found = unreachable_endpoint(e)
        if found is None:
            raise
        url, what = found
        sys.stderr.write(f"error: cannot reach the model endpoint {url} ({what}); start a server with "
                         "`stratagem serve` and pass its URL with --base-url (default 127.0.0.1:8000/v1), or leave "
                         "--base-url out to let the command start one\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
