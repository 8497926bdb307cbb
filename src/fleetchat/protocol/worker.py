"""Wire types of fleetchat's own worker endpoints (beyond :mod:`fleetchat.protocol.generation`).

``POST /v1/generate``: body GenerateRequest; 200 answer ``application/x-ndjson``, one GenerationChunk
per line; an error after the stream began is one last line ``{"error": {...}}`` (error_body shape).
An error before streaming is the error's HTTP status with the error_body JSON.
``POST /v1/embeddings``: :class:`WorkerEmbeddingsRequest` -> EmbeddingResult.
``GET /v1/models``: :class:`WorkerModels`. ``GET /health``: :class:`WorkerHealth`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from fleetchat.protocol.generation import ModelInfo

NDJSON = "application/x-ndjson"


class WorkerEmbeddingsRequest(BaseModel):
    model: str | None = None
    input: list[str] = Field(min_length=1)


class HealthInfo(BaseModel):
    ok: bool
    running: int = 0
    waiting: int = 0
    queue_length: int = 0
    limit: int = 0
    max_queue: int = 0
    detail: str = ""


class WorkerModels(BaseModel):
    models: list[ModelInfo]
    health: HealthInfo


class WorkerHealth(BaseModel):
    status: str  # "ok" | "unhealthy"
    worker_address: str
    models: list[str]
    health: HealthInfo
