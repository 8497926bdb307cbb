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

from fleetchat.protocol.fastchat import parse_frames

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
    print(f"burst of 12 over two workers: {sorted(used.values())}")
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
    print(f"killed worker left /workers {took:.2f}s after the kill wait ended (expiration 2s)")
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
    print(f"restarted controller had its worker back after {took:.2f}s (heartbeat interval 1s)")
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
    # the controller retries a refused status probe for a few seconds before marking it unreachable
    wait_until(lambda: any(w["reachable"] is False for w in workers(ctl)), 30, what="unreachable mark")
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


def test_real_smollm2_worker_streams_through_the_fleet(fleet):
    """The embedded SmolLM2 on the transformers engine, as a real worker process of a real controller."""
    pytest.importorskip("fleetchat.engines.transformers")
    ctl, wp = free_port(), free_port()
    fleet.controller(ctl)
    w = fleet.worker(wp, ctl, "--model-path", "smollm2", *FAST)

    def listed() -> bool:
        assert w.popen.poll() is None, w.log()
        return httpx.post(f"http://127.0.0.1:{ctl}/list_models").json()["models"] == ["smollm2-135m-instruct"]

    wait_until(listed, 180, interval=0.3, what="smollm2 worker registered")
    address = httpx.post(
        f"http://127.0.0.1:{ctl}/get_worker_address", json={"model": "smollm2-135m-instruct"}
    ).json()["address"]
    assert address == f"http://127.0.0.1:{wp}"
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    params = {"model": "smollm2-135m-instruct", "prompt": prompt, "temperature": 0, "max_new_tokens": 12, "echo": False}
    with httpx.stream("POST", address + "/worker_generate_stream", json=params, timeout=120) as r:
        items, buffer = [], b""
        for part in r.iter_bytes():
            new, buffer = parse_frames(buffer + part)
            items.extend(new)
    assert buffer == b"" and len(items) >= 2 and all(i["error_code"] == 0 for i in items)
    assert all(b["text"].startswith(a["text"]) for a, b in zip(items, items[1:], strict=False))  # full text so far
    last = items[-1]
    assert last["finish_reason"] in ("stop", "length") and "Paris" in last["text"]
    assert last["usage"]["prompt_tokens"] > 10 and 0 < last["usage"]["completion_tokens"] <= 12
    # the typed endpoint renders the chat template next to the tokenizer
    r = httpx.post(
        address + "/v1/generate",
        json={"messages": [{"role": "user", "content": "What is the capital of France?"}],
              "params": {"temperature": 0, "max_new_tokens": 12}},
        timeout=120,
    )
    chunks = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and chunks[-1]["finish_reason"] in ("stop", "length")
    assert "Paris" in "".join(c["text"] for c in chunks)
    conv = httpx.post(address + "/worker_get_conv_template", json={}).json()["conv"]
    assert "<|im_end|>" in (conv["stop_str"] or [])
    # the worker's loop stays free while the model generates: status answers at once
    import threading

    done = threading.Event()

    def long_generation() -> None:
        long = {"temperature": 0, "max_new_tokens": 200, "ignore_eos": True}  # ~3 s at 70 tokens/s
        httpx.post(address + "/v1/generate", json={"prompt": prompt, "params": long}, timeout=120)
        done.set()

    threading.Thread(target=long_generation, daemon=True).start()
    latencies = []
    while not done.is_set():
        t0 = time.perf_counter()
        st = httpx.post(address + "/worker_get_status", timeout=5).json()
        latencies.append((time.perf_counter() - t0, st["queue_length"]))
        time.sleep(0.05)
    busy = [lat for lat, q in latencies if q == 1]
    assert len(busy) >= 3 and sorted(busy)[len(busy) // 2] < 0.5, latencies


def test_embedding_worker_process(fleet):
    ctl, wp = free_port(), free_port()
    fleet.controller(ctl)
    w = fleet.worker(wp, ctl, "--model-path", "all-minilm-l6-v2", *FAST)

    def listed() -> bool:
        assert w.popen.poll() is None, w.log()
        return httpx.post(f"http://127.0.0.1:{ctl}/list_models").json()["models"] == ["all-minilm-l6-v2"]

    wait_until(listed, 120, interval=0.3, what="embedding worker registered")
    address = httpx.post(f"http://127.0.0.1:{ctl}/get_worker_address", json={"model": "all-minilm-l6-v2"}).json()["address"]
    ours = httpx.post(address + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["hello", "world"]}).json()
    fc = httpx.post(address + "/worker_get_embeddings", json={"model": "all-minilm-l6-v2", "input": ["hello"]}).json()
    assert len(ours["embeddings"]) == 2 and len(ours["embeddings"][0]) == 384
    assert fc["embedding"][0] == pytest.approx(ours["embeddings"][0], abs=1e-5) and fc["token_num"] == 3
    models = httpx.get(address + "/v1/models").json()["models"]
    assert models[0]["kind"] == "embedding" and models[0]["context_length"] == 256
