"""The one place where errors become HTTP responses (and SSE error events), for every fleetchat app.

The controller, the workers and the API server all call :func:`install_error_handlers`. Every
handler raises :mod:`fleetchat.errors` classes; the installed handlers render them as
OpenAI's envelope with their own status. FastAPI's 422 for body validation and Starlette's plain
404/405 become OpenAI-shaped 400/404/405 too, and anything unexpected a 500 in the same shape, so an
SDK always gets a body it can parse. Inside a stream that already began, :func:`stream_error_events`
gives the error event followed by ``[DONE]``.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from fleetchat.errors import (
    AuthenticationError,
    FleetchatError,
    InvalidParameterError,
    InvalidRequestError,
    as_fleetchat_error,
    error_body,
)
from fleetchat.protocol.sse import SSE_DONE, sse_error

log = logging.getLogger(__name__)


def error_response(err: FleetchatError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(err, AuthenticationError) else None
    return Response(
        orjson.dumps(error_body(err)), status_code=err.status, media_type="application/json", headers=headers
    )


def stream_error_events(exc: BaseException) -> bytes:
    """The bytes that end a stream that failed after it began: one error event, then [DONE]."""
    err = as_fleetchat_error(exc)
    if err.status >= 500:
        log.warning("stream failed after it began: %s", err)
    return sse_error(err) + SSE_DONE


def _validation(exc: RequestValidationError) -> FleetchatError:
    errors = exc.errors()
    if not errors:
        return InvalidRequestError("invalid request body")
    first = errors[0]
    ctx_err = (first.get("ctx") or {}).get("error")
    if isinstance(ctx_err, FleetchatError):  # raised by our own validators (SamplingParams, GenerateRequest)
        return ctx_err
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return InvalidRequestError(f"the request body is not valid JSON: {first.get('msg')}")
    return InvalidParameterError(f"invalid {param or 'body'}: {first.get('msg')}", param=param)


class _HttpError(FleetchatError):
    """A plain Starlette HTTP error (unknown route, wrong method) in OpenAI's shape."""

    type = "invalid_request_error"
    code = "not_found"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self._status = status

    @property
    def status(self) -> int:  # type: ignore[override]
        return self._status


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FleetchatError)
    async def _fleetchat(_: Request, exc: FleetchatError) -> Response:
        if exc.status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"unknown path {request.method} {request.url.path}"
        else:
            message = str(exc.detail)
        err = _HttpError(exc.status_code, message)
        if exc.status_code == 405:
            err.code = "method_not_allowed"
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(as_fleetchat_error(exc))
