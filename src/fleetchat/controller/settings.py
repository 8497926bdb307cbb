"""ControllerSettings: the flags of ``fleetchat controller`` (and env vars ``FLEETCHAT_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fleetchat.settings import option


@dataclass(frozen=True)
class ControllerSettings:
    env_prefix: ClassVar[str] = "CONTROLLER_"

    host: str = option("127.0.0.1", help="address to bind; use 0.0.0.0 to accept workers from other machines")
    port: int = option(21001, help="port to listen on")
    dispatch_method: str = option(
        "least_load",
        help="how to pick a worker: least_load (live queue lengths), shortest_queue or lottery (FastChat's)",
        choices=("least_load", "shortest_queue", "lottery"),
    )
    heart_beat_expiration: float = option(
        90.0, help="seconds without a heartbeat after which a worker is dropped (FastChat: 90)"
    )
    sweep_interval: float | None = option(
        None, help="seconds between expiry sweeps (default: a quarter of --heart-beat-expiration)"
    )
    probe_timeout: float = option(5.0, help="seconds to wait for a worker's /worker_get_status answer")
    controller_secret: str | None = option(
        None,
        env="FLEETCHAT_CONTROLLER_SECRET",
        help="shared secret workers must send (header 'Authorization: Bearer SECRET' or 'X-Fleetchat-Secret') "
        "to register or heartbeat; unset = open registration",
    )

    def __post_init__(self) -> None:
        if self.heart_beat_expiration <= 0:
            raise ValueError("--heart-beat-expiration must be positive")
        if self.sweep_interval is not None and self.sweep_interval <= 0:
            raise ValueError("--sweep-interval must be positive")

    @property
    def sweep_every(self) -> float:
        return self.sweep_interval or max(0.05, self.heart_beat_expiration / 4)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"
