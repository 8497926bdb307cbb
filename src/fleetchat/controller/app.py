"""The controller app: FastChat's controller endpoints plus ``/health`` and ``/workers``.

State is one worker table (see :mod:`fleetchat.controller.registry`) owned by the app and replaced on
every change; the clock and the random source are injected so tests can drive them. A background task
sweeps expired workers. Status probes run concurrently with a timeout and never evict a busy worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from fleetchat.controller import dispatch, registry
from fleetchat.controller.settings import ControllerSettings
from fleetchat.errors import (
    NoWorkerAvailableError,
    PermissionDeniedError,
)
from fleetchat.http_errors import install_error_handlers
from fleetchat.protocol.fastchat import (
    GetWorkerAddressRequest,
    HeartbeatRequest,
    RegisterWorkerRequest,
    StreamItem,
    error_item,
)

log = logging.getLogger("fleetchat.controller")

SECRET_HEADER = "x-fleetchat-secret"


def presented_secret(request: Request) -> str | None:
    """The secret a worker sent: ``Authorization: Bearer S`` or ``X-Fleetchat-Secret: S``."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get(SECRET_HEADER)


class ControllerState:
    """The one owner of the worker table, plus the controller's clients and tasks."""

    def __init__(
        self,
        settings: ControllerSettings,
        clock: Callable[[], float],
        rng: random.Random,
        http_client: httpx.AsyncClient | None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.table: dict[str, registry.WorkerRecord] = {}
        self._http = http_client
        self._owns_http = http_client is None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.settings.probe_timeout)
        return self._http

    def check_secret(self, request: Request) -> None:
        expected = self.settings.controller_secret
        if not expected:
            return
        given = presented_secret(request)
        if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
            why = "no secret was sent" if given is None else "the secret does not match"
            raise PermissionDeniedError(
                f"this controller requires a registration secret and {why}: start the worker with "
                f"--controller-secret (or FLEETCHAT_CONTROLLER_SECRET) set to the controller's secret"
            )

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def probe(self, address: str, *, attempts: int = 1) -> None:
        """Ask one worker for its status and record the outcome (never drops it).

        ``attempts`` > 1 retries a refused connection with a short backoff: a worker registers from
        its start-up, possibly a moment before its socket accepts connections.
        """
        try:
            for attempt in range(attempts):
                try:
                    r = await self.http.post(address + "/worker_get_status", timeout=self.settings.probe_timeout)
                    break
                except httpx.ConnectError:
                    if attempt == attempts - 1:
                        raise
                    await asyncio.sleep(0.2 * 2**attempt)
            r.raise_for_status()
            status = r.json()
            if not isinstance(status, dict) or "model_names" not in status:
                raise ValueError(f"not a worker status: {str(status)[:100]}")
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
            self.table = registry.record_probe(
                self.table, address, self.clock(), error=f"status probe timed out ({type(exc).__name__})"
            )
            log.warning("worker %s did not answer its status probe in time; keeping it (busy?)", address)
        except Exception as exc:  # connection refused, DNS, ConnectTimeout, bad answer
            why = f"{type(exc).__name__}: {exc}".strip()
            self.table = registry.record_probe(self.table, address, self.clock(), error=why, unreachable=True)
            log.warning(
                "worker %s registered but its address does not answer (%s); it gets no requests until "
                "it does. Is its --worker-address right?",
                address,
                why,
            )
        else:
            was = self.table.get(address)
            self.table = registry.record_probe(self.table, address, self.clock(), status=status)
            if was is not None and was.reachable is False:
                log.info("worker %s answers again", address)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_every)
            self.table, dropped = registry.expire(self.table, self.clock(), self.settings.heart_beat_expiration)
            for address in dropped:
                log.info(
                    "dropped worker %s: no heartbeat for %.1fs", address, self.settings.heart_beat_expiration
                )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._owns_http and self._http is not None:
            await self._http.aclose()


