"""A streaming response that aborts its generator when the client goes away.

Starlette's StreamingResponse notices a disconnect only when the next ``send`` fails (ASGI spec 2.4)
and leaves the body iterator to the garbage collector. Here a watcher task waits for
``http.disconnect`` alongside the pump; whichever ends first cancels the other, and the body iterator
is always closed (which aborts the engine request) and ``on_close`` always runs (which frees the
worker's admission slot), even if the body never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger("fleetchat.worker")


class AbortingStreamingResponse(StreamingResponse):
    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        media_type: str,
        on_close: Callable[[], None] | None = None,
        status_code: int = 200,
    ) -> None:
        super().__init__(body, status_code=status_code, media_type=media_type)
        self._body = body
        self._on_close = on_close
        self.disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self._body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.disconnected = True
                    return

        pump_task = asyncio.ensure_future(pump())
        watch_task = asyncio.ensure_future(watch())
        finished = False
        try:
            await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
            finished = pump_task.done() and not pump_task.cancelled() and pump_task.exception() is None
            if pump_task.done() and not pump_task.cancelled() and pump_task.exception() is not None:
                log.error("stream failed: %r", pump_task.exception())
        finally:
            for task in (pump_task, watch_task):
                task.cancel()
            for task in (pump_task, watch_task):
                with contextlib.suppress(asyncio.CancelledError, OSError, Exception):
                    await task
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            if self._on_close is not None:
                self._on_close()
        if not finished and self.disconnected:
            log.info("client disconnected before the stream ended: request aborted")
