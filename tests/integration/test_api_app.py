"""The API server in front of a real controller and real workers, all in this process on free ports.

Controller app + worker apps (with a scripted engine whose behaviour each test controls) + API app,
each served by uvicorn on 127.0.0.1:0, talking real HTTP. Checks the OpenAI shapes, streaming,
include_usage, n, logprobs, echo, errors and their statuses, retry on another worker before the
first token, the error event after a stream began, and that a client disconnect aborts the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import pytest_asyncio
import uvicorn

from fleetchat.api.app import create_app as create_api
from fleetchat.api.settings import ApiSettings
from fleetchat.controller.app import create_app as create_controller
from fleetchat.controller.client import ControllerClient
from fleetchat.engines.base import EngineHealth
from fleetchat.errors import ContextLengthExceededError, EngineError
from fleetchat.protocol.generation import (
    GenerateRequest,
    GenerationChunk,
    ModelInfo,
    TokenLogprob,
    TopLogprob,
)
from fleetchat.protocol.sse import iter_sse_data
from fleetchat.worker.app import create_app as create_worker
from fleetchat.worker.settings import WorkerSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

WORDS = [f"w{i} " for i in range(1000)]


class ScriptedEngine:
    """Answers with "w0 w1 w2 ..." one word per token; behaviour switches are plain attributes."""

    def __init__(self, name: str, context_length: int = 512) -> None:
        self.info = ModelInfo(name=name, engine="scripted", context_length=context_length, max_running=64)
        self.delay = 0.0
        self.fail_before_first = False
        self.fail_after = None  # fail after this many tokens
        self.started: list[str] = []
        self.aborted: list[str] = []
        self.requests: list[GenerateRequest] = []

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        self.started.append(request.request_id)
        prompt = request.prompt or " ".join(m.content for m in request.messages or [])
        prompt_tokens = len(prompt.split()) if request.prompt_token_ids is None else len(request.prompt_token_ids)
        if self.fail_before_first:
            raise EngineError("scripted failure before the first token")
        max_new = request.params.max_new_tokens or 16
        if prompt_tokens + max_new > self.info.context_length:
            raise ContextLengthExceededError(
                f"prompt of {prompt_tokens} tokens plus max_tokens {max_new} exceeds the context length "
                f"{self.info.context_length}", param="messages")
        offset = (request.params.seed or 0) % 7
        finished = False
        try:
            for i in range(max_new):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.fail_after is not None and i >= self.fail_after:
                    raise EngineError("scripted failure mid-stream")
                text = WORDS[i + offset]
                stop_hit = any(s in text for s in request.params.stop)
                logprobs = None
                if request.params.logprobs is not None:
                    top = [TopLogprob(token=WORDS[j], token_id=j, logprob=-0.5 * (j + 1))
                           for j in range(request.params.logprobs)]
                    logprobs = [TokenLogprob(token=text, token_id=i, logprob=-0.25, top=top)]
                last = stop_hit or i == max_new - 1
                yield GenerationChunk(
                    request_id=request.request_id, text="" if stop_hit else text, token_ids=[i],
                    logprobs=logprobs, finish_reason=("stop" if stop_hit else "length") if last else None,
                    prompt_tokens=prompt_tokens, completion_tokens=i + 1)
                if last:
                    break
            finished = True
        finally:
            if not finished:
                self.aborted.append(request.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def health(self) -> EngineHealth:
        return EngineHealth(ok=True)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def close(self) -> None:
        pass


class Served:
    """A uvicorn server on a free port inside the test's event loop."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.task: asyncio.Task | None = None
        self.url = ""

    async def start(self) -> Served:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task:
            await self.task


class Fleet:
    def __init__(self) -> None:
        self.served: list[Served] = []
        self.engines: dict[str, ScriptedEngine] = {}

    async def add(self, app) -> Served:  # noqa: ANN001
        s = await Served(app).start()
        self.served.append(s)
        return s

    async def add_worker(self, controller_url: str, engine: ScriptedEngine, model: str) -> Served:
        worker = await self.add(create_worker({model: engine}, WorkerSettings(no_register=True)))
        self.engines[worker.url] = engine
        async with httpx.AsyncClient() as c:
            r = await c.post(controller_url + "/register_worker", json={
                "worker_name": worker.url, "check_heart_beat": False,
                "worker_status": {"model_names": [model], "speed": 1, "queue_length": 0}})
            assert r.status_code == 200, r.text
        return worker


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet() -> AsyncIterator[dict]:
    f = Fleet()
    controller = await f.add(create_controller())
    chat = ScriptedEngine("tiny")
    await f.add_worker(controller.url, chat, "tiny")
    api = await f.add(create_api(ApiSettings(controller_address=controller.url, model_list_ttl=0.0)))
    keyed = await f.add(create_api(ApiSettings(controller_address=controller.url, api_keys=("k1", "k2"))))
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        yield {"fleet": f, "controller": controller.url, "api": api.url, "keyed": keyed.url, "client": client,
               "engine": chat}
    for s in reversed(f.served):
        await s.stop()


