"""Registration with the controller and heartbeats, as one asyncio task (never a thread).

The worker starts serving even when the controller is down and keeps retrying with backoff, logging
"cannot reach the controller at URL ... retrying" at WARNING, so the start order of ``fleetchat
controller`` and ``fleetchat worker`` does not matter. A controller that refuses the secret (HTTP 403)
is a configuration error: it is logged once and ``on_fatal`` is called (the CLI then exits 1).

Heartbeats go out every ``heartbeat_interval`` seconds and, debounced by ``load_report_delay``,
whenever the queue length changes, so the controller dispatches on live load. A heartbeat answered
``{"exist": false}`` (the controller restarted or expired us) triggers an immediate re-registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import httpx

from fleetchat.errors import FleetchatError, PermissionDeniedError, error_from_body
from fleetchat.worker.settings import WorkerSettings

log = logging.getLogger("fleetchat.worker.registration")


class Registrar:
    def __init__(
        self,
        settings: WorkerSettings,
        status: Callable[[], dict[str, Any]],
        *,
        http_client: httpx.AsyncClient | None = None,
        on_fatal: Callable[[FleetchatError], None] | None = None,
    ) -> None:
        self.settings = settings
        self.status = status
        self.on_fatal = on_fatal
        self.registered = False
        self.registrations = 0
        self.heartbeats = 0
        self._http = http_client
        self._owns_http = http_client is None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.controller = settings.controller_address.rstrip("/")

    # -- lifecycle

    def start(self) -> None:
        if self.settings.no_register:
            log.info("--no-register: not registering with a controller")
            return
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=max(5.0, min(30.0, self.settings.heartbeat_interval)))
        self._task = asyncio.get_running_loop().create_task(self.run(), name="fleetchat-registration")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._owns_http and self._http is not None:
            await self._http.aclose()

    def load_changed(self) -> None:
        """Called on every queue length change; the task reports it within ``load_report_delay``."""
        self._changed.set()

    # -- protocol

    def _headers(self) -> dict[str, str]:
        secret = self.settings.controller_secret
        return {"Authorization": f"Bearer {secret}"} if secret else {}

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        assert self._http is not None
        r = await self._http.post(self.controller + path, json=body, headers=self._headers())
        if r.status_code != 200:
            try:
                payload: Any = r.json()
            except ValueError:
                payload = r.text
            raise error_from_body(r.status_code, payload)
        return r.json() if r.content else None

    async def register(self) -> None:
        status = self.status()
        await self._post(
            "/register_worker",
            {
                "worker_name": self.settings.address,
                "check_heart_beat": True,
                "worker_status": status,
                "multimodal": False,
            },
        )
        self.registered = True
        self.registrations += 1
        log.info(
            "registered with the controller at %s as %s serving %s",
            self.controller,
            self.settings.address,
            ", ".join(status["model_names"]),
        )

    async def heartbeat(self) -> bool:
        body = await self._post(
            "/receive_heart_beat",
            {"worker_name": self.settings.address, "queue_length": self.status()["queue_length"]},
        )
        self.heartbeats += 1
        return bool(isinstance(body, dict) and body.get("exist"))

    # -- the task

    async def _wait_for_next_beat(self) -> None:
        """Sleep until the periodic heartbeat is due or, debounced, until the load changed."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout=self.settings.heartbeat_interval)
        except TimeoutError:
            return
        await asyncio.sleep(self.settings.load_report_delay)

    async def run(self) -> None:
        retry = 0.5
        max_retry = min(5.0, self.settings.heartbeat_interval)
        while True:
            try:
                if not self.registered:
                    await self.register()
                    retry = 0.5
                await self._wait_for_next_beat()
                self._changed.clear()
                if not await self.heartbeat():
                    log.warning(
                        "the controller at %s does not know this worker (restarted, or our heartbeats "
                        "were late): registering again",
                        self.controller,
                    )
                    self.registered = False
                retry = 0.5
            except asyncio.CancelledError:
                raise
            except PermissionDeniedError as exc:
                log.error("the controller at %s refused this worker: %s", self.controller, exc)
                if self.on_fatal is not None:
                    self.on_fatal(exc)
                return
            except (httpx.HTTPError, FleetchatError, ValueError) as exc:
                self.registered = False  # register again (idempotent) as soon as it answers
                log.warning(
                    "cannot reach the controller at %s (%s: %s); retrying in %.1fs. Is `fleetchat "
                    "controller` running there? This worker keeps serving requests sent to it directly.",
                    self.controller,
                    type(exc).__name__,
                    exc,
                    retry,
                )
                await asyncio.sleep(retry)
                retry = min(retry * 2, max_retry)
