"""The API server in front of a FastChat-protocol worker (a scripted stand-in, in this process).

The stand-in speaks FastChat 0.2.36's worker protocol only (no ``/v1/generate``): conversation
template, ``/model_details``, ``/count_token``, zero-byte separated full-text frames, in-band error
codes, ``/worker_get_embeddings``. It registers with a real fleetchat controller; the real API app
serves it over real sockets. The real FastChat worker is checked in tests/e2e/test_fastchat_interop.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from fleet_helpers import serve

from fleetchat.api.app import create_app as create_api
from fleetchat.api.settings import ApiSettings
from fleetchat.controller.app import create_app as create_controller
from fleetchat.conversation import get_chat_template
from fleetchat.protocol.generation import ChatMessage
from fleetchat.protocol.sse import iter_sse_data

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "fc-model"
# full text after each step, as FastChat sends it: step 3 ends in half of "é" (decoded as U+FFFD)
TEXTS = ["The", "The caf", "The caf\ufffd", "The café", "The café is", "The café is open", "The café is open."]
CONTEXT = 40


class FakeFastChatWorker:
    """FastChat's worker endpoints, scripted; records what it was sent."""

    def __init__(self) -> None:
        self.template = get_chat_template(name="zephyr").to_fastchat_dict()
        self.params: list[dict] = []
        self.calls: dict[str, int] = {}
        self.aborted = 0
        self.app = FastAPI()
        app = self.app

        def count(path: str) -> None:
            self.calls[path] = self.calls.get(path, 0) + 1

        @app.post("/worker_get_status")
        async def status() -> dict:
            return {"model_names": [MODEL], "speed": 1, "queue_length": 0}

        @app.post("/worker_get_conv_template")
        async def conv() -> dict:
            count("conv")
            return {"conv": self.template}

        @app.post("/model_details")
        async def details() -> dict:
            count("details")
            return {"context_length": CONTEXT}

        @app.post("/count_token")
        async def count_token(request: Request) -> dict:
            count("count_token")
            return {"count": len((await request.json())["prompt"].split()), "error_code": 0}

        @app.post("/worker_get_embeddings")
        async def embeddings(request: Request) -> dict:
            texts = (await request.json())["input"]
            return {"embedding": [[float(len(t)), 1.0] for t in texts], "token_num": sum(len(t.split()) for t in texts)}

        @app.post("/worker_generate_stream")
        async def generate(request: Request) -> StreamingResponse:
            params = await request.json()
            self.params.append(params)
            return StreamingResponse(self._frames(params))

        @app.post("/v1/{rest:path}")
        async def not_found(rest: str) -> None:  # what FastAPI answers FastChat's clients for unknown routes
            count("v1/" + rest)
            raise HTTPException(404, "Not Found")

    async def _frames(self, params: dict) -> AsyncIterator[bytes]:
        prompt = params["prompt"]
        n_prompt = len(prompt.split())

        def frame(text: str, i: int, reason: str | None = None, code: int = 0) -> bytes:
            usage = {"prompt_tokens": n_prompt, "completion_tokens": i, "total_tokens": n_prompt + i}
            return json.dumps({"text": text, "error_code": code, "usage": usage, "finish_reason": reason}).encode() + b"\0"

        if "FAIL_FIRST" in prompt:
            yield json.dumps({"text": "**NETWORK ERROR**\n\n(boom)", "error_code": 50001}).encode() + b"\0"
            return
        if "CTX_FIRST" in prompt:
            yield json.dumps({"text": "too long", "error_code": 40303}).encode() + b"\0"
            return
        texts = TEXTS if "SLOW" not in prompt else [f"w{i}" for i in range(400)]
        steps = min(params["max_new_tokens"], len(texts))
        finished = False
        try:
            for i in range(steps):
                if "FAIL_LATER" in prompt and i == 2:
                    yield json.dumps({"text": "broke mid-way", "error_code": 50001}).encode() + b"\0"
                    finished = True
                    return
                if "SLOW" in prompt:
                    await asyncio.sleep(0.02)
                yield frame(texts[i], i + 1)
            yield frame(texts[steps - 1], steps, "stop" if steps == len(texts) else "length")
            finished = True
        finally:
            if not finished:
                self.aborted += 1


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet() -> AsyncIterator[dict]:
    worker = FakeFastChatWorker()
    async with contextlib.AsyncExitStack() as stack:
        controller = await stack.enter_async_context(serve(create_controller()))
        worker_url = await stack.enter_async_context(serve(worker.app))
        async with httpx.AsyncClient() as c:
            r = await c.post(controller + "/register_worker", json={
                "worker_name": worker_url, "check_heart_beat": False,
                "worker_status": {"model_names": [MODEL], "speed": 1, "queue_length": 0}})
            assert r.status_code == 200, r.text
        api = await stack.enter_async_context(serve(create_api(ApiSettings(controller_address=controller))))
        async with httpx.AsyncClient(base_url=api, timeout=30) as client:
            yield {"client": client, "worker": worker}