async def _sse(resp: httpx.Response) -> list:
    return [d if d == "[DONE]" else orjson.loads(d) async for d in iter_sse_data(resp.aiter_bytes())]


def _msgs(text: str = "hello there") -> list[dict]:
    return [{"role": "user", "content": text}]


async def test_models_lists_the_workers_model(fleet: dict) -> None:
    r = await fleet["client"].get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny"]
    assert body["data"][0]["object"] == "model"
    r = await fleet["client"].get("/v1/models/tiny")
    assert r.json()["id"] == "tiny"
    r = await fleet["client"].get("/v1/models/nope")
    assert r.status_code == 404 and "tiny" in r.json()["error"]["message"]


async def test_chat_non_streamed(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/chat/completions",
                                   json={"model": "tiny", "messages": _msgs(), "max_tokens": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "w0 w1 w2 ", "refusal": None}
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_max_completion_tokens_wins_over_max_tokens(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/chat/completions", json={
        "model": "tiny", "messages": _msgs(), "max_tokens": 9, "max_completion_tokens": 2})
    assert r.json()["usage"]["completion_tokens"] == 2


async def test_chat_streamed_with_usage(fleet: dict) -> None:
    async with fleet["client"].stream("POST", "/v1/chat/completions", json={
        "model": "tiny", "messages": _msgs(), "max_tokens": 4, "stream": True,
        "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = await _sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "w0 w1 w2 w3 "
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_stream_without_usage_has_no_usage_field(fleet: dict) -> None:
    async with fleet["client"].stream("POST", "/v1/chat/completions", json={
        "model": "tiny", "messages": _msgs(), "max_tokens": 2, "stream": True}) as r:
        events = await _sse(r)
    assert all("usage" not in c for c in events[:-1])


async def test_n_choices_run_concurrently_and_differ_by_seed(fleet: dict) -> None:
    engine = fleet["engine"]
    engine.delay = 0.05
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await fleet["client"].post("/v1/chat/completions", json={
            "model": "tiny", "messages": _msgs(), "max_tokens": 6, "n": 3, "seed": 1})
        elapsed = loop.time() - t0
    finally:
        engine.delay = 0.0
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in body["choices"]]
    assert texts[0].startswith("w1 ") and texts[1].startswith("w2 ") and texts[2].startswith("w3 ")
    assert body["usage"]["completion_tokens"] == 18 and body["usage"]["prompt_tokens"] == 2
    assert elapsed < 3 * 6 * 0.05  # sequential would take at least 0.9 s


async def test_n_streamed_each_choice_has_its_index(fleet: dict) -> None:
    async with fleet["client"].stream("POST", "/v1/chat/completions", json={
        "model": "tiny", "messages": _msgs(), "max_tokens": 3, "n": 2, "stream": True}) as r:
        events = await _sse(r)
    by_index: dict[int, str] = {0: "", 1: ""}
    finishes = {}
    for c in events[:-1]:
        for ch in c["choices"]:
            by_index[ch["index"]] += ch["delta"].get("content", "")
            if ch["finish_reason"]:
                finishes[ch["index"]] = ch["finish_reason"]
    assert by_index == {0: "w0 w1 w2 ", 1: "w0 w1 w2 "}
    assert finishes == {0: "length", 1: "length"}


async def test_chat_logprobs(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/chat/completions", json={
        "model": "tiny", "messages": _msgs(), "max_tokens": 2, "logprobs": True, "top_logprobs": 2})
    lp = r.json()["choices"][0]["logprobs"]
    assert [t["token"] for t in lp["content"]] == ["w0 ", "w1 "]
    assert lp["content"][0]["logprob"] == -0.25
    assert lp["content"][0]["bytes"] == list(b"w0 ")
    assert [t["token"] for t in lp["content"][0]["top_logprobs"]] == ["w0 ", "w1 "]
    assert fleet["engine"].requests[-1].params.logprobs == 2


async def test_stop_and_seed_reach_the_engine(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/chat/completions", json={
        "model": "tiny", "messages": _msgs(), "max_tokens": 8, "stop": "w2", "seed": 7, "temperature": 0.5})
    assert r.json()["choices"][0]["message"]["content"] == "w0 w1 "
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    params = fleet["engine"].requests[-1].params
    assert params.stop == ("w2",) and params.seed == 7 and params.temperature == 0.5


