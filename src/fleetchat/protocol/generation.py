"""Generation types shared by engines, workers and the API server.

These are the typed messages of fleetchat's own worker endpoint (``/v1/generate``, messages in,
deltas out) and the values an :class:`~fleetchat.engines.base.Engine` consumes and yields. The
OpenAI wire types live in :mod:`fleetchat.protocol.openai`; FastChat's in
:mod:`fleetchat.protocol.fastchat`.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetchat.errors import InvalidParameterError

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "abort"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class SamplingParams(BaseModel):
    """How to pick tokens and when to stop. Validated on construction (InvalidParameterError)."""

    model_config = ConfigDict(frozen=True)

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: disabled
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_new_tokens: int | None = None  # None: up to the context length
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; k >= 0: chosen token's logprob plus k alternatives

    @model_validator(mode="after")
    def _check(self) -> SamplingParams:
        def bad(param: str, why: str) -> InvalidParameterError:
            return InvalidParameterError(f"{param} {why}", param=param)

        if not 0.0 <= self.temperature <= 2.0:
            raise bad("temperature", f"must be between 0 and 2, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise bad("top_k", f"must be -1 (off) or a positive number, got {self.top_k}")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise bad("repetition_penalty", f"must be in (0, 10], got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise bad(name, f"must be between -2 and 2, got {getattr(self, name)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise bad("max_tokens", f"must be at least 1, got {self.max_new_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise bad("top_logprobs", f"must be between 0 and 20, got {self.logprobs}")
        if len(self.stop) > 16 or any(not s for s in self.stop):
            raise bad("stop", "must hold at most 16 non-empty strings")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5 or self.top_k == 1


class GenerateRequest(BaseModel):
    """One generation. Exactly one of ``messages``, ``prompt`` or ``prompt_token_ids`` is given.

    ``messages`` are rendered with the worker's chat template (next to the tokenizer), whose stop
    strings and stop token ids are added to ``params``.
    """

    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    model: str | None = None
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    params: SamplingParams = SamplingParams()
    echo: bool = False  # completions' echo: the first chunk carries the prompt text

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        given = [x is not None for x in (self.messages, self.prompt, self.prompt_token_ids)]
        if sum(given) != 1:
            raise InvalidParameterError(
                "give exactly one of messages, prompt or prompt_token_ids", param="messages"
            )
        if self.messages is not None and not self.messages:
            raise InvalidParameterError("messages must not be empty", param="messages")
        return self


class TopLogprob(BaseModel):
    token: str
    token_id: int
    logprob: float


class TokenLogprob(BaseModel):
    token: str
    token_id: int
    logprob: float
    top: list[TopLogprob] = []


class GenerationChunk(BaseModel):
    """One step of a stream: the text added since the previous chunk (never broken UTF-8).

    The last chunk of a stream has ``finish_reason`` set. Token counts are running totals.
    """

    request_id: str
    text: str = ""
    token_ids: list[int] = []
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ModelInfo(BaseModel):
    """What an engine serves; reported by workers and shown by ``fleetchat status``."""

    name: str
    kind: Literal["chat", "embedding"] = "chat"
    engine: str = ""
    model_path: str = ""
    context_length: int = 2048
    device: str = "cpu"
    dtype: str = ""
    quantization: str | None = None
    conv_template: str | None = None
    max_running: int = 1


class EmbeddingResult(BaseModel):
    embeddings: list[list[float]]
    prompt_tokens: int
