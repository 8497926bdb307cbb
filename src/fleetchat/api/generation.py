"""``/v1/chat/completions`` and ``/v1/completions``: OpenAI requests in, worker streams out.

Both endpoints share one flow and differ only in their :class:`Shape` (how a choice, a chunk and a
response look). The flow:

1. validate the body into an OpenAI request, then into one GenerateRequest per choice
   (``n`` per prompt; a seed becomes ``seed + choice`` so choices differ but stay reproducible);
2. start every choice on a worker (concurrently when there are several) and wait for the first
   chunk, so an error before any token (unknown model, prompt too long, no worker) is a real HTTP
   status, not an event in a 200 stream;
3. non-streamed: collect every choice; streamed: SSE chunks as the worker sends them, an optional
   usage chunk (``stream_options.include_usage``), then ``[DONE]``. An error after the stream began
   is an error event followed by ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fleetchat.api.metrics import Metrics, RequestTimer
from fleetchat.api.routing import WorkerRouter
from fleetchat.api.streams import Collected, EventStream, merge, until_disconnected
from fleetchat.errors import as_fleetchat_error
from fleetchat.http_errors import stream_error_events
from fleetchat.protocol import openai as oa
from fleetchat.protocol.generation import GenerateRequest
from fleetchat.protocol.sse import SSE_DONE, sse_event


class Shape:
    """How one endpoint's answers look; subclasses fill in the OpenAI shapes."""

    endpoint = ""
    id_prefix = ""
    opening_role = False

    def chunk(self, id: str, created: int, model: str, choices: list[dict[str, Any]],
              usage: Any = None, with_usage: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def delta(self, index: int, text: str, logprobs: list[dict[str, Any]] | None, offset: int) -> dict[str, Any]:
        raise NotImplementedError

    def finish(self, index: int, reason: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def choice(self, index: int, got: Collected, prefix: str, want_logprobs: bool) -> dict[str, Any]:
        raise NotImplementedError

    def response(self, id: str, created: int, model: str, choices: list[dict[str, Any]],
                 prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        raise NotImplementedError


class ChatShape(Shape):
    endpoint = "chat_completions"
    id_prefix = "chatcmpl"
    opening_role = True
    chunk = staticmethod(oa.chat_chunk)  # type: ignore[assignment]
    response = staticmethod(oa.chat_response)  # type: ignore[assignment]

    def delta(self, index, text, logprobs, offset):  # noqa: ANN001, ANN201
        return {"index": index, "delta": {"content": text},
                "logprobs": oa.chat_logprobs(logprobs) if logprobs else None, "finish_reason": None}

    def finish(self, index, reason):  # noqa: ANN001, ANN201
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": oa.finish_reason(reason)}

    def choice(self, index, got, prefix, want_logprobs):  # noqa: ANN001, ANN201
        logprobs = oa.chat_logprobs(got.logprobs) if want_logprobs else None
        return oa.chat_choice(index, "".join(got.text), got.finish_reason, logprobs)


class TextShape(Shape):
    endpoint = "completions"
    id_prefix = "cmpl"
    chunk = staticmethod(oa.completion_chunk)  # type: ignore[assignment]
    response = staticmethod(oa.completion_response)  # type: ignore[assignment]

    def delta(self, index, text, logprobs, offset):  # noqa: ANN001, ANN201
        lp = oa.completion_logprobs(logprobs, offset) if logprobs else None
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": None}

    def finish(self, index, reason):  # noqa: ANN001, ANN201
        return {"index": index, "text": "", "logprobs": None, "finish_reason": oa.finish_reason(reason)}

    def choice(self, index, got, prefix, want_logprobs):  # noqa: ANN001, ANN201
        logprobs = oa.completion_logprobs(got.logprobs, len(prefix)) if want_logprobs else None
        return oa.completion_choice(index, prefix + "".join(got.text), got.finish_reason, logprobs)


CHAT = ChatShape()
TEXT = TextShape()


class _Job:
    """One validated request: its GenerateRequests, plus what the answer needs to know."""

    def __init__(self, shape: Shape, model: str, n: int, stream: bool, include_usage: bool,
                 want_logprobs: bool, requests: list[GenerateRequest], prefixes: list[str]) -> None:
        self.shape = shape
        self.model = model
        self.n = n
        self.stream = stream
        self.include_usage = include_usage
        self.want_logprobs = want_logprobs
        self.requests = requests
        self.prefixes = prefixes  # echoed prompt text per choice ("" when not echoing)
        self.id = oa.new_id(shape.id_prefix)
        self.created = oa.now()


def chat_job(data: Any) -> _Job:
    req = oa.parse_request(oa.ChatCompletionRequest, data)
    messages = req.chat_messages()
    requests = [GenerateRequest(model=req.model, messages=messages, params=req.sampling(i)) for i in range(req.n)]
    return _Job(CHAT, req.model, req.n, req.stream, req.include_usage, req.logprobs, requests, [""] * req.n)


def completion_job(data: Any) -> _Job:
    req = oa.parse_request(oa.CompletionRequest, data)
    requests, prefixes = [], []
    for prompt in req.prompts():
        for i in range(req.n):
            params = req.sampling(i)
            if isinstance(prompt, str):
                # the prompt text is known here: echo it without asking the worker to
                requests.append(GenerateRequest(model=req.model, prompt=prompt, params=params))
                prefixes.append(prompt if req.echo else "")
            else:
                requests.append(GenerateRequest(model=req.model, prompt_token_ids=prompt, params=params,
                                                echo=req.echo))
                prefixes.append("")
    return _Job(TEXT, req.model, req.n, req.stream, req.include_usage, req.logprobs is not None, requests,
                prefixes)


def _usage(job: _Job, prompt: dict[int, int], completion: dict[int, int]) -> tuple[int, int]:
    # n choices of one prompt share it: count each prompt once (choices n*k .. n*k+n-1)
    prompt_tokens = sum(t for i, t in prompt.items() if i % job.n == 0)
    return prompt_tokens, sum(completion.values())


async def run(job: _Job, router: WorkerRouter, metrics: Metrics, request: Request) -> Response:
    timer = RequestTimer(metrics, job.shape.endpoint, job.model)
    chunks = merge([router.generate(r) for r in job.requests])
    try:
        # the wait for the first token may be long (queued behind others): give up if the client does
        first = await until_disconnected(request, anext(chunks, None))
    except BaseException as exc:
        await chunks.aclose()
        timer.done(as_fleetchat_error(exc).status if isinstance(exc, Exception) else 499)
        raise
    timer.first_token()
    if job.stream:
        return EventStream(_events(job, chunks, first, timer))
    try:
        got = await until_disconnected(request, _collect(job, chunks, first))
    except BaseException as exc:
        timer.done(as_fleetchat_error(exc).status if isinstance(exc, Exception) else 499)
        raise
    finally:
        await chunks.aclose()
    choices = [job.shape.choice(i, g, job.prefixes[i], job.want_logprobs) for i, g in enumerate(got)]
    prompt_tokens, completion_tokens = _usage(
        job, {i: g.prompt_tokens for i, g in enumerate(got)}, {i: g.completion_tokens for i, g in enumerate(got)}
    )
    timer.done(200, prompt_tokens, completion_tokens)
    body = job.shape.response(job.id, job.created, job.model, choices, prompt_tokens, completion_tokens)
    return Response(orjson.dumps(body), media_type="application/json")


async def _collect(job: _Job, chunks: AsyncIterator[tuple[int, list[dict[str, Any]]]],
                   first: tuple[int, list[dict[str, Any]]] | None) -> list[Collected]:
    got = [Collected() for _ in job.requests]
    if first is not None:
        for chunk in first[1]:
            got[first[0]].add(chunk)
        async for index, batch in chunks:
            for chunk in batch:
                got[index].add(chunk)
    return got


async def _events(job: _Job, chunks: AsyncIterator[tuple[int, list[dict[str, Any]]]],
                  first: tuple[int, list[dict[str, Any]]] | None, timer: RequestTimer) -> AsyncIterator[bytes]:
    shape, id, created, model, with_usage = job.shape, job.id, job.created, job.model, job.include_usage
    prompt: dict[int, int] = {}
    completion: dict[int, int] = {}
    offsets = [len(p) for p in job.prefixes]
    status = 499  # until the stream ends one way or the other: the client went away

    def render(index: int, batch: list[dict[str, Any]]) -> bytes:
        return b"".join([render_one(index, chunk) for chunk in batch])

    def render_one(index: int, chunk: dict[str, Any]) -> bytes:
        out = b""
        text = chunk.get("text") or ""
        logprobs = chunk.get("logprobs")
        if text or logprobs:
            choice = shape.delta(index, text, logprobs, offsets[index])
            offsets[index] += len(text)
            out = sse_event(shape.chunk(id, created, model, [choice], None, with_usage))
        prompt[index] = chunk.get("prompt_tokens") or prompt.get(index, 0)
        completion[index] = chunk.get("completion_tokens") or completion.get(index, 0)
        reason = chunk.get("finish_reason")
        if reason:
            out += sse_event(shape.chunk(id, created, model, [shape.finish(index, reason)], None, with_usage))
        return out

    try:
        opening = b""
        for index in range(len(job.requests)):
            if shape.opening_role:
                role = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None}
                opening += sse_event(shape.chunk(id, created, model, [role], None, with_usage))
            if job.prefixes[index]:
                echo = shape.delta(index, job.prefixes[index], None, 0)
                opening += sse_event(shape.chunk(id, created, model, [echo], None, with_usage))
        if first is not None:
            opening += render(*first)
        yield opening
        async for index, batch in chunks:
            out = render(index, batch)
            if out:
                yield out
        end = SSE_DONE
        if with_usage:
            p, c = _usage(job, prompt, completion)
            end = sse_event(shape.chunk(id, created, model, [], oa.usage(p, c), True)) + SSE_DONE
        status = 200
        yield end
    except Exception as exc:  # an error after the stream began: an event, then [DONE]
        status = as_fleetchat_error(exc).status
        yield stream_error_events(exc)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        timer.done(status, *_usage(job, prompt, completion))