async def test_completion_with_echo_and_logprobs(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/completions", json={
        "model": "tiny", "prompt": "once upon", "max_tokens": 2, "echo": True, "logprobs": 1})
    body = r.json()
    assert body["object"] == "text_completion"
    choice = body["choices"][0]
    assert choice["text"] == "once uponw0 w1 "
    assert choice["logprobs"]["tokens"] == ["w0 ", "w1 "]
    assert choice["logprobs"]["text_offset"] == [9, 12]
    assert choice["logprobs"]["top_logprobs"] == [{"w0 ": -0.5}, {"w0 ": -0.5}]


async def test_completion_default_max_tokens_is_16_and_multiple_prompts(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/completions", json={"model": "tiny", "prompt": ["a", "b c"], "n": 2})
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["completion_tokens"] == 4 * 16
    assert body["usage"]["prompt_tokens"] == 1 + 2


async def test_completion_streamed(fleet: dict) -> None:
    async with fleet["client"].stream("POST", "/v1/completions", json={
        "model": "tiny", "prompt": "x", "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}}) as r:
        events = await _sse(r)
    assert events[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in events[:-2]) == "w0 w1 w2 "
    assert events[-2]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny"}, "messages"),
        ({"model": "tiny", "messages": []}, "messages"),
        ({"messages": _msgs()}, "model"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"model": "tiny", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "tiny", "messages": _msgs(), "temperature": 2.5}, "temperature"),
        ({"model": "tiny", "messages": _msgs(), "temperature": -1}, "temperature"),
        ({"model": "tiny", "messages": _msgs(), "top_p": 1.5}, "top_p"),
        ({"model": "tiny", "messages": _msgs(), "max_tokens": 0}, "max_tokens"),
        ({"model": "tiny", "messages": _msgs(), "n": 0}, "n"),
        ({"model": "tiny", "messages": _msgs(), "top_logprobs": 3}, "top_logprobs"),
        ({"model": "tiny", "messages": _msgs(), "temperature": "hot"}, "temperature"),
    ],
)
async def test_bad_input_is_400_naming_the_param(fleet: dict, body: dict, param: str) -> None:
    r = await fleet["client"].post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert set(err) == {"message", "type", "param", "code"}


async def test_malformed_json_is_400(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/chat/completions", content=b"{not json",
                                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]["message"]


async def test_unknown_model_is_404_listing_models(fleet: dict) -> None:
    r = await fleet["client"].post("/v1/chat/completions", json={"model": "gpt-9", "messages": _msgs()})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and "tiny" in err["message"] and err["param"] == "model"


async def test_context_length_exceeded_is_400_even_when_streaming(fleet: dict) -> None:
    for stream in (False, True):
        r = await fleet["client"].post("/v1/chat/completions", json={
            "model": "tiny", "messages": _msgs("word " * 600), "max_tokens": 4, "stream": stream})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"


async def test_api_keys(fleet: dict) -> None:
    async with httpx.AsyncClient(base_url=fleet["keyed"]) as c:
        r = await c.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await c.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await c.get("/v1/models", headers={"Authorization": "Bearer k2"})
        assert r.status_code == 200
        assert (await c.get("/health")).status_code == 200


async def test_unknown_route_is_openai_shaped_404(fleet: dict) -> None:
    r = await fleet["client"].get("/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


async def test_error_after_stream_began_is_an_event_then_done(fleet: dict) -> None:
    engine = fleet["engine"]
    engine.fail_after = 2
    try:
        async with fleet["client"].stream("POST", "/v1/chat/completions", json={
            "model": "tiny", "messages": _msgs(), "max_tokens": 5, "stream": True}) as r:
            assert r.status_code == 200
            events = await _sse(r)
    finally:
        engine.fail_after = None
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["message"] == "scripted failure mid-stream"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-2]) == "w0 w1 "


async def test_disconnect_aborts_the_worker_request(fleet: dict) -> None:
    engine = fleet["engine"]
    engine.delay = 0.05
    try:
        async with fleet["client"].stream("POST", "/v1/chat/completions", json={
            "model": "tiny", "messages": _msgs(), "max_tokens": 200, "stream": True}) as r:
            async for _ in r.aiter_bytes():
                break
        request_id = engine.started[-1]
        for _ in range(100):
            if request_id in engine.aborted:
                break
            await asyncio.sleep(0.02)
        assert request_id in engine.aborted
    finally:
        engine.delay = 0.0


async def test_non_streamed_disconnect_aborts_too(fleet: dict) -> None:
    engine = fleet["engine"]
    engine.delay = 0.05
    try:
        with contextlib.suppress(httpx.ReadTimeout):
            await fleet["client"].post("/v1/chat/completions", timeout=0.3, json={
                "model": "tiny", "messages": _msgs(), "max_tokens": 200})
        request_id = engine.started[-1]
        for _ in range(100):
            if request_id in engine.aborted:
                break
            await asyncio.sleep(0.02)
        assert request_id in engine.aborted
    finally:
        engine.delay = 0.0


