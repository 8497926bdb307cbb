"""The worker app in-process with the fake engine (and the real embedding model for embeddings)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time

import httpx
import pytest
from fleet_helpers import RoutingTransport, lifespan, serve

from fleetchat.controller.app import create_app as create_controller
from fleetchat.controller.settings import ControllerSettings
from fleetchat.engines.fake import FakeEngine
from fleetchat.errors import PermissionDeniedError
from fleetchat.protocol.fastchat import parse_frames
from fleetchat.protocol.generation import GenerationChunk
from fleetchat.worker.app import create_app
from fleetchat.worker.settings import WorkerSettings

W = "http://worker.test:21002"


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=W)


def worker(engine=None, **settings):
    engine = engine or FakeEngine("fake-model")
    settings.setdefault("no_register", True)
    return engine, create_app(engine, WorkerSettings(**settings))


# ------------------------------------------------------------------ FastChat endpoints


async def test_worker_generate_stream_wire_format():
    engine, app = worker(stream_interval=2)
    async with client_for(app) as c:
        r = await c.post("/worker_generate_stream", json={"model": "fake-model", "prompt": "hello there", "max_new_tokens": 5, "echo": False})
    assert r.status_code == 200 and r.content.endswith(b"\0")
    items, rest = parse_frames(r.content)
    assert rest == b""
    # every 2 steps plus the final one; each item holds the FULL text so far
    assert [len(i["text"].split()) for i in items] == [2, 4, 5]
    assert all(b["text"].startswith(a["text"]) for a, b in zip(items, items[1:], strict=False))
    last = items[-1]
    assert last["finish_reason"] == "length" and last["error_code"] == 0
    assert last["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert "finish_reason" not in items[0]


async def test_echo_defaults_to_true_like_fastchat():
    _, app = worker()
    async with client_for(app) as c:
        r = await c.post("/worker_generate_stream", json={"prompt": "say something", "max_new_tokens": 2})
    items, _ = parse_frames(r.content)
    assert items[-1]["text"].startswith("say something ")


async def test_worker_generate_and_logprobs():
    _, app = worker()
    async with client_for(app) as c:
        r = await c.post("/worker_generate", json={"prompt": "x", "max_new_tokens": 3, "echo": False, "logprobs": 1, "stop": "never-there"})
    body = r.json()
    assert body["error_code"] == 0 and body["finish_reason"] == "length" and len(body["text"].split()) == 3
    lp = body["logprobs"]
    assert len(lp["tokens"]) == 3 and "".join(lp["tokens"]) == body["text"]
    assert lp["text_offset"][0] == 0 and lp["text_offset"][1] == len(lp["tokens"][0])
    assert all(len(t) == 1 for t in lp["top_logprobs"])


async def test_fastchat_errors_are_in_band():
    _, app = worker()
    async with client_for(app) as c:
        bad = await c.post("/worker_generate_stream", json={"prompt": "x", "temperature": 5})
        unknown = await c.post("/worker_generate", json={"model": "other", "prompt": "x"})
        too_long = await c.post("/worker_generate", json={"prompt": "w " * 3000, "max_new_tokens": 10})
    assert bad.status_code == 200
    assert parse_frames(bad.content)[0] == [{"text": "temperature must be between 0 and 2, got 5.0", "error_code": 40302}]
    assert unknown.json()["error_code"] == 40301 and "fake-model" in unknown.json()["text"]
    assert too_long.json()["error_code"] == 40303


async def test_engine_failure_mid_stream_is_an_in_band_error_item():
    _, app = worker(FakeEngine("fake-model", fail="after:2"), stream_interval=1)
    async with client_for(app) as c:
        r = await c.post("/worker_generate_stream", json={"prompt": "x", "max_new_tokens": 5})
    items, _ = parse_frames(r.content)
    assert [i["error_code"] for i in items] == [0, 0, 50001]
    assert "scripted failure" in items[-1]["text"]


async def test_status_count_token_details_conv():
    _, app = worker(FakeEngine("fake-model", context_length=321))
    async with client_for(app) as c:
        assert (await c.post("/worker_get_status")).json() == {"model_names": ["fake-model"], "speed": 1, "queue_length": 0}
        assert (await c.post("/count_token", json={"model": "fake-model", "prompt": "a b c"})).json() == {"count": 3, "error_code": 0}
        assert (await c.post("/model_details", json={"model": "fake-model"})).json() == {"context_length": 321}
        conv = (await c.post("/worker_get_conv_template", json={"model": "fake-model"})).json()["conv"]
    for key in ("name", "system_template", "system_message", "roles", "messages", "offset", "sep_style", "sep", "sep2", "stop_str", "stop_token_ids"):
        assert key in conv


async def test_aliases_and_multiple_models_route_by_name():
    a, b = FakeEngine("a", reply_tokens=3), FakeEngine("b", reply_tokens=3)
    app = create_app({"a": a, "alias-a": a, "b": b}, WorkerSettings(no_register=True))
    async with client_for(app) as c:
        assert (await c.post("/worker_get_status")).json()["model_names"] == ["a", "alias-a", "b"]
        await c.post("/worker_generate", json={"model": "alias-a", "prompt": "p1"})
        await c.post("/worker_generate", json={"model": "b", "prompt": "p2"})
        models = (await c.get("/v1/models")).json()["models"]
    assert len(a.finished) == 1 and len(b.finished) == 1
    assert [m["name"] for m in models] == ["a", "alias-a", "b"]


# ------------------------------------------------------------------ fleetchat endpoints


async def test_v1_generate_ndjson_with_messages():
    _, app = worker()
    async with client_for(app) as c:
        r = await c.post("/v1/generate", json={"messages": [{"role": "user", "content": "hi"}], "params": {"max_new_tokens": 4}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    chunks = [GenerationChunk.model_validate_json(line) for line in r.text.splitlines()]
    assert len(chunks) == 4 and chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 4
    assert all(ch.text.startswith(" ") for ch in chunks)


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"prompt": "x", "params": {"temperature": 3}}, 400, "invalid_value"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, 400, "invalid_value"),
        ({"messages": [{"role": "robot", "content": "y"}]}, 400, "invalid_request"),
        ({"prompt": "x", "model": "other"}, 404, "model_not_found"),
        ({"prompt": "w " * 3000}, 400, "context_length_exceeded"),
    ],
)
async def test_v1_generate_errors_before_streaming_are_http_errors(body, status, code):
    _, app = worker()
    async with client_for(app) as c:
        r = await c.post("/v1/generate", json=body)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


async def test_v1_generate_engine_failures():
    _, app = worker(FakeEngine("fake-model", fail="before"))
    async with client_for(app) as c:
        r = await c.post("/v1/generate", json={"prompt": "x"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"

    _, app = worker(FakeEngine("fake-model", fail="after:2"))
    async with client_for(app) as c:
        r = await c.post("/v1/generate", json={"prompt": "x"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and len(lines) == 3
    assert lines[-1]["error"]["code"] == "engine_error" and "scripted failure" in lines[-1]["error"]["message"]


async def test_v1_models_and_health():
    _, app = worker()
    async with client_for(app) as c:
        models = (await c.get("/v1/models")).json()
        health = await c.get("/health")
    assert models["models"][0]["name"] == "fake-model" and models["health"]["ok"] is True
    assert health.status_code == 200 and health.json()["worker_address"] == "http://127.0.0.1:21002"


# ------------------------------------------------------------------ concurrency, back-pressure, cancellation


async def test_overload_is_refused_at_once_and_status_answers_while_busy():
    engine = FakeEngine("fake-model", token_delay=0.05, reply_tokens=10)
    _, app = worker(engine, limit_worker_concurrency=1, max_queue=1)
    async with client_for(app) as c:
        body = {"prompt": "x", "params": {"max_new_tokens": 10}}
        first = asyncio.create_task(c.post("/v1/generate", json=body))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(c.post("/v1/generate", json=body))  # waits in the queue
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        status = (await c.post("/worker_get_status")).json()
        third = await c.post("/v1/generate", json=body)
        refused_in = time.perf_counter() - t0
        fastchat_third = await c.post("/worker_generate", json={"prompt": "x"})
        r1, r2 = await asyncio.gather(first, second)
    assert status["queue_length"] == 2  # one running + one waiting
    assert third.status_code == 429 and third.json()["error"]["code"] == "overloaded"
    assert "limit 1" in third.json()["error"]["message"]
    assert refused_in < 0.2  # refused, not queued behind 0.5 s of generation
    assert fastchat_third.json()["error_code"] == 42903
    assert r1.status_code == 200 and r2.status_code == 200


@pytest.mark.parametrize("path", ["/v1/generate", "/worker_generate_stream"])
async def test_client_disconnect_aborts_the_generation(path):
    engine = FakeEngine("fake-model", token_delay=0.05, reply_tokens=200)
    _, app = worker(engine, stream_interval=1)
    state = app.state.worker
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as c:
        body = {"prompt": "x", "params": {"max_new_tokens": 200}} if path == "/v1/generate" else {"prompt": "x", "max_new_tokens": 200}
        async with c.stream("POST", path, json=body) as r:
            received = 0
            async for _ in r.aiter_bytes():
                received += 1
                if received >= 2:
                    break
        # the response is closed mid-stream: the engine request must be aborted promptly
        for _ in range(100):
            if engine.aborted:
                break
            await asyncio.sleep(0.02)
        assert len(engine.aborted) == 1 and engine.finished == []
        assert engine.running == 0
        for _ in range(50):
            if state.admission.queue_length == 0:
                break
            await asyncio.sleep(0.02)
        assert state.admission.queue_length == 0  # the slot was given back


async def test_client_leaving_before_the_first_chunk_aborts_the_generation():
    engine = FakeEngine("fake-model", token_delay=6.0, reply_tokens=5)  # 6 s until the first token
    _, app = worker(engine)
    state = app.state.worker
    async with serve(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/v1/generate", json={"prompt": "x", "params": {"max_new_tokens": 5}})
        for _ in range(30):  # within 1.5 s: long before the first token would have come
            if engine.aborted and state.admission.queue_length == 0:
                break
            await asyncio.sleep(0.05)
        assert len(engine.aborted) == 1 and engine.finished == []
        assert state.admission.queue_length == 0


# ------------------------------------------------------------------ registration


async def test_registration_heartbeats_load_reports_and_controller_restart():
    routing = RoutingTransport()
    ctl_url = "http://ctl.test:21001"
    controller = create_controller(ControllerSettings())
    routing.apps[ctl_url] = controller
    engine = FakeEngine("fake-model", token_delay=0.02, reply_tokens=5)
    settings = WorkerSettings(
        controller_address=ctl_url, worker_address=W, heartbeat_interval=0.3, load_report_delay=0.02
    )
    app = create_app(engine, settings, controller_http=httpx.AsyncClient(transport=routing))
    routing.apps[W] = app
    ctl = httpx.AsyncClient(transport=routing, base_url=ctl_url)

    async def workers():
        return (await ctl.get("/workers")).json()

    async with lifespan(app):
        for _ in range(100):
            if await workers():
                break
            await asyncio.sleep(0.02)
        assert [w["address"] for w in await workers()] == [W]
        registrar = app.state.registrar

        # load changes are pushed: during a generation the controller sees queue_length 1
        async with client_for(app) as c:
            task = asyncio.create_task(c.post("/v1/generate", json={"prompt": "x"}))
            seen = []
            while not task.done():
                seen.append((await workers())[0]["queue_length"])
                await asyncio.sleep(0.01)
        assert 1 in seen
        await asyncio.sleep(0.1)
        assert (await workers())[0]["queue_length"] == 0

        # the controller restarts (empty table): the worker is back within one heartbeat interval
        routing.apps[ctl_url] = create_controller(ControllerSettings())
        t0 = time.perf_counter()
        for _ in range(100):
            if await workers():
                break
            await asyncio.sleep(0.02)
        assert [w["address"] for w in await workers()] == [W]
        assert time.perf_counter() - t0 < 0.3 + 0.2
        assert registrar.registrations == 2


async def test_worker_keeps_retrying_while_the_controller_is_down(caplog):
    routing = RoutingTransport()
    settings = WorkerSettings(controller_address="http://down.test:1", worker_address=W, heartbeat_interval=0.2)
    app = create_app(FakeEngine("fake-model"), settings, controller_http=httpx.AsyncClient(transport=routing))
    async with lifespan(app):
        await asyncio.sleep(0.8)
        assert "cannot reach the controller at http://down.test:1" in caplog.text
        routing.apps["http://down.test:1"] = create_controller(ControllerSettings())
        for _ in range(100):
            if app.state.registrar.registered:
                break
            await asyncio.sleep(0.02)
        assert app.state.registrar.registered


async def test_wrong_secret_is_fatal():
    routing = RoutingTransport({"http://ctl.test:1": create_controller(ControllerSettings(controller_secret="right"))})
    fatal: list = []
    settings = WorkerSettings(controller_address="http://ctl.test:1", worker_address=W, controller_secret="wrong")
    app = create_app(
        FakeEngine("fake-model"), settings, controller_http=httpx.AsyncClient(transport=routing), on_fatal=fatal.append
    )
    async with lifespan(app):
        for _ in range(100):
            if fatal:
                break
            await asyncio.sleep(0.02)
    assert len(fatal) == 1 and isinstance(fatal[0], PermissionDeniedError)
    assert "--controller-secret" in str(fatal[0])


# ------------------------------------------------------------------ the real embedding model


@pytest.fixture(scope="module")
def minilm():
    from fleetchat.engines.base import EngineSettings
    from fleetchat.engines.embeddings import load_embedding_engine

    return load_embedding_engine(EngineSettings(model_path="all-minilm-l6-v2"))


@pytest.mark.slow
async def test_embedding_worker_with_real_minilm(minilm):
    app = create_app(minilm, WorkerSettings(no_register=True))
    async with client_for(app) as c:
        ours = (await c.post("/v1/embeddings", json={"input": ["I love dogs", "I adore puppies", "Quantum chromodynamics"]})).json()
        fc = (await c.post("/worker_get_embeddings", json={"model": "all-minilm-l6-v2", "input": ["I love dogs"]})).json()
        fc64 = (await c.post("/worker_get_embeddings", json={"input": ["I love dogs"], "encoding_format": "base64"})).json()
        empty = await c.post("/v1/embeddings", json={"input": []})
        chat_on_embed = await c.post("/v1/generate", json={"prompt": "x"})
    a, b, q = ours["embeddings"]
    dot = lambda x, y: sum(p * r for p, r in zip(x, y, strict=True))  # noqa: E731
    assert len(a) == 384 and abs(dot(a, a) - 1) < 1e-4
    assert dot(a, b) > 0.5 > 0.1 > dot(a, q)
    assert ours["prompt_tokens"] > 6
    assert fc["token_num"] > 0 and fc["embedding"][0] == pytest.approx(a, abs=1e-5)
    raw = base64.b64decode(fc64["embedding"][0])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(a, abs=1e-5)
    assert empty.status_code == 400
    assert chat_on_embed.status_code == 400


@pytest.mark.slow
async def test_status_answers_while_embedding(minilm):
    app = create_app(minilm, WorkerSettings(no_register=True))
    texts = [f"sentence number {i} about " + "many words " * 20 for i in range(128)]
    async with client_for(app) as c:
        task = asyncio.create_task(c.post("/v1/embeddings", json={"input": texts}))
        await asyncio.sleep(0.05)
        latencies = []
        while not task.done():
            t0 = time.perf_counter()
            st = (await c.post("/worker_get_status")).json()
            latencies.append((time.perf_counter() - t0, st["queue_length"]))
            await asyncio.sleep(0.02)
        result = (await task).json()
    assert len(result["embeddings"]) == 128
    busy = [lat for lat, q in latencies if q == 1]
    # A blocked loop would answer once, after the whole embedding; a free one answers all along
    # (the median, not the max: this 2-core machine is shared, single answers can be slow).
    assert len(busy) >= 3, latencies
    assert sorted(busy)[len(busy) // 2] < 0.5, latencies
