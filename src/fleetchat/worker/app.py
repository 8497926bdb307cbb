"""The model worker app: FastChat's worker endpoints plus fleetchat's typed ``/v1/*`` endpoints.

FastChat endpoints keep FastChat's wire shapes, including in-band errors (HTTP 200 with
``{"text", "error_code"}``). Fleetchat endpoints use the error tree: the error's HTTP status with
``error_body``, or one ``{"error": ...}`` line once an ndjson stream has begun.

Every generation and embedding takes an admission slot (concurrency limit + bounded queue, refused
with 429 past both). Model work happens in the engines, which never block the event loop, so
``/worker_get_status``, ``/health`` and heartbeats answer while the worker is busy. A client
disconnect closes the engine iterator, which aborts the request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import struct
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleetchat.engines.base import EmbeddingEngine, Engine
from fleetchat.errors import (
    EngineError,
    FleetchatError,
    InvalidRequestError,
    ModelNotFoundError,
    as_fleetchat_error,
    error_body,
)
from fleetchat.http_errors import install_error_handlers
from fleetchat.protocol.fastchat import (
    CountTokenRequest,
    EmbeddingsRequest,
    GenerateParams,
    ModelRequest,
    StreamItem,
    error_item,
)
from fleetchat.protocol.generation import GenerateRequest
from fleetchat.protocol.worker import NDJSON, HealthInfo, WorkerEmbeddingsRequest
from fleetchat.worker.admission import Admission
from fleetchat.worker.fastchat import conv_template_dict, fastchat_stream
from fleetchat.worker.registration import Registrar
from fleetchat.worker.settings import WorkerSettings
from fleetchat.worker.streaming import AbortingStreamingResponse

log = logging.getLogger("fleetchat.worker")

AnyEngine = Engine | EmbeddingEngine
Engines = AnyEngine | Sequence[AnyEngine] | Mapping[str, AnyEngine]


def _engine_map(engines: Engines) -> dict[str, AnyEngine]:
    if isinstance(engines, Mapping):
        out = dict(engines)
    elif isinstance(engines, (list, tuple)):
        out = {e.info.name: e for e in engines}
    else:
        out = {engines.info.name: engines}  # type: ignore[union-attr]
    if not out:
        raise ValueError("a worker needs at least one engine")
    return out


def is_embedding(engine: AnyEngine) -> bool:
    return engine.info.kind == "embedding" or not hasattr(engine, "generate")


class WorkerState:
    """Engines by served name, the admission gate and the settings of one worker."""

    def __init__(self, engines: Engines, settings: WorkerSettings) -> None:
        self.engines = _engine_map(engines)
        self.settings = settings
        unique = list({id(e): e for e in self.engines.values()}.values())
        self.unique_engines = unique
        limit = settings.limit_worker_concurrency or max(1, max(e.info.max_running for e in unique))
        max_queue = settings.max_queue if settings.max_queue is not None else 4 * limit
        self.admission = Admission(limit, max_queue)

    @property
    def model_names(self) -> list[str]:
        return list(self.engines)

    def engine(self, model: str | None, *, kind: str | None = None) -> AnyEngine:
        if model is None or model == "":
            candidates = [e for e in self.engines.values() if kind is None or (kind == "embedding") == is_embedding(e)]
            if not candidates:
                raise InvalidRequestError(f"this worker serves no {kind} model; models: {', '.join(self.engines)}")
            return candidates[0]
        engine = self.engines.get(model)
        if engine is None:
            raise ModelNotFoundError(
                f"model {model!r} is not served by this worker; it serves: {', '.join(self.engines)}", param="model"
            )
        if kind is not None and (kind == "embedding") != is_embedding(engine):
            raise InvalidRequestError(f"model {model!r} is a {engine.info.kind} model, not a {kind} model", param="model")
        return engine

    def status(self) -> dict[str, Any]:
        """FastChat's ``/worker_get_status`` answer. Instant: it reads counters only."""
        return {"model_names": self.model_names, "speed": 1, "queue_length": self.admission.queue_length}

    def health(self) -> HealthInfo:
        healths = [e.health() for e in self.unique_engines]
        return HealthInfo(
            ok=all(h.ok for h in healths),
            running=self.admission.running,
            waiting=self.admission.waiting,
            queue_length=self.admission.queue_length,
            limit=self.admission.limit,
            max_queue=self.admission.max_queue,
            detail="; ".join(h.detail for h in healths if h.detail),
        )


