"""The one error tree of fleetchat, and its OpenAI rendering.

Every failure that crosses a process boundary is one of these classes. Each class carries the HTTP
status, the OpenAI error ``type`` and ``code``; an instance may name the offending ``param``. The same
object renders as a JSON body (:func:`error_body`), as an in-stream SSE event, and is rebuilt on the
other side of a hop from that body (:func:`error_from_body`), so a worker's 404 reaches the API's
client as the same 404.

    FleetchatError                      500 server_error        internal_error
    ├── InvalidRequestError             400 invalid_request_error invalid_request
    │   ├── InvalidParameterError       400                     invalid_value      (param set)
    │   └── ContextLengthExceededError  400                     context_length_exceeded
    ├── AuthenticationError             401 invalid_request_error invalid_api_key
    ├── PermissionDeniedError           403 permission_error     permission_denied
    ├── ModelNotFoundError              404 invalid_request_error model_not_found
    ├── OverloadedError                 429 rate_limit_error      overloaded
    ├── NoWorkerAvailableError          503 server_error          no_worker_available
    ├── WorkerError                     502 server_error          worker_failed
    ├── ModelLoadError                  500 server_error          model_load_failed
    └── EngineError                     500 server_error          engine_error

FastChat's integer ``error_code`` (fastchat/constants.py) is kept on each class so that the
FastChat-compatible worker endpoints can report errors the way FastChat clients expect.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class FleetchatError(Exception):
    """Base of every fleetchat error. Subclasses set the class-level fields."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    fastchat_code: ClassVar[int] = 50001

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


class InvalidRequestError(FleetchatError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    fastchat_code = 40001


class InvalidParameterError(InvalidRequestError):
    code = "invalid_value"
    fastchat_code = 40302


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"
    fastchat_code = 40303


class AuthenticationError(FleetchatError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    fastchat_code = 40101


class PermissionDeniedError(FleetchatError):
    status = 403
    type = "permission_error"
    code = "permission_denied"
    fastchat_code = 40103


class ModelNotFoundError(FleetchatError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    fastchat_code = 40301


class OverloadedError(FleetchatError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"
    fastchat_code = 42903


class NoWorkerAvailableError(FleetchatError):
    status = 503
    type = "server_error"
    code = "no_worker_available"
    fastchat_code = 50005


class WorkerError(FleetchatError):
    status = 502
    type = "server_error"
    code = "worker_failed"
    fastchat_code = 50006


class ModelLoadError(FleetchatError):
    code = "model_load_failed"


class EngineError(FleetchatError):
    code = "engine_error"


_ALL: tuple[type[FleetchatError], ...] = (
    InvalidParameterError,
    ContextLengthExceededError,
    InvalidRequestError,
    AuthenticationError,
    PermissionDeniedError,
    ModelNotFoundError,
    OverloadedError,
    NoWorkerAvailableError,
    WorkerError,
    ModelLoadError,
    EngineError,
)
_BY_CODE: dict[str, type[FleetchatError]] = {cls.code: cls for cls in _ALL}


def error_body(err: FleetchatError) -> dict[str, Any]:
    """The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": err.to_dict()}


def error_sse_event(err: FleetchatError) -> str:
    """The same envelope framed as one server-sent event (used once a stream has begun)."""
    return f"data: {json.dumps(error_body(err), ensure_ascii=False)}\n\n"


def error_from_body(status: int, body: Any) -> FleetchatError:
    """Rebuild an error from an OpenAI-shaped body received over HTTP (the inverse of error_body).

    Unknown or malformed bodies become a :class:`WorkerError` (502) quoting what was received, so a
    broken peer never turns into a silent success.
    """
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        inner = body["error"]
        message = str(inner.get("message") or "unknown error")
        cls = _BY_CODE.get(str(inner.get("code")))
        if cls is None:
            cls = next((c for c in _ALL if c.status == status), FleetchatError)
        return cls(message, param=inner.get("param"))
    text = body if isinstance(body, str) else json.dumps(body)[:500]
    return WorkerError(f"peer answered HTTP {status}: {text}")


def as_fleetchat_error(exc: BaseException) -> FleetchatError:
    """Wrap any exception; fleetchat errors pass through unchanged."""
    if isinstance(exc, FleetchatError):
        return exc
    return FleetchatError(f"internal error: {type(exc).__name__}: {exc}")
