"""Run one concurrency level against a target: a fixed number of requests, or a fixed duration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fleetchat.bench.stats import LevelResult, RequestRecord, summarise

SendOne = Callable[[int], Awaitable[RequestRecord]]


async def run_level(send_one: SendOne, concurrency: int, *, requests: int | None = None,
                    duration: float | None = None) -> LevelResult:
    """Keep ``concurrency`` requests in flight until ``requests`` were sent or ``duration`` passed.

    With ``duration``, requests in flight at the deadline run to their end and count; throughput is
    tokens over the whole wall time, so a long tail lowers it honestly rather than being cut off.
    """
    if (requests is None) == (duration is None):
        raise ValueError("give exactly one of requests or duration")
    records: list[RequestRecord] = []
    counter = 0
    start = time.perf_counter()

    def take() -> int | None:
        nonlocal counter
        if requests is not None and counter >= requests:
            return None
        if duration is not None and time.perf_counter() - start >= duration:
            return None
        counter += 1
        return counter - 1

    async def lane() -> None:
        while (i := take()) is not None:
            records.append(await send_one(i))

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return summarise(concurrency, records, time.perf_counter() - start)