async def _first_chunk(chunks: AsyncIterator[Any], request: Request) -> Any:
    """The stream's first chunk; a client that leaves while it waits (queued, prefilling) aborts it.

    Until the response starts nothing reads the connection, so a disconnect would otherwise go
    unnoticed until the first token; here it is polled while the engine works on the request.
    """
    task = asyncio.ensure_future(anext(chunks))
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise asyncio.CancelledError("client disconnected before the first chunk")


def create_app(
    engines: Engines,
    settings: WorkerSettings | None = None,
    *,
    controller_http: httpx.AsyncClient | None = None,
    on_fatal: Callable[[FleetchatError], None] | None = None,
) -> FastAPI:
    """Build a worker serving ``engines`` (one engine, a list, or a mapping served-name -> engine).

    Unless ``settings.no_register``, the app's lifespan runs a
    :class:`~fleetchat.worker.registration.Registrar` (registration + heartbeats, told about every
    load change); ``controller_http`` is its HTTP client (tests pass an in-process transport),
    ``on_fatal`` is called when the controller refuses the worker for good (wrong secret).
    """
    settings = settings or WorkerSettings()
    state = WorkerState(engines, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.no_register:
            yield
            return
        registrar = Registrar(settings, state.status, http_client=controller_http, on_fatal=on_fatal)
        app.state.registrar = registrar
        state.admission.add_listener(registrar.load_changed)
        registrar.start()
        try:
            yield
        finally:
            await registrar.stop()

    app = FastAPI(title="fleetchat worker", lifespan=lifespan)
    app.state.worker = state

    install_error_handlers(app)

    async def fastchat_json(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("the body must be a JSON object")
        return body

    # ---------------------------------------------------------------- FastChat endpoints

    def fastchat_request(body: dict[str, Any]) -> tuple[Engine, GenerateRequest]:
        params = GenerateParams.model_validate(body)
        engine = state.engine(params.model, kind="chat")
        return engine, params.to_generate_request(engine.info.name)  # type: ignore[return-value]

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> Any:
        async def one(item: StreamItem) -> AsyncIterator[bytes]:
            yield item.frame()

        try:
            engine, gen = fastchat_request(await fastchat_json(request))
            await state.admission.acquire()
        except Exception as exc:  # FastChat reports every failure in-band
            return AbortingStreamingResponse(one(error_item(_as_error(exc))), media_type="application/octet-stream")

        async def frames() -> AsyncIterator[bytes]:
            try:
                async for item in fastchat_stream(engine, gen, settings.stream_interval):
                    yield item.frame()
            except Exception as exc:
                err = as_fleetchat_error(exc)
                log.warning("generation %s failed: %s", gen.request_id, err)
                yield error_item(err).frame()

        return AbortingStreamingResponse(
            frames(), media_type="application/octet-stream", on_close=state.admission.release
        )

    @app.post("/worker_generate")
    async def worker_generate(request: Request) -> dict[str, Any]:
        try:
            engine, gen = fastchat_request(await fastchat_json(request))
            await state.admission.acquire()
        except Exception as exc:
            return error_item(_as_error(exc)).model_dump(exclude_none=True)
        try:
            last: StreamItem | None = None
            async for item in fastchat_stream(engine, gen, 1 << 30):
                last = item
            if last is None:
                raise EngineError("the engine produced no output")
            return last.model_dump(exclude_none=True)
        except Exception as exc:
            return error_item(as_fleetchat_error(exc)).model_dump(exclude_none=True)
        finally:
            state.admission.release()

    @app.post("/worker_get_status")
    async def worker_get_status() -> dict[str, Any]:
        return state.status()

    @app.post("/count_token")
    async def count_token(request: Request) -> dict[str, Any]:
        try:
            body = CountTokenRequest.model_validate(await fastchat_json(request))
            engine = state.engine(body.model)
            return {"count": engine.count_tokens(body.prompt), "error_code": 0}
        except Exception as exc:
            return error_item(_as_error(exc)).model_dump(exclude_none=True)

    @app.post("/worker_get_conv_template")
    async def worker_get_conv_template(request: Request) -> dict[str, Any]:
        try:
            body = ModelRequest.model_validate(await _json_or_empty(request))
            engine = state.engine(body.model, kind="chat")
            return {"conv": conv_template_dict(engine)}
        except Exception as exc:
            return error_item(_as_error(exc)).model_dump(exclude_none=True)

    @app.post("/model_details")
    async def model_details(request: Request) -> dict[str, Any]:
        try:
            body = ModelRequest.model_validate(await _json_or_empty(request))
            return {"context_length": state.engine(body.model).info.context_length}
        except Exception as exc:
            return error_item(_as_error(exc)).model_dump(exclude_none=True)

    @app.post("/worker_get_embeddings")
    async def worker_get_embeddings(request: Request) -> dict[str, Any]:
        try:
            body = EmbeddingsRequest.model_validate(await fastchat_json(request))
            engine = state.engine(body.model, kind="embedding")
            await state.admission.acquire()
        except Exception as exc:
            return error_item(_as_error(exc)).model_dump(exclude_none=True)
        try:
            result = await engine.embed(body.input)  # type: ignore[union-attr]
        except Exception as exc:
            return error_item(as_fleetchat_error(exc)).model_dump(exclude_none=True)
        finally:
            state.admission.release()
        vectors: list[Any] = result.embeddings
        if body.encoding_format == "base64":  # FastChat: float32 bytes of each vector
            vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
        return {"embedding": vectors, "token_num": result.prompt_tokens}

    # ---------------------------------------------------------------- fleetchat endpoints

    async def typed_body(request: Request, model: type[Any]) -> Any:
        """Parse a JSON body whatever its content type; our validators' errors pass through."""
        from pydantic import ValidationError

        try:
            return model.model_validate(await fastchat_json(request))
        except ValidationError as exc:
            raise _as_error(exc) from None

    @app.post("/v1/generate")
    async def generate(request: Request) -> Any:
        body: GenerateRequest = await typed_body(request, GenerateRequest)
        engine = state.engine(body.model, kind="chat")
        await state.admission.acquire()
        chunks = engine.generate(body)  # type: ignore[union-attr]
        try:
            # Errors before the first chunk (context length, overload in the engine ...) are HTTP errors.
            first = await _first_chunk(chunks, request)
        except StopAsyncIteration:
            state.admission.release()
            raise EngineError("the engine produced no output") from None
        except BaseException:
            state.admission.release()
            with contextlib.suppress(Exception):
                await chunks.aclose()
            raise

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield first.model_dump_json().encode() + b"\n"
                async for chunk in chunks:
                    yield chunk.model_dump_json().encode() + b"\n"
            except Exception as exc:
                err = as_fleetchat_error(exc)
                log.warning("generation %s failed mid-stream: %s", body.request_id, err)
                yield json.dumps(error_body(err), ensure_ascii=False).encode() + b"\n"
            finally:
                await chunks.aclose()

        return AbortingStreamingResponse(lines(), media_type=NDJSON, on_close=state.admission.release)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body: WorkerEmbeddingsRequest = await typed_body(request, WorkerEmbeddingsRequest)
        engine = state.engine(body.model, kind="embedding")
        await state.admission.acquire()
        try:
            result = await engine.embed(body.input)  # type: ignore[union-attr]
        finally:
            state.admission.release()
        return result.model_dump()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        infos = []
        for name, engine in state.engines.items():
            infos.append(engine.info.model_copy(update={"name": name}).model_dump())
        return {"models": infos, "health": state.health().model_dump()}

    @app.get("/health")
    async def health() -> JSONResponse:
        info = state.health()
        body = {
            "status": "ok" if info.ok else "unhealthy",
            "worker_address": settings.address,
            "models": state.model_names,
            "health": info.model_dump(),
        }
        return JSONResponse(body, status_code=200 if info.ok else 503)

    return app


def _as_error(exc: BaseException) -> FleetchatError:
    """Pydantic errors wrapping our own validators become that error; other validation -> 400."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors()
        inner = (errors[0].get("ctx") or {}).get("error") if errors else None
        if isinstance(inner, FleetchatError):
            return inner
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return InvalidRequestError(f"invalid request: {where or 'body'}: {first.get('msg', 'invalid')}", param=where or None)
    return as_fleetchat_error(exc)


async def _json_or_empty(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    body = json.loads(raw)
    return body if isinstance(body, dict) else {}
