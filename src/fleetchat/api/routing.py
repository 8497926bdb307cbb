"""Pick a worker through the controller and stream from it, retrying elsewhere before the first token.

:class:`WorkerRouter` is the API server's only way to reach models. It holds the shared clients:
:class:`~fleetchat.api.upstream.StreamingClient` for the per-token worker streams (a few µs per
chunk where httpx costs ~100), and an ``httpx.AsyncClient`` with a large pool for embeddings (httpx's
default of 100 connections serialised load in FastChat, issue #2256), plus the controller client.

A generation goes to ``POST {worker}/v1/generate`` and comes back as ndjson
:class:`~fleetchat.protocol.generation.GenerationChunk` lines, parsed with orjson into plain dicts
(no pydantic per token) and handed on in lists, one list per network read. If the chosen worker fails before its first chunk (connection refused, a
5xx, overloaded, or the model is no longer there), the router asks the controller for another worker
of the same model, excluding those that failed, up to ``retries`` more times. After the first chunk an
error is raised to the caller, which turns it into an SSE error event. Closing the iterator closes
the upstream HTTP stream, which makes the worker abort the generation.

A worker without ``/v1/generate`` (a FastChat worker: its 404 is "no such route", not our "no such
model") is remembered as one and served through :class:`~fleetchat.api.fastchat_upstream.FastChatUpstream`
from then on, behind the same retry loop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import httpx
import orjson

from fleetchat.api.fastchat_upstream import FastChatUpstream, speaks_fastchat
from fleetchat.api.upstream import StreamingClient, UpstreamError
from fleetchat.errors import (
    FleetchatError,
    ModelNotFoundError,
    NoWorkerAvailableError,
    WorkerError,
    error_from_body,
)
from fleetchat.protocol.generation import GenerateRequest


class Controller(Protocol):
    """What the router needs of :class:`fleetchat.controller.client.ControllerClient`."""

    async def list_models(self) -> list[str]: ...

    async def get_worker_address(self, model: str) -> str: ...

    async def workers(self) -> list[dict[str, Any]]: ...


def _retryable(err: FleetchatError) -> bool:
    # 5xx: the worker broke; 429: it is full; 404: it dropped the model since the controller last heard
    return err.status >= 500 or err.status in (404, 429)


def _worker_models(worker: dict[str, Any]) -> list[str]:
    models = worker.get("models") or worker.get("model_names") or []
    return [m if isinstance(m, str) else str(m.get("name", "")) for m in models]


def _worker_address(worker: dict[str, Any]) -> str:
    return str(worker.get("address") or worker.get("worker_address") or worker.get("name") or "")


def _queue(worker: dict[str, Any]) -> float:
    return float(worker.get("queue_length") or 0)


async def _error_from_response(resp: httpx.Response, address: str) -> FleetchatError:
    return _error_from_bytes(resp.status_code, await resp.aread(), address)


def _error_from_bytes(status: int, raw: bytes, address: str) -> FleetchatError:
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = raw.decode("utf-8", errors="replace")[:500]
    err = error_from_body(status, body)
    if isinstance(err, WorkerError) and address not in err.message:
        err = WorkerError(f"worker {address}: {err.message}")
    return err


class WorkerRouter:
    def __init__(
        self,
        controller: Controller,
        http: httpx.AsyncClient,
        streams: StreamingClient | None = None,
        *,
        retries: int = 2,
        model_list_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.controller = controller
        self.http = http
        self.streams = streams or StreamingClient()
        self.retries = retries
        self.model_list_ttl = model_list_ttl
        self._clock = clock
        self._models: list[str] = []
        self._models_at = float("-inf")
        self.fastchat = FastChatUpstream(http, self.streams)
        self._fastchat_workers: dict[str, bool] = {}  # address -> speaks FastChat's protocol only

    # ------------------------------------------------------------------ models

    async def list_models(self, *, fresh: bool = False) -> list[str]:
        """The controller's model list, cached for ``model_list_ttl`` seconds (never a refresh-all)."""
        if fresh or self._clock() - self._models_at > self.model_list_ttl:
            self._models = sorted(set(await self.controller.list_models()))
            self._models_at = self._clock()
        return self._models

    async def _no_worker(self, model: str) -> FleetchatError:
        models = await self.list_models(fresh=True)
        if model not in models:
            served = ", ".join(models) if models else "none (no worker has registered yet)"
            return ModelNotFoundError(
                f"the model {model!r} does not exist; served models: {served}", param="model"
            )
        return NoWorkerAvailableError(f"no worker is available for model {model!r} right now; try again")

    async def pick(self, model: str, exclude: tuple[str, ...] = ()) -> str:
        """A worker address for ``model`` not in ``exclude``; "" when there is none."""
        address = await self.controller.get_worker_address(model)
        if address and address not in exclude:
            return address
        if not exclude:
            return ""
        # the controller's dispatch may hand back the worker that just failed: choose among the rest
        candidates = [
            w for w in await self.controller.workers()
            if model in _worker_models(w) and _worker_address(w) not in exclude
        ]
        if not candidates:
            return ""
        return _worker_address(min(candidates, key=_queue))

    # ------------------------------------------------------------------ generation

    async def generate(self, request: GenerateRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """Stream GenerationChunk dicts for ``request`` from some worker serving ``request.model``.

        Chunks come in lists, one per network read: when the reader falls behind, several chunks
        travel on as one SSE write instead of one write each, so the proxy's cost per token falls as
        load rises.
        """
        model = request.model or ""
        body = request.model_dump_json(exclude_defaults=False).encode()
        failed: list[str] = []
        last: FleetchatError | None = None
        for _ in range(self.retries + 1):
            address = await self.pick(model, tuple(failed))
            if not address:
                break
            started = False
            stream = self._stream(address, request, body)
            try:
                async for batch in stream:
                    started = True
                    yield batch
                return
            except UpstreamError as exc:
                self._forget(address)
                err: FleetchatError = WorkerError(f"worker {address} failed: {exc}")
            except orjson.JSONDecodeError as exc:
                err = WorkerError(f"worker {address} sent a malformed line: {exc}")
            except FleetchatError as exc:
                err = exc
            finally:
                await stream.aclose()  # before its end: closes the connection, so the worker aborts
            if started or not _retryable(err):
                raise err
            failed.append(address)
            last = err
        if last is not None:
            raise last
        raise await self._no_worker(model)

    async def _stream(self, address: str, request: GenerateRequest, body: bytes) -> AsyncIterator[list[dict[str, Any]]]:
        """One worker's chunks: fleetchat's typed ``/v1/generate``, or FastChat's protocol for a worker
        that has no such route (learnt from its first 404 and remembered per address)."""
        if self._fastchat_workers.get(address):
            async for batch in self.fastchat.generate(address, request):
                yield batch
            return
        resp = await self.streams.post(address + "/v1/generate", body)
        try:
            if resp.status != 200:
                raw = await resp.read()
                if speaks_fastchat(resp.status, raw):
                    self._fastchat_workers[address] = True
                    async for batch in self.fastchat.generate(address, request):
                        yield batch
                    return
                raise _error_from_bytes(resp.status, raw, address)
            self._fastchat_workers[address] = False
            buffer = b""
            async for data in resp.iter_raw():
                buffer += data
                if b"\n" not in buffer:
                    continue
                *lines, buffer = buffer.split(b"\n")
                batch = []
                for line in lines:
                    if not line.strip():
                        continue
                    chunk = orjson.loads(line)
                    if "error" in chunk:
                        if batch:
                            yield batch
                        raise error_from_body(500, chunk)
                    batch.append(chunk)
                if batch:
                    yield batch
            if buffer.strip():
                chunk = orjson.loads(buffer)
                if "error" in chunk:
                    raise error_from_body(500, chunk)
                yield [chunk]
        finally:
            resp.close()

    def _forget(self, address: str) -> None:
        # whatever answers at a failed address next (a restarted worker) may speak the other protocol
        self._fastchat_workers.pop(address, None)
        self.fastchat.forget(address)

    # ------------------------------------------------------------------ embeddings

    async def embed(self, model: str, texts: list[str]) -> dict[str, Any]:
        """EmbeddingResult dict ({"embeddings", "prompt_tokens"}) from a worker serving ``model``."""
        failed: list[str] = []
        last: FleetchatError | None = None
        for _ in range(self.retries + 1):
            address = await self.pick(model, tuple(failed))
            if not address:
                break
            try:
                if self._fastchat_workers.get(address):
                    return await self.fastchat.embed(address, model, texts)
                resp = await self.http.post(address + "/v1/embeddings", json={"model": model, "input": texts})
                if resp.status_code == 200:
                    return orjson.loads(resp.content)
                if speaks_fastchat(resp.status_code, resp.content):
                    self._fastchat_workers[address] = True
                    return await self.fastchat.embed(address, model, texts)
                err = await _error_from_response(resp, address)
            except FleetchatError as exc:
                err = exc
            except httpx.TransportError as exc:
                self._forget(address)
                err = WorkerError(f"worker {address} failed: {type(exc).__name__}: {exc or 'connection closed'}")
            except orjson.JSONDecodeError as exc:
                err = WorkerError(f"worker {address} sent malformed JSON: {exc}")
            if not _retryable(err):
                raise err
            failed.append(address)
            last = err
        if last is not None:
            raise last
        raise await self._no_worker(model)

    async def worker_status(self) -> list[dict[str, Any]]:
        """The controller's worker listing (for /metrics' queue gauges); [] when it cannot be read."""
        try:
            return list(await self.controller.workers())
        except FleetchatError:
            return []
