"""Generation and embeddings from FastChat workers, for the API server's router.

A FastChat 0.2.36 worker (``fastchat.serve.model_worker``, vLLM worker ...) has no ``/v1/generate``: it
takes an already templated prompt on ``/worker_generate_stream`` and answers zero-byte separated JSON
frames, each holding the FULL text so far. :class:`FastChatUpstream` does what FastChat's own OpenAI
server does (``fastchat/serve/openai_api_server.py``) and hands the router the same thing as the typed
path: lists of :class:`~fleetchat.protocol.generation.GenerationChunk` dicts, one list per network read.

* the worker's conversation template is fetched once per (worker, model) from
  ``/worker_get_conv_template`` and rendered with fleetchat's renderers
  (:func:`~fleetchat.conversation.template.template_from_fastchat_dict`, byte-identical to
  ``Conversation.get_prompt``); its ``stop_str`` / ``stop_token_ids`` join the request's;
* ``max_new_tokens`` is capped to the context as FastChat does (``/model_details`` once,
  ``/count_token`` per request), and a prompt that leaves no room is a ContextLengthExceededError;
* frames become deltas; a trailing half UTF-8 character (``\\ufffd``) is held back, as FastChat's
  server strips it; an in-band ``error_code`` becomes the matching fleetchat error;
* embeddings go to ``/worker_get_embeddings``.

Errors raised here go back to the router's retry loop like the typed path's. Closing the generator
closes the upstream connection, which is how a client disconnect reaches the worker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from fleetchat.api.upstream import StreamingClient
from fleetchat.conversation.template import NamedChatTemplate, template_from_fastchat_dict
from fleetchat.errors import (
    ContextLengthExceededError,
    FleetchatError,
    InvalidParameterError,
    InvalidRequestError,
    ModelNotFoundError,
    NoWorkerAvailableError,
    OverloadedError,
    WorkerError,
)
from fleetchat.protocol.fastchat import parse_frames
from fleetchat.protocol.generation import GenerateRequest

# FastChat's integer error codes (fastchat/constants.py:ErrorCode) -> fleetchat's error classes;
# anything else (50001 internal, 50002 CUDA OOM, ...) is the worker failing: WorkerError.
_BY_FASTCHAT_CODE: dict[int, type[FleetchatError]] = {
    cls.fastchat_code: cls
    for cls in (InvalidRequestError, InvalidParameterError, ContextLengthExceededError, ModelNotFoundError,
                OverloadedError, NoWorkerAvailableError)
}
_FINISH_REASONS = ("stop", "length", "abort")
_HALF_CHAR = "\ufffd"


def speaks_fastchat(status: int, raw: bytes) -> bool:
    """Whether a worker's answer to one of fleetchat's typed endpoints says "no such route".

    A fleetchat worker answers an OpenAI-shaped error body (its 404 means "no such model"); FastChat's
    FastAPI app answers ``{"detail": "Not Found"}`` (404) or "Method Not Allowed" (405).
    """
    if status not in (404, 405):
        return False
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True
    return not (isinstance(body, dict) and isinstance(body.get("error"), dict))


def error_from_frame(frame: dict[str, Any], address: str) -> FleetchatError:
    """The fleetchat error for a FastChat frame whose ``error_code`` is not 0."""
    code = int(frame.get("error_code") or 0)
    message = str(frame.get("text") or "").strip() or f"error code {code}"
    cls = _BY_FASTCHAT_CODE.get(code)
    if cls is None:
        return WorkerError(f"FastChat worker {address} failed (error_code {code}): {message}")
    return cls(message, param="messages" if cls is ContextLengthExceededError else None)


class FastChatUpstream:
    """Talks FastChat's worker protocol; caches templates and context lengths per (worker, model)."""

    def __init__(self, http: httpx.AsyncClient, streams: StreamingClient) -> None:
        self.http = http
        self.streams = streams
        self._templates: dict[tuple[str, str], NamedChatTemplate] = {}
        self._context: dict[tuple[str, str], int] = {}

    def forget(self, address: str) -> None:
        """Drop what is cached about ``address`` (it failed; whatever answers there next may differ)."""
        for cache in (self._templates, self._context):
            for key in [k for k in cache if k[0] == address]:
                del cache[key]

    # ------------------------------------------------------------------ small JSON calls

    async def _post_json(self, address: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await self.http.post(address + path, json=body)
        except httpx.TransportError as exc:
            raise WorkerError(f"FastChat worker {address} failed: {type(exc).__name__}: {exc or 'closed'}") from None
        if resp.status_code != 200:
            raise WorkerError(f"FastChat worker {address}{path} answered HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise WorkerError(f"FastChat worker {address}{path} sent malformed JSON: {exc}") from None
        if not isinstance(data, dict):
            raise WorkerError(f"FastChat worker {address}{path} sent {resp.text[:200]!r}, not a JSON object")
        if data.get("error_code"):
            raise error_from_frame(data, address)
        return data

    async def template(self, address: str, model: str) -> NamedChatTemplate:
        key = (address, model)
        if key not in self._templates:
            data = await self._post_json(address, "/worker_get_conv_template", {"model": model})
            try:
                self._templates[key] = template_from_fastchat_dict(data.get("conv") or {})
            except InvalidParameterError as exc:
                # the worker's template, not the client's request, is at fault: another worker may do
                raise WorkerError(f"FastChat worker {address}: {exc.message}") from None
        return self._templates[key]

    async def max_new_tokens(self, address: str, model: str, prompt: str, wanted: int | None) -> int:
        """FastChat's ``check_length``: the room left in the context, at most ``wanted``."""
        key = (address, model)
        if key not in self._context:
            data = await self._post_json(address, "/model_details", {"model": model})
            self._context[key] = int(data.get("context_length") or 2048)
        context = self._context[key]
        count = int((await self._post_json(address, "/count_token", {"model": model, "prompt": prompt}))["count"])
        room = min(wanted or 1024 * 1024, context - count)
        if room <= 0:
            raise ContextLengthExceededError(
                f"this model's maximum context length is {context} tokens, but the prompt has {count} tokens; "
                "shorten the messages", param="messages",
            )
        return room

    # ------------------------------------------------------------------ generation

    async def params(self, address: str, request: GenerateRequest) -> dict[str, Any]:
        """FastChat's generation params for ``request`` (``get_gen_params`` + ``check_length``)."""
        model = request.model or ""
        p = request.params
        stop, stop_ids = list(p.stop), list(p.stop_token_ids)
        if request.messages is not None:
            template = await self.template(address, model)
            prompt = template.render(request.messages)
            stop += template.stop
            stop_ids += template.stop_token_ids
        elif request.prompt is not None:
            prompt = request.prompt  # a completion's prompt goes as it is, with the request's stops only
        else:
            raise InvalidParameterError(
                f"the model {model!r} is served by a FastChat worker, which takes text prompts, not token ids",
                param="prompt",
            )
        return {
            "model": model,
            "prompt": prompt,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "repetition_penalty": p.repetition_penalty,
            "presence_penalty": p.presence_penalty,
            "frequency_penalty": p.frequency_penalty,
            "max_new_tokens": await self.max_new_tokens(address, model, prompt, p.max_new_tokens),
            "stop": list(dict.fromkeys(stop)),
            "stop_token_ids": list(dict.fromkeys(stop_ids)),
            "echo": False,  # the API echoes completions' prompts itself
            "logprobs": None,
        }

    async def generate(self, address: str, request: GenerateRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """GenerationChunk dicts from the FastChat worker at ``address``, one list per network read.

        An error frame before any text raises before anything is yielded (so the router may retry);
        later it raises after the text that came before it.
        """
        body = orjson.dumps(await self.params(address, request))
        resp = await self.streams.post(address + "/worker_generate_stream", body)
        try:
            if resp.status != 200:
                raw = await resp.read()
                raise WorkerError(f"FastChat worker {address} answered HTTP {resp.status}: "
                                  f"{raw.decode('utf-8', 'replace')[:300]}")
            frames = _Deltas(request.request_id)
            buffer = b""
            async for data in resp.iter_raw():
                items, buffer = _parse(buffer + data, address)
                batch = []
                for item in items:
                    if item.get("error_code"):
                        if batch:
                            yield batch
                        raise error_from_frame(item, address)
                    chunk = frames.add(item)
                    if chunk is not None:
                        batch.append(chunk)
                if batch:
                    yield batch
            items, _ = _parse(buffer + b"\0", address) if buffer.strip() else ([], b"")
            for item in items:
                if item.get("error_code"):
                    raise error_from_frame(item, address)
                chunk = frames.add(item)
                if chunk is not None:
                    yield [chunk]
            if not frames.finished:
                if not frames.seen:
                    raise WorkerError(f"FastChat worker {address} ended its stream without a frame")
                yield [frames.finish()]
        finally:
            resp.close()  # before its end: closes the connection, so the worker stops

    # ------------------------------------------------------------------ embeddings

    async def embed(self, address: str, model: str, texts: list[str]) -> dict[str, Any]:
        """EmbeddingResult dict from ``/worker_get_embeddings``."""
        data = await self._post_json(address, "/worker_get_embeddings", {"model": model, "input": texts})
        vectors = data.get("embedding")
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise WorkerError(f"FastChat worker {address} sent {len(vectors or [])} embeddings for {len(texts)} inputs")
        return {"embeddings": vectors, "prompt_tokens": int(data.get("token_num") or 0)}


def _parse(buffer: bytes, address: str) -> tuple[list[dict[str, Any]], bytes]:
    try:
        return parse_frames(buffer)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkerError(f"FastChat worker {address} sent a malformed frame: {exc}") from None


class _Deltas:
    """Turns FastChat's full-text frames into GenerationChunk dicts holding only the new text."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.sent = ""
        self.seen = False
        self.finished = False
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk for one frame; None when it adds nothing (or comes after the finish)."""
        self.seen = True
        if self.finished:
            return None  # vLLM's worker may send its final state again
        # a half UTF-8 character decodes to U+FFFD; FastChat's server drops it, and it comes back whole
        text = str(frame.get("text") or "").replace(_HALF_CHAR, "")
        delta = text[len(self.sent):] if len(text) > len(self.sent) else ""
        self.sent += delta
        usage = frame.get("usage") or {}
        self.prompt_tokens = int(usage.get("prompt_tokens") or self.prompt_tokens)
        self.completion_tokens = int(usage.get("completion_tokens") or self.completion_tokens)
        reason = frame.get("finish_reason")
        if reason:
            self.finished = True
            reason = reason if reason in _FINISH_REASONS else "stop"
        if not delta and not reason:
            return None
        return self._chunk(delta, reason)

    def finish(self) -> dict[str, Any]:
        """A worker that ended without a finish reason (some FastChat workers do): it stopped."""
        self.finished = True
        return self._chunk("", "stop")

    def _chunk(self, text: str, reason: str | None) -> dict[str, Any]:
        return {"request_id": self.request_id, "text": text, "token_ids": [], "logprobs": None,
                "finish_reason": reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}
