"""WorkerSettings: the serving flags of ``fleetchat worker`` (the model flags are EngineSettings).

The worker-wide ``--seed`` of FastChat is EngineSettings' ``--seed`` (the default seed of requests
that give none), so it is not repeated here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fleetchat.settings import option


@dataclass(frozen=True)
class WorkerSettings:
    env_prefix: ClassVar[str] = "WORKER_"

    host: str = option("127.0.0.1", help="address to bind")
    port: int = option(21002, help="port to listen on")
    worker_address: str | None = option(
        None,
        help="URL the controller and API server use to reach this worker (default: http://HOST:PORT; "
        "set it when HOST is 0.0.0.0 or behind NAT, e.g. http://10.0.0.5:21002)",
    )
    controller_address: str = option("http://127.0.0.1:21001", help="URL of the controller")
    limit_worker_concurrency: int | None = option(
        None, help="requests run at once (default: the engine's --max-running; FastChat: 5)"
    )
    max_queue: int | None = option(
        None,
        help="requests waiting for a slot before new ones are refused as overloaded (HTTP 429) "
        "(default: 4 x the concurrency limit)",
    )
    stream_interval: int = option(
        2, help="/worker_generate_stream sends the text every N engine steps (FastChat: 2); /v1/generate sends every step"
    )
    no_register: bool = option(False, help="do not register with the controller")
    heartbeat_interval: float = option(45.0, help="seconds between heartbeats (FastChat: 45)")
    load_report_delay: float = option(
        0.1, help="after the queue length changes, report it to the controller within this many seconds"
    )
    controller_secret: str | None = option(
        None, env="FLEETCHAT_CONTROLLER_SECRET",
        help="registration secret of the controller (sent as 'Authorization: Bearer ...')"
    )

    def __post_init__(self) -> None:
        if self.limit_worker_concurrency is not None and self.limit_worker_concurrency < 1:
            raise ValueError("--limit-worker-concurrency must be at least 1")
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError("--max-queue must be 0 or more")
        if self.stream_interval < 1:
            raise ValueError("--stream-interval must be at least 1")
        if self.heartbeat_interval <= 0:
            raise ValueError("--heartbeat-interval must be positive")

    @property
    def address(self) -> str:
        """The advertised address: --worker-address, else derived from --host and --port."""
        if self.worker_address:
            return self.worker_address.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"
