"""Helpers for in-process fleet tests: route httpx requests to ASGI apps by address, serve an app
on a real socket (for disconnect tests), and run an app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn


class RoutingTransport(httpx.AsyncBaseTransport):
    """Send each request to the ASGI app registered for its ``http://host:port``; requests to
    127.0.0.1 go over real sockets; any other address fails to connect."""

    def __init__(self, apps: dict[str, object] | None = None) -> None:
        self.apps: dict[str, object] = dict(apps or {})
        self._real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        app = self.apps.get(key)
        if app is None and request.url.host == "127.0.0.1":
            return await self._real.handle_async_request(request)
        if app is None:
            raise httpx.ConnectError(f"connection refused: {key}", request=request)
        return await httpx.ASGITransport(app=app).handle_async_request(request)


@contextlib.asynccontextmanager
async def lifespan(app) -> AsyncIterator[None]:
    async with app.router.lifespan_context(app):
        yield


@contextlib.asynccontextmanager
async def serve(app) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free 127.0.0.1 port in this event loop; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
