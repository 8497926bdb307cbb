"""Real controller and worker processes on free ports: dispatch, expiry, restart, CLI diagnostics."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
from fleet_procs import Fleet, free_port, wait_http, wait_until

pytestmark = pytest.mark.slow

FAKE = ("--engine", "fake", "--model-path", "fake-model")
FAST = ("--heartbeat-interval", "0.5")


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.close()


def workers(ctl: int) -> list[dict]:
    return httpx.get(f"http://127.0.0.1:{ctl}/workers", timeout=5).json()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleetchat.cli.main", *args], capture_output=True, text=True, timeout=timeout
    )


async def ask(ctl: int, model: str, n_tokens: int = 8) -> tuple[str, str]:
    """Like the API server: ask the controller for a worker, then stream /v1/generate from it."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=30.0)) as http:
        r = await http.post(f"http://127.0.0.1:{ctl}/get_worker_address", json={"model": model})
        address = r.json()["address"]
        text = ""
        async with http.stream(
            "POST", address + "/v1/generate", json={"prompt": "hi", "params": {"max_new_tokens": n_tokens}}
        ) as resp:
            async for line in resp.aiter_lines():
                if line.strip():
                    text += json.loads(line)["text"]
        return address, text


def test_two_workers_share_load_and_a_killed_one_leaves_within_one_expiration(fleet):
    ctl = free_port()
    fleet.controller(ctl, "--heart-beat-expiration", "2", "--sweep-interval", "0.2")
    env = {"FLEETCHAT_FAKE_TOKEN_DELAY": "0.05"}
    ports = [free_port(), free_port()]
    ws = [fleet.worker(p, ctl, *FAKE, *FAST, env=env) for p in ports]
    addresses = {f"http://127.0.0.1:{p}" for p in ports}
    wait_until(lambda: {w["address"] for w in workers(ctl)} == addresses, 60, what="both workers registered")

    async def burst(n: int) -> list[tuple[str, str]]:
        return await asyncio.gather(*(ask(ctl, "fake-model") for _ in range(n)))

    results = asyncio.run(burst(12))
    used = Counter(a for a, _ in results)
    assert set(used) == addresses and min(used.values()) >= 4, used  # least_load spreads the burst
    assert all(len(text.split()) == 8 for _, text in results)

    # kill one worker mid-load: requests already on it fail fast (no hang), the model stays served
    async def kill_mid_load() -> list:
        tasks = [asyncio.create_task(ask(ctl, "fake-model", 30)) for _ in range(6)]
        await asyncio.sleep(0.4)
        ws[0].kill()
        t0 = time.monotonic()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        return [time.monotonic() - t0, out]

    elapsed, outcomes = asyncio.run(kill_mid_load())
    assert elapsed < 10  # nothing hangs
    assert any(not isinstance(o, BaseException) for o in outcomes)
    dead = f"http://127.0.0.1:{ports[0]}"
    took = wait_until(lambda: dead not in {w["address"] for w in workers(ctl)}, 2 + 1.5, what="dead worker dropped")
    assert took <= 2 + 1.5
    models = httpx.post(f"http://127.0.0.1:{ctl}/list_models").json()["models"]
    assert models == ["fake-model"]
    results = asyncio.run(burst(4))
    assert {a for a, _ in results} == {f"http://127.0.0.1:{ports[1]}"}


def test_restarted_controller_gets_its_workers_back_within_one_heartbeat(fleet):
    ctl = free_port()
    c1 = fleet.controller(ctl, name="controller-1")
    wp = free_port()
    w = fleet.worker(wp, ctl, *FAKE, "--heartbeat-interval", "1")
    wait_until(lambda: len(workers(ctl)) == 1, 60, what="worker registered")
    c1.kill()
    time.sleep(0.5)
    fleet.controller(ctl, name="controller-2")
    took = wait_until(lambda: len(workers(ctl)) == 1, 5, what="worker back")
    assert took < 1.0 + 0.6, took  # one heartbeat interval (+ a retry backoff step)
    assert "registering again" in w.log() or "cannot reach the controller" in w.log()


def test_status_and_test_message_explain_problems(fleet):
    ctl = free_port()
    down = cli("status", "--controller-address", f"http://127.0.0.1:{ctl}")
    assert down.returncode == 1
    assert f"cannot reach the controller at http://127.0.0.1:{ctl}: is `fleetchat controller` running?" in down.stdout

    fleet.controller(ctl)
    empty = cli("status", "--controller-address", f"http://127.0.0.1:{ctl}")
    assert empty.returncode == 2 and "no workers are registered" in empty.stdout

    good, bad = free_port(), free_port()
    fleet.worker(good, ctl, *FAKE, *FAST)
    # FastChat's classic mistake: the advertised address is not where the worker listens
    fleet.worker(bad, ctl, *FAKE, *FAST, "--worker-address", f"http://127.0.0.1:{free_port()}", "--model-names", "lost")
    wait_until(lambda: len(workers(ctl)) == 2, 60, what="two registrations")
    report = cli("status", "--controller-address", f"http://127.0.0.1:{ctl}", "--json")
    body = json.loads(report.stdout)
    assert report.returncode == 2
    assert body["models"] == ["fake-model"]  # the unreachable worker's model is not offered
    assert any("does not answer at that address" in p and "--worker-address" in p for p in body["problems"])
    rows = {w["address"]: w for w in body["workers"]}
    assert rows[f"http://127.0.0.1:{good}"]["answers_here"] is True

    ok = cli("test-message", "--controller-address", f"http://127.0.0.1:{ctl}", "--model-name", "fake-model")
    assert ok.returncode == 0, ok.stderr
    assert "Models: fake-model" in ok.stdout and f"worker_addr: http://127.0.0.1:{good}" in ok.stdout
    assert len(ok.stdout.split("assistant:")[1].split()) == 12  # the fake engine's full reply

    missing = cli("test-message", "--controller-address", f"http://127.0.0.1:{ctl}", "--model-name", "nope")
    assert missing.returncode == 1 and "No available workers for nope; served models: fake-model" in missing.stderr


def test_worker_with_wrong_secret_exits_with_a_clear_message(fleet):
    ctl = free_port()
    fleet.controller(ctl, "--controller-secret", "right")
    w = fleet.worker(free_port(), ctl, *FAKE, "--controller-secret", "wrong")
    assert w.popen.wait(60) == 1
    assert "refused this worker" in w.log() and "--controller-secret" in w.log()
    ok = fleet.worker(free_port(), ctl, *FAKE, env={"FLEETCHAT_CONTROLLER_SECRET": "right"})
    wait_until(lambda: len(workers(ctl)) == 1, 60, what="worker with the right secret registered")
    assert ok.popen.poll() is None


def test_worker_starts_before_the_controller(fleet):
    ctl, wp = free_port(), free_port()
    w = fleet.worker(wp, ctl, *FAKE, *FAST)
    wait_http(f"http://127.0.0.1:{wp}/health", w)
    time.sleep(1.0)
    assert "cannot reach the controller" in w.log()
    fleet.controller(ctl)
    wait_until(lambda: len(workers(ctl)) == 1, 10, what="late registration")
