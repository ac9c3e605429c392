"""What the training loop needs of the servers that sample its policy, as one protocol (`Serving`), with its three
implementations, chosen once before the loop (`open_serving`):

- `OwnedServer`: a vLLM server this run started: it may be restarted after a crash, put to sleep while the trainer
  has the GPU, stopped at the end, and (when started with weight reloading) serve the merged policy;
- `AttachedServer`: one server started elsewhere (`--base-url`): used, never restarted or stopped;
- `EndpointGroup`: several attached servers; an adapter goes to every live endpoint, games are spread over them.

Also `install_adapter`: an adapter onto every endpoint of a pool, verified on each.

The adapter path is read by each server from its own filesystem: on a shared filesystem (NFS, a cluster's shared
home) the trainer's path is enough; otherwise copy the adapter directory to the same path on every server host before
it is installed (the `sync` hook, e.g. `rsync -a {path}/ HOST:{path}/`), or give the servers a path they can all read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from stratagem.endpoints import EndpointError, EndpointPool, NoEndpointsLeft, parse_endpoints
from stratagem.integrations.vllm_server import AdapterVerificationError, ServerConfig, ServerError, VLLMServer

log = logging.getLogger(__name__)


def install_adapter(pool: EndpointPool, servers: Sequence[Any], name: str, path: str | os.PathLike, *,
                    sync: str | None = None, verify: bool = True) -> dict[str, Any]:
    """Load adapter `name` from `path` on every endpoint of `pool` (`servers[i]` is a VLLMServer for endpoint i, attached
    or owned) and verify each. A dead endpoint is probed first and skipped while it stays down; a revived one
    gets the adapter and rejoins. `sync` is a shell command run once per endpoint before loading, with {path},
    {url} and {host} filled in (copy the adapter to a server without the shared filesystem). Returns the
    largest verification gaps over the endpoints and how many endpoints serve the adapter; raises when none
    does, or when a live endpoint serves something else (AdapterVerificationError)."""

    if len(servers) != len(pool.endpoints):
        raise EndpointError(f"install_adapter: {len(servers)} servers for {len(pool.endpoints)} endpoints")
    checks: list[dict[str, Any]] = []
    for ep, srv in zip(pool.endpoints, servers):
        if not pool.healthy_sync(ep):
            pool.mark_dead(ep, "down when adapter " + name + " was installed")
            continue
        try:
            if sync:
                run_sync(sync, str(Path(path).resolve()), ep.url)
            srv.load_adapter(name, path, replace=True)
            check = srv.verify_adapter(name, path) if verify else {}
        except AdapterVerificationError:
            raise
        except (ServerError, httpx.HTTPError) as e:
            if pool.healthy_sync(ep):
                raise
            pool.mark_dead(ep, f"died while adapter {name} was installed: {e}")
            continue
        if not ep.alive:
            log.warning("endpoint %s is back and serves %s again", ep.url, name)
        ep.alive, ep.note = True, ""
        checks.append(check or {})
    if not checks:
        raise NoEndpointsLeft(f"adapter {name} reached no endpoint: every endpoint is down ("
                              + "; ".join(f"{e.url}: {e.note}" for e in pool.endpoints) + ")")
    out: dict[str, Any] = {"endpoints": float(len(checks))}
    for key in ("mean_abs_diff", "max_abs_diff"):
        vals = [c[key] for c in checks if key in c]
        if vals:
            out[key] = max(vals)
    return out


def run_sync(template: str, path: str, url: str) -> None:
    """Run the adapter sync command for one endpoint ({path}, {url}, {host} substituted, shell-quoted)."""
    host = httpx.URL(url).host
    cmd = template.format(path=shlex.quote(path), url=shlex.quote(url), host=shlex.quote(host))
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if r.returncode != 0:
        raise EndpointError(f"adapter sync for {url} failed (exit {r.returncode}): {cmd}\n{r.stderr[-1000:]}")


class Serving:
    """The servers a training run samples from. `install(name, path, merged=...)` puts policy `name` (a LoRA adapter
    directory) on them and verifies that they sample it: as an adapter named `name`, or, with `merged`, merged
    into the weights served as `base` (only where `can_reload`). `restart()` brings a crashed server back with its
    base weights (only where `can_restart`); `sleep()` / `wake()` hand the GPU to the trainer and back (no-ops
    where the engine has no sleep mode); `stop()` ends what the run started."""

    pool: EndpointPool | None = None  # several endpoints: the rollout spreads its games over them
    can_restart = False
    can_reload = False

    @property
    def base_url(self) -> str:  # one endpoint, for work that needs a single URL (the before/after evaluation)
        return self.base_urls[0]

    @property
    def base_urls(self) -> list[str]:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def install(self, name: str, path: str | os.PathLike, *, merged: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def restart(self) -> None:
        raise ServerError(f"{self.base_url}: this run did not start the server, so it cannot restart it")

    def sleep(self) -> None:
        return None

    def wake(self) -> None:
        return None

    def stop(self) -> None:
        return None


class AttachedServer(Serving):
    """One server started elsewhere (a `VLLMServer.attach`, or any object with its methods: tests)."""

    def __init__(self, server: Any):
        self.server = server

    @property
    def base_urls(self) -> list[str]:
        return [self.server.base_url]

    def alive(self) -> bool:
        return bool(self.server.alive())

    def install(self, name: str, path: str | os.PathLike, *, merged: bool = False) -> dict[str, Any]:
        if merged:
            if not self.can_reload:
                raise ServerError(f"{self.base_url} cannot reload its weights: a merged policy needs a server "
                                  "this run starts with weight_reload")
            return self.server.load_policy_weights(path, name)
        served = self.server.load_adapter(name, path, replace=True)
        return self.server.verify_adapter(served, path) or {}


class OwnedServer(AttachedServer):
    """A server this run manages. `stops`: the run started it here, so it also stops it (and puts it to sleep
    while the trainer updates, when its engine has sleep mode); a caller's server is left running."""

    can_restart = True

    def __init__(self, server: Any, *, stops: bool):
        super().__init__(server)
        self.stops = stops
        self.can_reload = bool(getattr(server.config, "weight_reload", False))
        self.sleeps = stops and bool(getattr(server, "sleep_enabled", False))

    def restart(self) -> None:
        self.server.restart()  # back to the base weights, no adapters

    def sleep(self) -> None:
        if self.sleeps:
            self.server.sleep()

    def wake(self) -> None:
        if self.sleeps:
            import torch  # deferred: only a GPU run with sleep mode gets here

            torch.cuda.empty_cache()  # hand the trainer's cached blocks back before the engine reclaims its share
            self.server.wake_up()

    def stop(self) -> None:
        if self.stops:
            self.server.stop()