def create_app(
    settings: ControllerSettings | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    http_client: httpx.AsyncClient | None = None,
) -> FastAPI:
    """Build a controller. ``http_client`` (for probing workers) defaults to a fresh httpx client."""
    settings = settings or ControllerSettings()
    state = ControllerState(settings, clock, rng or random.Random(), http_client)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(state.sweep_forever())
        try:
            yield
        finally:
            sweeper.cancel()
            await state.close()

    app = FastAPI(title="fleetchat controller", lifespan=lifespan)
    app.state.controller = state

    install_error_handlers(app)

    @app.post("/register_worker")
    async def register_worker(body: RegisterWorkerRequest, request: Request) -> None:
        state.check_secret(request)
        address = body.worker_name.rstrip("/")
        status = body.worker_status
        if status is None:
            # FastChat semantics: no status given -> ask the worker for it.
            state.table = registry.register(state.table, address, [], state.clock(), check_heart_beat=body.check_heart_beat)
            await state.probe(address, attempts=3)
            if address in state.table and not state.table[address].model_names:
                state.table = registry.remove(state.table, address)
                log.warning("registration of %s refused: its status could not be read", address)
            return None
        state.table = registry.register(
            state.table,
            address,
            status.model_names,
            state.clock(),
            speed=status.speed,
            queue_length=status.queue_length,
            check_heart_beat=body.check_heart_beat,
            multimodal=body.multimodal,
        )
        log.info("registered worker %s serving %s", address, ", ".join(status.model_names))
        state.spawn(state.probe(address, attempts=6))
        return None

    @app.post("/receive_heart_beat")
    async def receive_heart_beat(body: HeartbeatRequest, request: Request) -> dict[str, bool]:
        state.check_secret(request)
        address = body.worker_name.rstrip("/")
        state.table, exist = registry.heartbeat(state.table, address, body.queue_length, state.clock())
        if not exist:
            log.info("heartbeat from unknown worker %s: asking it to re-register", address)
        elif state.table[address].reachable is False:
            state.spawn(state.probe(address))
        return {"exist": exist}

    @app.post("/refresh_all_workers")
    async def refresh_all_workers() -> None:
        await asyncio.gather(*(state.probe(a) for a in list(state.table)))
        return None

    @app.post("/list_models")
    async def list_models() -> dict[str, list[str]]:
        return {"models": registry.models(state.table)}

    @app.post("/list_multimodal_models")
    async def list_multimodal_models() -> dict[str, list[str]]:
        return {"models": registry.models(state.table, multimodal=True)}

    @app.post("/list_language_models")
    async def list_language_models() -> dict[str, list[str]]:
        return {"models": registry.models(state.table, multimodal=False)}

    def pick(model: str) -> str:
        now = state.clock()
        chosen = dispatch.choose(settings.dispatch_method, registry.candidates(state.table, model), state.rng, now)
        if chosen is None:
            return ""
        state.table = registry.record_dispatch(state.table, chosen.address, now)
        return chosen.address

    @app.post("/get_worker_address")
    async def get_worker_address(body: GetWorkerAddressRequest) -> dict[str, str]:
        return {"address": pick(body.model)}

    @app.post("/worker_get_status")
    async def worker_get_status() -> dict[str, Any]:
        return registry.aggregate_status(state.table)

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> StreamingResponse:
        """Controller-as-worker (FastChat's hierarchical mode): proxy to a chosen worker."""
        params = await request.json()
        model = str(params.get("model", ""))
        address = pick(model)

        async def relay() -> AsyncIterator[bytes]:
            if not address:
                yield error_item(NoWorkerAvailableError(f"no worker serves model {model!r}")).frame()
                return
            try:
                async with state.http.stream(
                    "POST", address + "/worker_generate_stream", json=params, timeout=None
                ) as r:
                    async for part in r.aiter_bytes():
                        yield part
            except httpx.HTTPError as exc:
                yield StreamItem(text=f"worker {address} failed: {exc}", error_code=50006).frame()

        return StreamingResponse(relay())

    @app.get("/test_connection")
    async def test_connection() -> str:
        return "success"

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "workers": len(state.table),
            "models": registry.models(state.table),
            "dispatch_method": settings.dispatch_method,
            "heart_beat_expiration": settings.heart_beat_expiration,
            "secret_required": bool(settings.controller_secret),
        }

    @app.get("/workers")
    async def workers() -> list[dict[str, Any]]:
        return registry.describe(state.table, state.clock())

    return app
