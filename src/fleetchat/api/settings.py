"""Settings of the OpenAI-compatible API server (``fleetchat api``): flags and FLEETCHAT_* env vars."""

from __future__ import annotations

from dataclasses import dataclass

from fleetchat.settings import option


@dataclass(frozen=True)
class ApiSettings:
    host: str = option("127.0.0.1", help="address to bind (0.0.0.0 to listen on every interface)")
    port: int = option(8000, help="port to listen on")
    controller_address: str = option("http://127.0.0.1:21001", help="the controller's URL")
    api_keys: tuple[str, ...] = option(
        (), help="accepted API keys (comma list or repeated); when set, /v1/* needs 'Authorization: Bearer KEY'"
    )
    worker_timeout: float = option(
        300.0, help="seconds to wait for a worker's next streamed line before failing the request"
    )
    connect_timeout: float = option(5.0, help="seconds to wait when connecting to a worker or the controller")
    max_connections: int = option(
        2048, help="connections the shared HTTP client may open to workers (httpx's default of 100 serialises load)"
    )
    retries: int = option(
        2, help="other workers to try when the chosen one fails before its first token"
    )
    model_list_ttl: float = option(2.0, help="seconds the controller's model list is cached for /v1/models")
    allow_origins: tuple[str, ...] = option((), help="CORS origins to allow (comma list; '*' for any)")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if self.retries < 0:
            raise ValueError(f"--retries must be >= 0, got {self.retries}")
        if self.max_connections < 1:
            raise ValueError(f"--max-connections must be >= 1, got {self.max_connections}")
        if not self.controller_address.startswith(("http://", "https://")):
            raise ValueError(f"--controller-address must start with http:// or https://, got {self.controller_address!r}")