class EndpointGroup(Serving):
    """Several endpoints as the training loop's server: `alive()` while any endpoint answers, `install(name, path)`
    puts an adapter on every live endpoint and verifies it there. The servers are attached (started elsewhere,
    e.g. `stratagem serve` on each GPU or node); they must serve the same base model as `base` with runtime LoRA
    loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""

    def __init__(self, urls: Sequence[str], model_path: str | None = None, *, api_key: str | None = None,
                 sync: str | None = None):
        self.pool: EndpointPool = EndpointPool(urls, api_key=api_key)
        self.servers = [VLLMServer.attach(u, model_path=model_path, api_key=api_key) for u in self.pool.urls]
        self.sync = sync

    @property
    def base_url(self) -> str:
        """One live endpoint (the first), for work that needs a single URL (e.g. the run's before/after evaluation)."""
        live = self.pool.alive()
        return (live[0] if live else self.pool.endpoints[0]).url

    @property
    def base_urls(self) -> list[str]:
        return list(self.pool.urls)

    def alive(self) -> bool:
        return any(self.pool.healthy_sync(e) for e in self.pool.endpoints)

    def install(self, name: str, path: str | os.PathLike, *, merged: bool = False) -> dict[str, Any]:
        if merged:
            raise ServerError("a merged policy needs one server this run starts, not a group of endpoints")
        return install_adapter(self.pool, self.servers, name, path, sync=self.sync)


def open_serving(server: ServerConfig, base_url: str | None, model_path: str, *, lora_rank: int,
                 weight_reload: bool, on_cpu: bool) -> Serving:
    """The run's servers: the endpoints of `base_url` (several, or one with an adapter sync command: a group; one:
    attached), else a server started here from `server` (serving `model_path`, LoRA rank up to `lora_rank`, with
    weight reloading when `weight_reload`; on a GPU it shares the device with the trainer: the colocated memory
    share and sleep mode)."""
    urls = parse_endpoints(base_url)
    if len(urls) > 1 or (urls and server.adapter_sync):
        return EndpointGroup(urls, model_path=model_path, api_key=server.api_key, sync=server.adapter_sync)
    if urls:
        return AttachedServer(VLLMServer.attach(urls[0], model_path=model_path, api_key=server.api_key))
    cfg = dataclasses.replace(server, model=model_path, adapters=dict(server.adapters),
                              extra_args=list(server.extra_args), max_lora_rank=max(server.max_lora_rank, lora_rank),
                              weight_reload=server.weight_reload or weight_reload,
                              colocated=server.colocated or not on_cpu)
    return OwnedServer(VLLMServer(cfg).start(), stops=True)


def as_serving(server: Any) -> Serving:
    """A caller's server as the protocol: a Serving as it is, a server the caller started (`owned`) as one this
    run may restart but leaves running, any other as attached."""
    if isinstance(server, Serving):
        return server
    return OwnedServer(server, stops=False) if getattr(server, "owned", False) else AttachedServer(server)
