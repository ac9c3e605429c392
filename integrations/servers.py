"""Several attached vLLM servers as the training loop's one server (`EndpointGroup`), and putting an adapter on
every endpoint of a pool (`install_adapter`).

The adapter path is read by each server from its own filesystem: on a shared filesystem (NFS, a cluster's shared
home) the trainer's path is enough; otherwise copy the adapter directory to the same path on every server host before
it is installed (the `sync` hook, e.g. `rsync -a {path}/ HOST:{path}/`), or give the servers a path they can all read.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any, Sequence

import httpx

from stratagem.endpoints import EndpointError, EndpointPool, NoEndpointsLeft
from stratagem.integrations.vllm_server import AdapterVerificationError, ServerError, VLLMServer

log = logging.getLogger(__name__)


def install_adapter(pool: EndpointPool, servers: Sequence[Any], name: str, path: str | os.PathLike, *,
                    sync: str | None = None, verify: bool = True) -> dict[str, Any]:
    """Load adapter `name` from `path` on every endpoint of `pool` (`servers[i]` is a VLLMServer for endpoint i, attached
    or owned) and verify each. A dead endpoint is probed first and skipped while it stays down; a revived one
    gets the adapter and rejoins. `sync` is a shell command run once per endpoint before loading, with {path},
    {url} and {host} filled in (copy the adapter to a server without the shared filesystem). Returns the
    largest verification gaps over the endpoints and how many endpoints serve the adapter; raises when none
    does, or when a live endpoint serves something else (AdapterVerificationError)."""
    from stratagem.integrations.vllm_server import AdapterVerificationError, ServerError

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


class EndpointGroup:
    """Several endpoints as the training loop's server: `alive()` while any endpoint answers, `install(name, path)`
    puts an adapter on every live endpoint and verifies it there. The servers are attached (started elsewhere,
    e.g. `stratagem serve` on each GPU or node); they must serve the same base model as `base` with runtime LoRA
    loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""

    def __init__(self, urls: Sequence[str], model_path: str | None = None, *, api_key: str | None = None,
                 sync: str | None = None):
        self.pool = EndpointPool(urls, api_key=api_key)
        self.servers = [VLLMServer.attach(u, model_path=model_path, api_key=api_key) for u in self.pool.urls]
        self.sync = sync
        self._owned = False

    @property
    def base_url(self) -> str:
        """One live endpoint (the first), for work that needs a single URL (e.g. the run's before/after evaluation)."""
        live = self.pool.alive()
        return (live[0] if live else self.pool.endpoints[0]).url

    def alive(self) -> bool:
        return any(self.pool.healthy_sync(e) for e in self.pool.endpoints)

    def install(self, name: str, path: str | os.PathLike) -> dict[str, Any]:
        return install_adapter(self.pool, self.servers, name, path, sync=self.sync)

    def stop(self) -> None:  # attached servers belong to whoever started them
        return None
