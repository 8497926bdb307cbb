"""The controller app in-process: FastChat endpoints, /workers, secrets, expiry, probes, dispatch."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI
from fleet_helpers import RoutingTransport, lifespan, serve

from fleetchat.controller.app import create_app
from fleetchat.controller.client import ControllerClient
from fleetchat.controller.settings import ControllerSettings
from fleetchat.engines.fake import FakeEngine
from fleetchat.errors import NoWorkerAvailableError
from fleetchat.protocol.fastchat import parse_frames
from fleetchat.worker.app import create_app as create_worker
from fleetchat.worker.settings import WorkerSettings

CTL = "http://ctl.test:21001"


def status(models, queue=0):
    return {"model_names": models, "speed": 1, "queue_length": queue}


def make(settings=None, apps=None, **kw):
    routing = RoutingTransport(apps or {})
    app = create_app(settings or ControllerSettings(), http_client=httpx.AsyncClient(transport=routing), **kw)
    routing.apps[CTL] = app
    client = httpx.AsyncClient(transport=routing, base_url=CTL)
    return app, client, routing


async def register(client, address, models, queue=0, headers=None):
    return await client.post(
        "/register_worker",
        json={"worker_name": address, "check_heart_beat": True, "worker_status": status(models, queue)},
        headers=headers or {},
    )


async def test_fastchat_endpoints_shapes():
    app, c, _ = make()
    r = await register(c, "http://w1:1", ["m1", "m2"])
    assert r.status_code == 200 and r.json() is None
    await register(c, "http://w2:2", ["m2"])
    assert (await c.post("/list_models")).json() == {"models": ["m1", "m2"]}
    assert (await c.post("/get_worker_address", json={"model": "m1"})).json() == {"address": "http://w1:1"}
    assert (await c.post("/get_worker_address", json={"model": "nope"})).json() == {"address": ""}
    assert (await c.post("/receive_heart_beat", json={"worker_name": "http://w1:1", "queue_length": 3})).json() == {
        "exist": True
    }
    assert (await c.post("/receive_heart_beat", json={"worker_name": "http://ghost:9", "queue_length": 0})).json() == {
        "exist": False
    }
    assert (await c.get("/test_connection")).json() == "success"
    st = (await c.post("/worker_get_status")).json()
    assert st["model_names"] == ["m1", "m2"] and st["queue_length"] == 3
    health = (await c.get("/health")).json()
    assert health["status"] == "ok" and health["workers"] == 2 and health["dispatch_method"] == "least_load"
    rows = (await c.get("/workers")).json()
    assert [(w["address"], w["models"], w["queue_length"]) for w in rows] == [
        ("http://w1:1", ["m1", "m2"], 3),
        ("http://w2:2", ["m2"], 0),
    ]
    assert all(0 <= w["heartbeat_age_s"] < 5 for w in rows)


async def test_bad_body_is_a_400_error_body():
    _, c, _ = make()
    r = await c.post("/register_worker", json={"nope": 1})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "worker_name" in err["message"]


@pytest.mark.parametrize(
    "headers, ok",
    [
        ({}, False),
        ({"Authorization": "Bearer wrong"}, False),
        ({"Authorization": "Bearer s3cret"}, True),
        ({"X-Fleetchat-Secret": "s3cret"}, True),
    ],
)
async def test_registration_secret(headers, ok):
    _, c, _ = make(ControllerSettings(controller_secret="s3cret"))
    r = await register(c, "http://w1:1", ["m"], headers=headers)
    hb = await c.post("/receive_heart_beat", json={"worker_name": "http://w1:1"}, headers=headers)
    if ok:
        assert r.status_code == 200 and hb.json() == {"exist": True}
        assert (await c.post("/list_models")).json()["models"] == ["m"]
    else:
        assert r.status_code == 403 and hb.status_code == 403
        err = r.json()["error"]
        assert err["code"] == "permission_denied" and "--controller-secret" in err["message"]
        assert (await c.post("/list_models")).json()["models"] == []


async def test_stale_workers_expire_and_heartbeats_keep_them():
    app, c, _ = make(ControllerSettings(heart_beat_expiration=0.4, sweep_interval=0.05))
    async with lifespan(app):
        await register(c, "http://beating:1", ["m"])
        await register(c, "http://silent:2", ["m"])
        for _ in range(8):
            await asyncio.sleep(0.1)
            await c.post("/receive_heart_beat", json={"worker_name": "http://beating:1", "queue_length": 0})
        addresses = [w["address"] for w in (await c.get("/workers")).json()]
        assert addresses == ["http://beating:1"]
        hb = await c.post("/receive_heart_beat", json={"worker_name": "http://silent:2", "queue_length": 0})
        assert hb.json() == {"exist": False}


async def test_refresh_keeps_busy_worker_and_flags_unreachable_one():
    slow = FastAPI()

    @slow.post("/worker_get_status")
    async def slow_status():
        await asyncio.sleep(1.0)
        return status(["m"])

    app, c, routing = make(ControllerSettings(probe_timeout=0.2))
    async with serve(slow) as slow_url:  # real socket: in-process transports ignore timeouts
        await register(c, slow_url, ["m"])
        await register(c, "http://wrong-address:2", ["m"])  # nothing listens there
        r = await c.post("/refresh_all_workers")
        assert r.status_code == 200
        rows = {w["address"]: w for w in (await c.get("/workers")).json()}
        assert set(rows) == {slow_url, "http://wrong-address:2"}
        assert rows[slow_url]["reachable"] is not False and "timed out" in rows[slow_url]["probe_error"]
        assert rows["http://wrong-address:2"]["reachable"] is False
        assert "ConnectError" in rows["http://wrong-address:2"]["probe_error"]
        # unreachable workers get no traffic; the busy one still does
        for _ in range(5):
            assert (await c.post("/get_worker_address", json={"model": "m"})).json()["address"] == slow_url


async def test_registration_probe_marks_wrong_address_in_background():
    app, c, _ = make()
    await register(c, "http://nobody:3", ["m"])
    # a refused connection is retried for a few seconds first (a worker may register just before it listens)
    for _ in range(150):
        rows = (await c.get("/workers")).json()
        if rows[0]["reachable"] is False:
            break
        await asyncio.sleep(0.1)
    assert rows[0]["reachable"] is False
    assert (await c.post("/list_models")).json()["models"] == []


async def test_register_without_status_asks_the_worker():
    worker = create_worker(FakeEngine("fake-a"), WorkerSettings(no_register=True))
    app, c, _ = make(apps={"http://wa:1": worker})
    r = await c.post("/register_worker", json={"worker_name": "http://wa:1", "check_heart_beat": True})
    assert r.status_code == 200
    assert (await c.post("/list_models")).json()["models"] == ["fake-a"]


async def test_least_load_spreads_a_burst_and_follows_live_load():
    app, c, _ = make(rng=random.Random(5))
    await register(c, "http://a:1", ["m"])
    await register(c, "http://b:2", ["m"])
    picks = [(await c.post("/get_worker_address", json={"model": "m"})).json()["address"] for _ in range(8)]
    assert Counter(picks) == {"http://a:1": 4, "http://b:2": 4}
    # a load report from a: a is busy, b idle -> b is chosen until b reports load too
    await c.post("/receive_heart_beat", json={"worker_name": "http://a:1", "queue_length": 10})
    await c.post("/receive_heart_beat", json={"worker_name": "http://b:2", "queue_length": 0})
    picks = [(await c.post("/get_worker_address", json={"model": "m"})).json()["address"] for _ in range(5)]
    assert picks == ["http://b:2"] * 5


async def test_controller_as_worker_proxies_the_stream():
    worker = create_worker(FakeEngine("fake-a"), WorkerSettings(no_register=True))
    app, c, _ = make(apps={"http://wa:1": worker})
    await register(c, "http://wa:1", ["fake-a"])
    r = await c.post("/worker_generate_stream", json={"model": "fake-a", "prompt": "hi", "max_new_tokens": 3, "echo": False})
    items, rest = parse_frames(r.content)
    assert rest == b"" and items[-1]["finish_reason"] == "length" and len(items[-1]["text"].split()) == 3
    r = await c.post("/worker_generate_stream", json={"model": "nope", "prompt": "hi"})
    items, _ = parse_frames(r.content)
    assert items == [{"text": "no worker serves model 'nope'", "error_code": 50005}]


async def test_controller_client():
    app, c, routing = make()
    client = ControllerClient(CTL, transport=routing)
    assert await client.list_models() == []
    assert await client.get_worker_address("m") == ""
    await register(c, "http://a:1", ["m"])
    assert await client.list_models() == ["m"]
    assert await client.get_worker_address("m") == "http://a:1"
    assert [w["address"] for w in await client.workers()] == ["http://a:1"]
    await client.refresh()
    await client.aclose()

    down = ControllerClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(NoWorkerAvailableError, match=r"cannot reach the controller at http://127.0.0.1:9"):
        await down.list_models()
    await down.aclose()
