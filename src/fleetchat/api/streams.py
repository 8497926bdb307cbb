"""Plumbing shared by the chat and text completion endpoints: fan-in of n choices, collection of a
whole answer, the SSE response that always closes its generator, and cancellation on disconnect.

A choice is one worker stream of GenerationChunk dicts, in lists (one per network read). ``n > 1`` runs its choices concurrently and
:func:`merge` interleaves their chunks tagged with the choice index. Closing any of these iterators
(the client went away) closes the worker streams under it, which makes the workers abort.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from fleetchat.protocol.sse import SSE_HEADERS, SSE_MEDIA_TYPE

T = TypeVar("T")
Chunk = dict[str, Any]
Batch = list[Chunk]  # the chunks of one network read

_DONE = object()


async def tagged(index: int, chunks: AsyncIterator[Batch]) -> AsyncIterator[tuple[int, Batch]]:
    try:
        async for chunk in chunks:
            yield index, chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def merge(streams: list[AsyncIterator[Batch]]) -> AsyncIterator[tuple[int, Batch]]:
    """Interleave several streams as they produce; the first error ends the merge and cancels the rest."""
    if len(streams) == 1:
        async for item in tagged(0, streams[0]):
            yield item
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Batch]) -> None:
        try:
            async for chunk in stream:
                queue.put_nowait((index, chunk, None))
            queue.put_nowait((index, _DONE, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((index, None, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, chunk, exc = await queue.get()
            if exc is not None:
                raise exc
            if chunk is _DONE:
                remaining -= 1
                continue
            yield index, chunk
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Collected:
    """One whole choice, as the non-streamed endpoints answer it."""

    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, chunk: Chunk) -> None:
        if chunk.get("text"):
            self.text.append(chunk["text"])
        if chunk.get("logprobs"):
            self.logprobs.extend(chunk["logprobs"])
        if chunk.get("finish_reason"):
            self.finish_reason = chunk["finish_reason"]
        self.prompt_tokens = chunk.get("prompt_tokens") or self.prompt_tokens
        self.completion_tokens = chunk.get("completion_tokens") or self.completion_tokens


async def until_disconnected(request: Request, work: Awaitable[T], poll: float = 0.5) -> T:
    """Await ``work``, cancelling it if the HTTP client goes away first (non-streamed requests)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise asyncio.CancelledError("client disconnected")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class EventStream(StreamingResponse):
    """SSE response that closes its generator however the response ends (client gone included),
    so the worker streams under it are closed at once rather than whenever the GC gets to them."""

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
        self._events = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()  # type: ignore[attr-defined]