async def test_retry_on_another_worker_before_the_first_token(fleet: dict) -> None:
    f: Fleet = fleet["fleet"]
    broken, healthy = ScriptedEngine("pair"), ScriptedEngine("pair")
    broken.fail_before_first = True
    await f.add_worker(fleet["controller"], broken, "pair")
    await f.add_worker(fleet["controller"], healthy, "pair")
    for _ in range(4):
        r = await fleet["client"].post("/v1/chat/completions", json={
            "model": "pair", "messages": _msgs(), "max_tokens": 2})
        assert r.status_code == 200, r.text
    assert len(healthy.started) == 4
    assert broken.started  # the controller did send some requests to the broken one first


async def test_dead_worker_is_retried_and_only_dead_workers_give_502(fleet: dict) -> None:
    f: Fleet = fleet["fleet"]
    dead_engine = ScriptedEngine("lonely")
    dead = await f.add_worker(fleet["controller"], dead_engine, "lonely")
    await dead.stop()  # registered, but nothing listens any more
    r = await fleet["client"].post("/v1/chat/completions", json={"model": "lonely", "messages": _msgs()})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "worker_failed" and dead.url in r.json()["error"]["message"]


async def test_metrics_count_requests_tokens_and_queue(fleet: dict) -> None:
    await fleet["client"].post("/v1/chat/completions", json={"model": "tiny", "messages": _msgs(), "max_tokens": 2})
    text = (await fleet["client"].get("/metrics")).text
    assert 'fleetchat_api_requests_total{endpoint="chat_completions",model="tiny",status="200"}' in text
    assert 'fleetchat_api_completion_tokens_total{model="tiny"}' in text
    assert "fleetchat_api_request_latency_seconds_bucket" in text
    assert "fleetchat_api_time_to_first_token_seconds_count" in text
    assert "fleetchat_worker_queue_length{" in text
    assert 'status="400"' in text  # the bad inputs above were counted


async def test_health(fleet: dict) -> None:
    r = await fleet["client"].get("/health")
    assert r.status_code == 200 and "tiny" in r.json()["models"]


async def test_controller_client_matches_the_router_contract(fleet: dict) -> None:
    async with ControllerClient(fleet["controller"]) as c:
        workers = await c.workers()
    assert any("tiny" in w["models"] and w["address"].startswith("http://") for w in workers)


async def test_overloaded_worker_is_429(fleet: dict) -> None:
    f: Fleet = fleet["fleet"]
    slow = ScriptedEngine("busy")
    slow.delay = 0.05
    worker = await f.add(create_worker({"busy": slow}, WorkerSettings(
        no_register=True, limit_worker_concurrency=1, max_queue=0)))
    async with httpx.AsyncClient() as c:
        await c.post(fleet["controller"] + "/register_worker", json={
            "worker_name": worker.url, "check_heart_beat": False,
            "worker_status": {"model_names": ["busy"], "speed": 1, "queue_length": 0}})
    client = fleet["client"]
    async with client.stream("POST", "/v1/chat/completions", json={
            "model": "busy", "messages": _msgs(), "max_tokens": 40, "stream": True}) as held:
        assert held.status_code == 200
        r = await client.post("/v1/chat/completions", json={"model": "busy", "messages": _msgs()})
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "rate_limit_error"


async def test_controller_down_is_503() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once the socket is closed
    api = await Served(create_api(ApiSettings(controller_address=f"http://127.0.0.1:{dead}"))).start()
    try:
        async with httpx.AsyncClient(base_url=api.url) as c:
            r = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": _msgs()})
            assert r.status_code == 503
            assert "cannot reach the controller" in r.json()["error"]["message"]
            assert (await c.get("/health")).status_code == 503
            assert (await c.get("/v1/models")).status_code == 503
    finally:
        await api.stop()


async def test_disconnect_before_the_first_token_aborts_too(fleet: dict) -> None:
    """The API gives up on a request whose client left while it waited for the first token.

    (The worker notices the closed connection when it has a chunk to send, so the engine request is
    aborted at the first token, long before the 5 x 1 s it would run to completion.)
    """
    engine = fleet["engine"]
    engine.delay = 1.0  # a long wait for each token (a queue, a long prefill)
    try:
        with contextlib.suppress(httpx.ReadTimeout):
            async with fleet["client"].stream("POST", "/v1/chat/completions", timeout=0.3, json={
                    "model": "tiny", "messages": _msgs(), "max_tokens": 5, "stream": True}) as r:
                await r.aread()
        request_id = engine.started[-1]
        for _ in range(100):
            if request_id in engine.aborted:
                break
            await asyncio.sleep(0.03)
        assert request_id in engine.aborted
    finally:
        engine.delay = 0.0
