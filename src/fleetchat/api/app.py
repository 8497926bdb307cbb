"""The OpenAI-compatible API server: ``create_app(settings)`` builds it, dependencies injectable.

Routes::

    POST /v1/chat/completions    chat, streamed (SSE) or not             generation.py
    POST /v1/completions         text completion                          generation.py
    POST /v1/embeddings          embeddings from an embedding worker
    GET  /v1/models              the controller's model list (cached briefly, never a refresh-all)
    GET  /v1/models/{model}      one model card, or 404 listing the served models
    GET  /health                 this server and its controller
    GET  /metrics                Prometheus text format

/v1/* need an API key when ``--api-keys`` is set. The app reaches workers only through its
:class:`~fleetchat.api.routing.WorkerRouter` (shared clients: see routing.py). Tests pass a
``controller`` and an ``http`` client; otherwise they are built from the settings and closed with the app.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Depends, FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from fleetchat.api import generation
from fleetchat.api.auth import ApiKeyCheck
from fleetchat.api.metrics import Metrics, RequestTimer
from fleetchat.api.routing import Controller, WorkerRouter
from fleetchat.api.settings import ApiSettings
from fleetchat.api.upstream import StreamingClient
from fleetchat.errors import FleetchatError, InvalidRequestError, ModelNotFoundError, as_fleetchat_error
from fleetchat.http_errors import install_error_handlers
from fleetchat.protocol import openai as oa


def make_http_client(settings: ApiSettings) -> httpx.AsyncClient:
    """The one client to every worker: a pool large enough that concurrency is never its limit."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.worker_timeout, connect=settings.connect_timeout),
        limits=httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=30.0,
        ),
        trust_env=False,  # a proxy from the environment must never sit between us and a worker
    )


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequestError("the request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None


def _model_of(data: Any) -> str:
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else ""


def _encode_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def create_app(
    settings: ApiSettings | None = None,
    *,
    controller: Controller | None = None,
    http: httpx.AsyncClient | None = None,
) -> FastAPI:
    settings = settings or ApiSettings()
    owned: list[Any] = []
    if controller is None:
        from fleetchat.controller.client import ControllerClient

        controller = ControllerClient(settings.controller_address, timeout=settings.connect_timeout + 5.0)
        owned.append(controller)
    if http is None:
        http = make_http_client(settings)
        owned.append(http)
    streams = StreamingClient(connect_timeout=settings.connect_timeout, read_timeout=settings.worker_timeout,
                              max_idle=settings.max_connections)
    owned.append(streams)
    router = WorkerRouter(controller, http, streams, retries=settings.retries,
                          model_list_ttl=settings.model_list_ttl)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for thing in owned:
            await thing.aclose()

    app = FastAPI(title="fleetchat OpenAI-compatible API", lifespan=lifespan)
    app.state.router = router
    app.state.metrics = metrics
    app.state.settings = settings
    install_error_handlers(app)
    if settings.allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.allow_origins), allow_methods=["*"], allow_headers=["*"]
        )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(ApiKeyCheck(settings.api_keys))])

    async def _generate(request: Request, make_job: Any, endpoint: str) -> Response:
        model = ""
        try:
            data = await _json_body(request)
            model = _model_of(data)
            job = make_job(data)
        except FleetchatError as exc:
            metrics.rejected(endpoint, model, exc.status)
            raise
        return await generation.run(job, router, metrics, request)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(request, generation.chat_job, "chat_completions")

    @v1.post("/completions")
    async def completions(request: Request) -> Response:
        return await _generate(request, generation.completion_job, "completions")

    @v1.post("/embeddings")
    async def embeddings(request: Request) -> Response:
        model = ""
        try:
            data = await _json_body(request)
            model = _model_of(data)
            req = oa.parse_request(oa.EmbeddingRequest, data)
            texts = req.texts()
        except FleetchatError as exc:
            metrics.rejected("embeddings", model, exc.status)
            raise
        timer = RequestTimer(metrics, "embeddings", req.model)
        try:
            result = await router.embed(req.model, texts)
        except Exception as exc:
            timer.done(as_fleetchat_error(exc).status)
            raise
        vectors: list[Any] = result["embeddings"]
        if req.encoding_format == "base64":
            vectors = [_encode_base64(v) for v in vectors]
        timer.done(200, int(result.get("prompt_tokens") or 0), 0)
        body = oa.embedding_response(req.model, vectors, int(result.get("prompt_tokens") or 0))
        return Response(orjson.dumps(body), media_type="application/json")

    @v1.get("/models")
    async def models() -> Response:
        names = await router.list_models()
        return Response(orjson.dumps(oa.model_list(names, oa.now())), media_type="application/json")

    @v1.get("/models/{model:path}")
    async def model(model: str) -> Response:
        names = await router.list_models()
        if model not in names:
            names = await router.list_models(fresh=True)
        if model not in names:
            served = ", ".join(names) or "none"
            raise ModelNotFoundError(f"the model {model!r} does not exist; served models: {served}", param="model")
        return Response(orjson.dumps(oa.model_card(model, oa.now())), media_type="application/json")

    app.include_router(v1)

    @app.get("/health")
    async def health() -> Response:
        try:
            names = await router.list_models(fresh=True)
        except FleetchatError as exc:
            body = {"status": "degraded", "controller": settings.controller_address, "error": exc.message}
            return Response(orjson.dumps(body), status_code=503, media_type="application/json")
        body = {"status": "ok", "controller": settings.controller_address, "models": names}
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        workers = await router.worker_status()
        return PlainTextResponse(metrics.render(workers), media_type="text/plain; version=0.0.4")

    return app
