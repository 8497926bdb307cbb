"""FastChat's controller and worker wire types (fschat 0.2.36), as pydantic models.

These keep FastChat's JSON shapes exactly, so FastChat workers can register with fleetchat's
controller and FastChat clients (``test_message``, its OpenAI server) can talk to fleetchat workers.
Unknown fields are ignored (FastChat clients send extras such as ``images`` or ``use_beam_search``).

Stream framing of ``/worker_generate_stream``: each item is ``json.dumps(obj).encode() + b"\\0"`` where
``obj`` is a :class:`StreamItem` holding the FULL text so far (not a delta). Errors are in-band with
HTTP 200: ``{"text": message, "error_code": <int>}`` (see ``FleetchatError.fastchat_code``).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetchat.errors import FleetchatError
from fleetchat.protocol.generation import GenerateRequest, SamplingParams

FRAME_SEP = b"\0"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------------------------
# controller <-> worker


class WorkerStatus(_Lenient):
    """``/worker_get_status`` answer; also sent inside ``/register_worker``."""

    model_names: list[str]
    speed: float = 1
    queue_length: int = 0


class RegisterWorkerRequest(_Lenient):
    worker_name: str  # the worker's base URL, e.g. http://127.0.0.1:21002
    check_heart_beat: bool = True
    worker_status: WorkerStatus | None = None
    multimodal: bool = False


class HeartbeatRequest(_Lenient):
    worker_name: str
    queue_length: int = 0


class HeartbeatResponse(_Lenient):
    exist: bool


class ListModelsResponse(_Lenient):
    models: list[str]


class GetWorkerAddressRequest(_Lenient):
    model: str


class GetWorkerAddressResponse(_Lenient):
    address: str


# --------------------------------------------------------------------------------------------
# worker endpoints


class GenerateParams(_Lenient):
    """FastChat generation params (``fastchat/serve/inference.py:generate_stream`` defaults).

    ``prompt`` is an already templated string. ``echo`` defaults to True as in FastChat's HF worker:
    the text then starts with the prompt.
    """

    model: str | None = None
    prompt: str
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_new_tokens: int = 256
    logprobs: int | None = None
    echo: bool = True
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    request_id: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [v] if v else []
        return v

    def to_generate_request(self, default_model: str | None = None) -> GenerateRequest:
        """The typed request. Raises InvalidParameterError for out-of-range values."""
        params = SamplingParams(
            temperature=self.temperature,
            # FastChat clients send top_p=0 meaning "as greedy as possible"; ours needs (0, 1].
            top_p=min(max(self.top_p, 1e-5), 1.0),
            top_k=self.top_k if self.top_k > 0 else -1,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            max_new_tokens=self.max_new_tokens,
            stop=tuple(s for s in (self.stop or []) if s),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            logprobs=None if self.logprobs is None else max(0, int(self.logprobs)),
        )
        kwargs: dict[str, Any] = {}
        if self.request_id:
            kwargs["request_id"] = self.request_id
        return GenerateRequest(
            model=self.model or default_model, prompt=self.prompt, params=params, echo=self.echo, **kwargs
        )


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class StreamLogprobs(BaseModel):
    """FastChat's cumulative completion logprobs (``text_offset``, ``tokens`` ...)."""

    text_offset: list[int] = []
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float]] = []


class StreamItem(BaseModel):
    """One ``/worker_generate_stream`` item; ``/worker_generate`` answers the last one."""

    text: str
    error_code: int = 0
    usage: Usage | None = None
    finish_reason: str | None = None
    logprobs: StreamLogprobs | None = None

    def frame(self) -> bytes:
        return json.dumps(self.model_dump(exclude_none=True), ensure_ascii=False).encode() + FRAME_SEP


def error_item(err: FleetchatError) -> StreamItem:
    """FastChat's in-band error: the message as ``text`` and the integer ``error_code``."""
    return StreamItem(text=err.message, error_code=err.fastchat_code)


def parse_frames(buffer: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """Split a received byte buffer into complete JSON items and the unfinished rest."""
    *complete, rest = buffer.split(FRAME_SEP)
    return [json.loads(part) for part in complete if part.strip()], rest


class CountTokenRequest(_Lenient):
    model: str | None = None
    prompt: str


class CountTokenResponse(BaseModel):
    count: int
    error_code: int = 0


class ModelRequest(_Lenient):
    """Body of ``/worker_get_conv_template`` and ``/model_details``."""

    model: str | None = None


class ModelDetailsResponse(BaseModel):
    context_length: int


class EmbeddingsRequest(_Lenient):
    model: str | None = None
    input: list[str] = Field(default_factory=list)
    encoding_format: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class EmbeddingsResponse(BaseModel):
    embedding: list[list[float]] | list[str]
    token_num: int
