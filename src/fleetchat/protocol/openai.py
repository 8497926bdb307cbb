"""OpenAI wire types: requests are validated pydantic models, responses are built as plain dicts.

Requests (:class:`ChatCompletionRequest`, :class:`CompletionRequest`, :class:`EmbeddingRequest`) are
parsed with :func:`parse_request`, which turns every pydantic complaint into an
:class:`~fleetchat.errors.InvalidParameterError` naming the ``param`` the way OpenAI does
(``messages[0].role``). Unknown fields are ignored, as OpenAI's own server does for fields it does not
know; fields we know but cannot honour (``tools``, ``suffix``, ``best_of`` > n ...) are refused with a
400 instead of being silently dropped.

Responses are dicts built by the small functions at the bottom: they sit on the per-token path of
every stream, where a pydantic round trip per chunk would cost more than the rest of the proxy.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from fleetchat.errors import InvalidParameterError
from fleetchat.protocol.generation import ChatMessage, SamplingParams

T = TypeVar("T", bound=BaseModel)

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessageIn(_Request):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def to_message(self, index: int) -> ChatMessage:
        role = _ROLES.get(self.role)
        if role is None:
            raise InvalidParameterError(
                f"messages[{index}].role {self.role!r} is not supported; use one of system, developer, "
                "user, assistant (tool and function messages are not supported)",
                param=f"messages[{index}].role",
            )
        content = self.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise InvalidParameterError(
                        f"messages[{index}].content: only text parts are supported, got {part.type!r}",
                        param=f"messages[{index}].content",
                    )
                texts.append(part.text)
            content = "".join(texts)
        if content is None:
            if role != "assistant":
                raise InvalidParameterError(
                    f"messages[{index}].content is required for role {self.role!r}",
                    param=f"messages[{index}].content",
                )
            content = ""
        return ChatMessage(role=role, content=content)


class _SamplingFields(_Request):
    """Fields shared by chat and text completions."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None
    # extensions shared with vLLM / FastChat
    top_k: int | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("n")
    @classmethod
    def _n_range(cls, v: int) -> int:
        if not 1 <= v <= 128:
            raise ValueError(f"must be between 1 and 128, got {v}")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def _sampling(self, max_new_tokens: int | None, logprobs: int | None, seed_offset: int) -> SamplingParams:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "stop": self._stops(),
            "ignore_eos": self.ignore_eos,
            "logprobs": logprobs,
        }
        for name in ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        if self.seed is not None:
            # n choices with one seed must still differ, and stay reproducible
            kwargs["seed"] = self.seed + seed_offset
        try:
            return SamplingParams(**kwargs)
        except ValidationError as exc:
            raise validation_error(exc) from None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessageIn]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if not self.messages:
            raise InvalidParameterError("messages must hold at least one message", param="messages")
        if self.tools:
            raise InvalidParameterError("tools are not supported by this server", param="tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidParameterError(
                "only response_format {'type': 'text'} is supported", param="response_format"
            )
        if self.top_logprobs is not None:
            if not self.logprobs:
                raise InvalidParameterError("top_logprobs requires logprobs to be true", param="top_logprobs")
            if not 0 <= self.top_logprobs <= 20:
                raise InvalidParameterError(
                    f"top_logprobs must be between 0 and 20, got {self.top_logprobs}", param="top_logprobs"
                )
        return self

    def chat_messages(self) -> list[ChatMessage]:
        return [m.to_message(i) for i, m in enumerate(self.messages)]

    def sampling(self, choice: int = 0) -> SamplingParams:
        max_new = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if max_new is not None and max_new < 1:
            param = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
            raise InvalidParameterError(f"{param} must be at least 1, got {max_new}", param=param)
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling(max_new, logprobs, choice)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise InvalidParameterError("prompt must not be an empty list", param="prompt")
        if self.suffix:
            raise InvalidParameterError("suffix is not supported by this server", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidParameterError("best_of other than n is not supported", param="best_of")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidParameterError(f"logprobs must be between 0 and 20, got {self.logprobs}",
                                        param="logprobs")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: each a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # one prompt given as token ids
        return list(p)

    def sampling(self, choice: int = 0) -> SamplingParams:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidParameterError(f"max_tokens must be at least 1, got {self.max_tokens}",
                                        param="max_tokens")
        return self._sampling(self.max_tokens, self.logprobs, choice)


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _check(self) -> EmbeddingRequest:
        if self.dimensions is not None:
            raise InvalidParameterError("dimensions is not supported by this server", param="dimensions")
        return self

    def texts(self) -> list[str]:
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        if not items:
            raise InvalidParameterError("input must not be empty", param="input")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise InvalidParameterError(
                    "input as token ids is not supported; send strings", param="input"
                )
            if not item:
                raise InvalidParameterError(f"input[{i}] must not be an empty string", param="input")
        return items


# --------------------------------------------------------------------------- validation


_TYPE_LABELS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _is_type_label(part: str) -> bool:
    # pydantic adds the union branch it tried to the location ("str", "list[ContentPart]",
    # "function-after[_check(), ChatMessageIn]"): meaningless to a client
    return part in _TYPE_LABELS or "[" in part or part.startswith(("function-", "is-instance"))


def _param_name(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as OpenAI names params: ``messages[0].role``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _is_type_label(str(part)):
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_error(exc: ValidationError) -> InvalidParameterError:
    """The first pydantic complaint as an OpenAI-style 400 naming its param."""
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    param = _param_name(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        return InvalidParameterError(f"{param} is required", param=param)
    return InvalidParameterError(f"invalid {param}: {msg}", param=param)


def parse_request(cls: type[T], data: Any) -> T:
    """Validate a decoded JSON body; raises InvalidParameterError (400) on any problem."""
    if not isinstance(data, dict):
        raise InvalidParameterError("the request body must be a JSON object", param=None)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Worker TokenLogprob dicts -> OpenAI chat ``logprobs`` ({"content": [...], "refusal": None})."""
    content = [
        {
            "token": it["token"],
            "logprob": it["logprob"],
            "bytes": _token_bytes(it["token"]),
            "top_logprobs": [
                {"token": t["token"], "logprob": t["logprob"], "bytes": _token_bytes(t["token"])}
                for t in it.get("top") or ()
            ],
        }
        for it in items
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(items: list[dict[str, Any]], text_offset: int) -> dict[str, Any]:
    """Worker TokenLogprob dicts -> OpenAI completions ``logprobs`` (tokens, token_logprobs, ...)."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = text_offset
    for it in items:
        tokens.append(it["token"])
        token_logprobs.append(it["logprob"])
        tops.append({t["token"]: t["logprob"] for t in it.get("top") or ()})
        offsets.append(offset)
        offset += len(it["token"])
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def merge_completion_logprobs(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not parts:
        return None
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for p in parts:
        for key in out:
            out[key].extend(p[key])
    return out


def finish_reason(reason: str | None) -> str | None:
    # "abort" only happens when the client went away; OpenAI has no such value
    return "stop" if reason == "abort" else reason


def chat_response(
    id: str, created: int, model: str, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
        "system_fingerprint": None,
    }


def chat_choice(index: int, text: str, reason: str | None, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "logprobs": logprobs,
        "finish_reason": finish_reason(reason),
    }


def chat_chunk(
    id: str, created: int, model: str, choices: list[dict[str, Any]], usage_value: Any = None,
    with_usage: bool = False,
) -> dict[str, Any]:
    chunk = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
             "system_fingerprint": None, "choices": choices}
    if with_usage:
        chunk["usage"] = usage_value
    return chunk


def completion_response(
    id: str, created: int, model: str, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
        "system_fingerprint": None,
    }


def completion_choice(index: int, text: str, reason: str | None, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(reason)}


def completion_chunk(
    id: str, created: int, model: str, choices: list[dict[str, Any]], usage_value: Any = None,
    with_usage: bool = False,
) -> dict[str, Any]:
    chunk = {"id": id, "object": "text_completion", "created": created, "model": model,
             "system_fingerprint": None, "choices": choices}
    if with_usage:
        chunk["usage"] = usage_value
    return chunk


def embedding_response(model: str, vectors: list[Any], prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "fleetchat", "root": name,
            "parent": None}


def model_list(names: list[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(n, created) for n in sorted(names)]}
