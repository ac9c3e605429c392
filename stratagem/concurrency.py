"""The one concurrent collector: run an async function over many items, at most `concurrency` at once (games of a
rollout, questions of an evaluation, judge prompts), so an OpenAI-compatible server's batching sees many requests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def map_concurrent(fn: Callable[[T], Awaitable[R]], items: Iterable[T], concurrency: int,
                         on_result: Callable[[R], Any] | None = None) -> list[R]:
    """`[await fn(x) for x in items]`, with at most `concurrency` calls in flight; the results come back in item
    order, and `on_result(r)` is called for each as it finishes (in finishing order: progress bars, appending to a
    file). The first exception cancels the calls still waiting and propagates."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    sem = asyncio.Semaphore(concurrency)

    async def one(x: T) -> R:
        async with sem:
            r = await fn(x)
        if on_result is not None:
            on_result(r)
        return r

    tasks = [asyncio.ensure_future(one(x)) for x in items]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()