def _chat(text: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": text}],
            **extra}


async def _sse(resp: httpx.Response) -> list:
    return [d if d == "[DONE]" else orjson.loads(d) async for d in iter_sse_data(resp.aiter_bytes())]


async def test_chat_renders_the_workers_template_and_sends_fastchat_params(fleet: dict) -> None:
    worker: FakeFastChatWorker = fleet["worker"]
    r = await fleet["client"].post("/v1/chat/completions", json=_chat("Hello", stop=["STOPME"], temperature=0.5))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "The café is open."
    assert body["choices"][0]["finish_reason"] == "stop"
    params = worker.params[-1]
    expected_prompt = get_chat_template(name="zephyr").render(
        [ChatMessage(role="system", content="Be kind."), ChatMessage(role="user", content="Hello")])
    assert params["prompt"] == expected_prompt
    assert params["stop"] == ["STOPME", "</s>"] and params["stop_token_ids"] == [2]
    assert params["echo"] is False and params["temperature"] == 0.5 and params["model"] == MODEL
    # no max_tokens: the room left in the context, as FastChat computes it
    assert params["max_new_tokens"] == CONTEXT - len(expected_prompt.split())
    assert body["usage"] == {"prompt_tokens": len(expected_prompt.split()), "completion_tokens": 7,
                             "total_tokens": len(expected_prompt.split()) + 7}


async def test_protocol_and_template_are_learnt_once_per_worker(fleet: dict) -> None:
    worker: FakeFastChatWorker = fleet["worker"]
    for _ in range(3):
        r = await fleet["client"].post("/v1/chat/completions", json=_chat("Hi", max_tokens=2))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] == "length"
        assert worker.params[-1]["max_new_tokens"] == 2
    assert worker.calls["conv"] == 1 and worker.calls["details"] == 1
    assert worker.calls.get("v1/generate", 0) == 1  # probed once, then remembered


async def test_streamed_chat_has_deltas_without_half_characters(fleet: dict) -> None:
    async with fleet["client"].stream("POST", "/v1/chat/completions", json=_chat(
            "Hello", stream=True, stream_options={"include_usage": True})) as r:
        assert r.status_code == 200
        events = await _sse(r)
    assert events[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"].get("content", "") for c in events[:-1] if c["choices"]]
    assert "".join(deltas) == "The café is open."
    assert not any("\ufffd" in d for d in deltas)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in events[:-1] if c["choices"]][-1] == "stop"
    assert events[-2]["usage"]["completion_tokens"] == 7


async def test_completion_prompt_goes_as_it_is(fleet: dict) -> None:
    worker: FakeFastChatWorker = fleet["worker"]
    r = await fleet["client"].post("/v1/completions", json={
        "model": MODEL, "prompt": "Once upon", "max_tokens": 4, "echo": True, "stop": ["zzz"]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "Once uponThe café"
    params = worker.params[-1]
    assert params["prompt"] == "Once upon" and params["stop"] == ["zzz"] and params["stop_token_ids"] == []
    assert params["echo"] is False and params["max_new_tokens"] == 4


async def test_token_id_prompts_are_refused(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/completions", json={"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 2})
    assert r.status_code == 400 and "FastChat worker" in r.json()["error"]["message"]


async def test_prompt_over_the_context_is_a_400(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/chat/completions", json=_chat("word " * 60))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded" and str(CONTEXT) in r.json()["error"]["message"]


async def test_error_frames_map_to_fleetchat_errors(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/chat/completions", json=_chat("FAIL_FIRST"))
    assert r.status_code == 502 and "boom" in r.json()["error"]["message"]
    r = await fleet["client"].post("/v1/chat/completions", json=_chat("CTX_FIRST"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    async with fleet["client"].stream("POST", "/v1/chat/completions", json=_chat("FAIL_LATER", stream=True)) as r:
        assert r.status_code == 200
        events = await _sse(r)
    assert events[-1] == "[DONE]" and "broke mid-way" in events[-2]["error"]["message"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-2] if c.get("choices")) == "The caf"


async def test_client_disconnect_closes_the_fastchat_stream(fleet: dict) -> None:
    worker: FakeFastChatWorker = fleet["worker"]
    before = worker.aborted
    async with fleet["client"].stream("POST", "/v1/chat/completions", json=_chat("SLOW", stream=True)) as r:
        async for _ in r.aiter_bytes():
            break
    for _ in range(100):
        if worker.aborted > before:
            break
        await asyncio.sleep(0.02)
    assert worker.aborted == before + 1


async def test_embeddings_from_a_fastchat_worker(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/embeddings", json={"model": MODEL, "input": ["a b", "cde"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["embedding"] for d in body["data"]] == [[3.0, 1.0], [3.0, 1.0]]
    assert body["usage"]["prompt_tokens"] == 3
