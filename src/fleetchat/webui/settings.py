"""WebSettings: the one frozen configuration object of the web UI (flags + ``FLEETCHAT_*`` env)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fleetchat.settings import option

DEFAULT_DB_URL = "sqlite:///~/.local/share/fleetchat/webui.db"


@dataclass(frozen=True)
class WebSettings:
    """How ``fleetchat web`` binds, which OpenAI-compatible API it talks to, where votes are kept."""

    env_prefix: ClassVar[str] = "WEB_"

    host: str = option("127.0.0.1", help="address the web UI binds to")
    port: int = option(7860, help="port of the web UI")
    api_base_url: str = option(
        "http://127.0.0.1:8000/v1", help="OpenAI-compatible API the UI talks to (ends in /v1)"
    )
    api_key: str = option("EMPTY", help="API key sent to the API server")
    db_url: str = option(
        DEFAULT_DB_URL,
        help="SQLAlchemy URL of the conversation/vote database (sqlite:///PATH or postgresql://...)",
    )
    model_refresh_seconds: float = option(10.0, help="how often the model lists are refreshed from /v1/models")
    request_timeout: float = option(120.0, help="seconds before an API request is abandoned")
    default_max_tokens: int = option(512, help="initial value of the max-tokens slider")
    elo_k: float = option(4.0, help="K-factor of the online Elo rating (FastChat uses 4)")
    bootstrap_rounds: int = option(100, help="bootstrap resamples for the leaderboard's confidence intervals")
    title: str = option("fleetchat", help="page title")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if self.model_refresh_seconds <= 0:
            raise ValueError(f"--model-refresh-seconds must be > 0, got {self.model_refresh_seconds}")
        if self.request_timeout <= 0:
            raise ValueError(f"--request-timeout must be > 0, got {self.request_timeout}")
        if not 1 <= self.default_max_tokens <= 8192:
            raise ValueError(f"--default-max-tokens must be in 1..8192, got {self.default_max_tokens}")
        if self.bootstrap_rounds < 0:
            raise ValueError(f"--bootstrap-rounds must be >= 0, got {self.bootstrap_rounds}")
        if not self.api_base_url.startswith(("http://", "https://")):
            raise ValueError(f"--api-base-url must start with http:// or https://, got {self.api_base_url!r}")
