"""Many OpenAI-compatible endpoints used as one: games spread by load, a dead endpoint's games moved to the others.

A rollout or an evaluation names its endpoints as a list of base URLs (`--base-url` repeated, comma-separated, or a
file with one URL per line; see `parse_endpoints`). `EndpointPool.run(n, play_one)` plays n games, at most
`concurrency` at once; each game starts on the live endpoint with the fewest games in flight (ties: the one that
started the fewest, then list order), so a faster server, which finishes sooner, gets more games. When a game fails,
its endpoint is probed (GET /v1/models): if the endpoint is down it is marked dead and the game is played again
from its start on another endpoint (a game is only ever kept whole: `play_one` builds a fresh game each call and
only a finished game reaches `on_result`); if it is up, the failure was transient and the game is retried (at most
`retries` times) or, for an error that is not a server error, raised. When no endpoint is left, `NoEndpointsLeft`.

`stratagem.integrations.servers.install_adapter` puts an adapter on every endpoint of a pool and verifies each;
an endpoint that went down is skipped and one that came back gets the adapter again and rejoins.

The pool is generic: `play_one(url, i)` may play a strategic game, a murder mystery (`collect_mystery_episodes`
with n=1 and seed + i), or answer one benchmark question.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai

log = logging.getLogger(__name__)
T = TypeVar("T")


class EndpointError(RuntimeError):
    """Bad endpoint list, or endpoints that cannot do the work."""


class NoEndpointsLeft(EndpointError):
    """Every endpoint is down."""


# what a failing or restarting server raises; anything else is a bug and propagates at once
SERVER_ERRORS: tuple[type[BaseException], ...] = (openai.APIConnectionError, openai.APITimeoutError,
                                                  openai.InternalServerError, httpx.HTTPError)


class RetriesExhausted(RuntimeError):
    """Work (a game, a question) that met a server error on every one of its tries."""


# what a game's failure may mean about its endpoint: probe it, move the game if the endpoint is down
_RETRIABLE: tuple[type[BaseException], ...] = (*SERVER_ERRORS, RetriesExhausted)


def parse_endpoints(spec: str | Sequence[str] | None) -> list[str]:
    """Base URLs from `spec`: one string or a list of them; each is a URL (http:// or https://), a
    comma-separated list of URLs, or the path of a file with one URL per line (blank lines and # comments
    skipped). Trailing slashes are dropped; a repeated URL or anything else is an error naming it."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []

    def add(u: str, where: str) -> None:
        u = u.strip().rstrip("/")
        if not u:
            return
        if not u.startswith(("http://", "https://")):
            raise EndpointError(f"{where}: {u!r} is not an http(s) base URL (e.g. http://127.0.0.1:8000/v1)")
        if u in urls:
            raise EndpointError(f"{where}: endpoint {u} is listed twice")
        urls.append(u)

    for item in items:
        for piece in str(item).split(","):
            piece = piece.strip()
            if not piece:
                continue
            if piece.startswith(("http://", "https://")):
                add(piece, "--base-url")
                continue
            path = Path(piece[1:] if piece.startswith("@") else piece).expanduser()
            if not path.is_file():
                raise EndpointError(f"--base-url: {piece!r} is neither an http(s) URL nor a file of URLs")
            for n, line in enumerate(path.read_text().splitlines(), 1):
                line = line.split("#", 1)[0]
                if line.strip():
                    add(line, f"{path}:{n}")
    return urls


@dataclass
class Endpoint:
    url: str
    index: int
    in_flight: int = 0
    started: int = 0
    finished: int = 0
    failed: int = 0
    alive: bool = True
    note: str = ""

    @property
    def root_url(self) -> str:
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url


@dataclass
class PoolStats:
    moved: int = 0  # games replayed elsewhere because their endpoint died
    retried: int = 0  # games retried after a transient error on a live endpoint
    per_endpoint: dict[str, int] = field(default_factory=dict)  # finished games per endpoint


class EndpointPool:
    """Endpoints with their load; see the module docstring."""

    def __init__(self, urls: Iterable[str], *, api_key: str | None = None, health_timeout: float = 5.0):
        self.endpoints = [Endpoint(u, i) for i, u in enumerate(urls)]
        if not self.endpoints:
            raise EndpointError("no endpoints given")
        self.api_key = api_key
        self.health_timeout = health_timeout
        self.retry_delay = 1.0  # seconds before the first retry of a game after a transient error; doubles after
        self.stats = PoolStats()

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def alive(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.alive]

    def pick(self) -> Endpoint:
        """The live endpoint with the fewest games in flight (then fewest started, then list order)."""
        live = self.alive()
        if not live:
            raise NoEndpointsLeft("every endpoint is down: " + "; ".join(f"{e.url} ({e.note})" for e in self.endpoints))
        return min(live, key=lambda e: (e.in_flight, e.started, e.index))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def healthy(self, ep: Endpoint) -> bool:
        """Whether the endpoint answers GET /models (any OpenAI-compatible server does)."""
        try:
            async with httpx.AsyncClient(timeout=self.health_timeout) as client:
                r = await client.get(ep.url + "/models", headers=self._headers())
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def healthy_sync(self, ep: Endpoint) -> bool:
        try:
            return httpx.get(ep.url + "/models", headers=self._headers(), timeout=self.health_timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def mark_dead(self, ep: Endpoint, reason: str) -> None:
        if ep.alive:
            log.warning("endpoint %s is down (%s); its games move to the other endpoints", ep.url, reason)
        ep.alive, ep.note = False, reason

    async def run(self, n: int, play_one: Callable[[str, int], Awaitable[T]], *, concurrency: int = 8,
                  retries: int = 2, on_result: Callable[[T, str], Any] | None = None) -> list[T]:
        """Play games 0..n-1 (`play_one(url, i)` plays game i whole on the endpoint `url`), at most `concurrency` at
        once; returns the results in game order. `on_result(result, url)` is called as each game finishes."""
        if n < 0 or concurrency < 1:
            raise ValueError(f"EndpointPool.run: need n >= 0 and concurrency >= 1, got n={n}, concurrency={concurrency}")
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> T:
            attempts = 0
            async with sem:
                while True:
                    ep = self.pick()
                    ep.in_flight += 1
                    ep.started += 1
                    try:
                        result = await play_one(ep.url, i)
                    except Exception as e:  # noqa: BLE001  sorted below: dead endpoint, transient, or a bug
                        ep.failed += 1
                        if not await self.healthy(ep):
                            self.mark_dead(ep, f"{type(e).__name__}: {str(e)[:200]}")
                            self.stats.moved += 1
                            continue  # replay game i from its start elsewhere (pick raises when none is left)
                        if not isinstance(e, _RETRIABLE) or attempts >= retries:
                            raise
                        attempts += 1
                        self.stats.retried += 1
                        await asyncio.sleep(min(self.retry_delay * 2.0 ** attempts, 10.0))
                        continue
                    finally:
                        ep.in_flight -= 1
                    ep.finished += 1
                    self.stats.per_endpoint[ep.url] = self.stats.per_endpoint.get(ep.url, 0) + 1
                    if on_result is not None:
                        on_result(result, ep.url)
                    return result

        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


# ---- request-level routing (evaluation) ----------------------------------------------------------------------------

_SHARED: dict[tuple[str, ...], EndpointPool] = {}


def shared_pool(urls: Sequence[str], api_key: str | None = None) -> EndpointPool:
    """One pool (one set of load counts and dead marks) per endpoint list in this process, shared by every agent
    that talks to the same endpoints."""
    key = tuple(urls)
    if key not in _SHARED:
        _SHARED[key] = EndpointPool(urls, api_key=api_key)
    return _SHARED[key]


class _Completions:
    def __init__(self, owner: RoutedClient):
        self._owner = owner

    async def create(self, **kw: Any) -> Any:
        return await self._owner._create(**kw)


class _Chat:
    def __init__(self, owner: RoutedClient):
        self.completions = _Completions(owner)


class RoutedClient:
    """What `openai.AsyncOpenAI` offers an agent (`chat.completions.create`, `close`), over several endpoints: each
    request goes to the live endpoint with the fewest requests in flight; a request that failed because its endpoint
    is down is sent again, whole, to another. Used for evaluation (`stratagem eval ... --base-url A --base-url B`),
    where consecutive turns of one game may be answered by different endpoints serving the same models; training
    moves whole games instead (`EndpointPool.run`), so that an episode's turns all come from one server."""

    def __init__(self, urls: Sequence[str], *, api_key: str | None = None, timeout: float = 600.0,
                 max_retries: int = 2):
        self.pool = shared_pool(list(urls), api_key if api_key not in (None, "EMPTY") else None)
        self._clients = {u: openai.AsyncOpenAI(base_url=u, api_key=api_key or "EMPTY", timeout=timeout,
                                               max_retries=max_retries) for u in self.pool.urls}
        self.chat = _Chat(self)

    async def _create(self, **kw: Any) -> Any:
        while True:
            ep = self.pool.pick()
            ep.in_flight += 1
            ep.started += 1
            try:
                resp = await self._clients[ep.url].chat.completions.create(**kw)
            except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError) as e:
                if await self.pool.healthy(ep):
                    raise
                self.pool.mark_dead(ep, f"{type(e).__name__}: {str(e)[:200]}")
                self.pool.stats.moved += 1
                continue
            finally:
                ep.in_flight -= 1
            ep.finished += 1
            self.pool.stats.per_endpoint[ep.url] = self.pool.stats.per_endpoint.get(ep.url, 0) + 1
            return resp

    async def close(self) -> None:
        for c in self._clients.values():
            await c.close()
