"""A small HTTP/1.1 streaming client for the per-token hops (API → worker, bench → API).

Why not httpx here: streaming one small chunk per token through httpx costs ~100 µs of CPU per chunk
(h11 parsing in Python, anyio cancel scopes around every read), measured at 32 concurrent streams on
this 2-core machine, which is CPU the engine then lacks. This client is an ``asyncio.Protocol`` fed
by httptools' C parser (already installed with uvicorn[standard]): a chunk costs a few µs. It does
only what those hops need: POST a body, stream the response body back in whatever pieces the
network delivers, keep-alive connections in a pool, connect and read timeouts.

Closing a stream before its end closes the connection (never returned to the pool), which is how a
client disconnect reaches the worker and aborts the generation there.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools


class UpstreamError(OSError):
    """The peer could not be reached, timed out, or broke the connection."""


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.closed = False
        self.error: BaseException | None = None
        self.keep_alive = True
        self.body: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamError(f"malformed HTTP response: {exc}")
            self._close()
        if len(self.body) > 256 and not self.paused and self.transport is not None:
            self.paused = True  # the reader is far behind: let TCP push back on the worker
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            self.error = UpstreamError(f"connection closed by the peer{f': {exc}' if exc else ''}")
        self._wake()

    # -- httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # -- helpers
    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def wait(self, timeout: float) -> None:
        """Until something happens (data, end, error) or ``timeout`` seconds pass (UpstreamError)."""
        self.waiter = self.loop.create_future()
        handle = self.loop.call_later(timeout, self._timed_out, self.waiter)
        try:
            await self.waiter
        finally:
            handle.cancel()
            self.waiter = None

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamError("timed out waiting for the peer"))

    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers_done = self.complete = False
        self.body.clear()


class Response:
    """The status of one response and an iterator over its body pieces."""

    def __init__(self, pool: StreamingClient, key: tuple[str, int, bool], conn: _Connection, timeout: float) -> None:
        self._pool = pool
        self._key = key
        self._conn = conn
        self._timeout = timeout
        self.status = conn.status
        self._done = False

    async def iter_raw(self) -> AsyncIterator[bytes]:
        conn = self._conn
        try:
            while True:
                if conn.body:
                    data = b"".join(conn.body)
                    conn.body.clear()
                    if conn.paused and conn.transport is not None:
                        conn.paused = False
                        conn.transport.resume_reading()
                    yield data
                    continue
                if conn.complete:
                    self._done = True
                    return
                if conn.error is not None:
                    raise conn.error
                await conn.wait(self._timeout)
        finally:
            self.close()

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_raw()])

    def close(self) -> None:
        """Back to the pool when the body was read to its end; else the connection is closed."""
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is None:
            return
        if self._done and conn.keep_alive and not conn.closed and not conn.paused:
            conn.reset()
            self._pool._release(self._key, conn)
        else:
            conn._close()


class StreamingClient:
    """``post_stream(url, body)`` → :class:`Response`; connections kept alive per host."""

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 300.0, max_idle: int = 512) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}

    async def _connect(self, key: tuple[str, int, bool]) -> _Connection:
        host, port, tls = key
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), host, port, ssl=True if tls else None),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamError(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        return conn

    def _release(self, key: tuple[str, int, bool], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn._close()

    async def post(self, url: str, body: bytes, *, content_type: str = "application/json",
                   headers: dict[str, str] | None = None) -> Response:
        """Send the request and wait for the status line and headers (not the body)."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        key = (parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80), tls)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n").encode("latin-1")
        idle = self._idle.get(key) or []
        while idle and (idle[-1].closed or idle[-1].transport is None):
            idle.pop()  # closed by the server while idle
        for reused in ([True] if idle else []) + [False]:
            conn = idle.pop() if reused else await self._connect(key)
            conn.transport.write(head + body)  # type: ignore[union-attr]
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(self.read_timeout)
            except BaseException as exc:
                peer_closed = conn.closed
                conn._close()
                # a kept-alive connection the server closed just now: once more on a fresh one
                if reused and peer_closed and isinstance(exc, UpstreamError):
                    continue
                raise
            return Response(self, key, conn, self.read_timeout)
        raise UpstreamError(f"cannot send to {key[0]}:{key[1]}")  # not reached

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn._close()
        self._idle.clear()
