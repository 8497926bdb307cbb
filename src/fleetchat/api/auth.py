"""API keys: ``--api-keys k1,k2`` makes every /v1/* route require ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from fleetchat.errors import AuthenticationError


class ApiKeyCheck:
    """A FastAPI dependency; with no keys configured every request passes."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    async def __call__(self, request: Request) -> None:
        if not self._keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer YOUR_KEY' (this server was started with --api-keys)"
            )
        given = token.strip().encode()
        # compare against every key in constant time, so timing does not reveal a prefix
        if not any(hmac.compare_digest(given, key) for key in self._keys):
            raise AuthenticationError("incorrect API key provided")
