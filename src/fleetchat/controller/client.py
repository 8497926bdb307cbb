"""ControllerClient: the async client of a controller (used by the API server, status, test-message).

Every failure names the controller URL: a controller that does not answer raises NoWorkerAvailableError
("cannot reach the controller at URL: is `fleetchat controller` running?"); a bad answer raises
WorkerError quoting it.
"""

from __future__ import annotations

from typing import Any

import httpx

from fleetchat.errors import NoWorkerAvailableError, WorkerError, error_from_body


class ControllerClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:21001",
        timeout: float = 10.0,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            r = await self._client.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise NoWorkerAvailableError(
                f"the controller at {self.base_url} did not answer {path} in time ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise NoWorkerAvailableError(
                f"cannot reach the controller at {self.base_url}: is `fleetchat controller` running? ({exc})"
            ) from exc
        try:
            body = r.json()
        except ValueError:
            body = r.text
        if r.status_code != 200:
            err = error_from_body(r.status_code, body)
            if isinstance(err, WorkerError):
                err = WorkerError(f"controller at {self.base_url} answered {path} with HTTP {r.status_code}: {str(body)[:300]}")
            raise err
        return body

    async def list_models(self) -> list[str]:
        body = await self._call("POST", "/list_models")
        if not isinstance(body, dict) or not isinstance(body.get("models"), list):
            raise WorkerError(f"controller at {self.base_url} sent a malformed /list_models answer: {str(body)[:200]}")
        return sorted(str(m) for m in body["models"])

    async def get_worker_address(self, model: str) -> str:
        """The chosen worker's base URL, or "" when no worker serves ``model``."""
        body = await self._call("POST", "/get_worker_address", {"model": model})
        if not isinstance(body, dict) or not isinstance(body.get("address", ""), str):
            raise WorkerError(f"controller at {self.base_url} sent a malformed address: {str(body)[:200]}")
        return body.get("address", "")

    async def workers(self) -> list[dict[str, Any]]:
        body = await self._call("GET", "/workers")
        if not isinstance(body, list):
            raise WorkerError(
                f"controller at {self.base_url} has no /workers listing (a FastChat controller?): {str(body)[:200]}"
            )
        return body

    async def refresh(self) -> None:
        await self._call("POST", "/refresh_all_workers")

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/health")
