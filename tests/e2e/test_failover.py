"""Two real SmolLM2 workers for one model behind ``fleetchat serve``: load is shared, and killing one
worker mid-load leaves no request hanging while the model stays served (official ``openai`` client);
serve then restarts the dead worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from serve_process import ServeProcess, children_of, start_serve

pytestmark = pytest.mark.slow

MODEL = "smollm2-shared"


def worker_pid(serve: ServeProcess, url: str) -> int:
    """The pid of the serve child listening on ``url``'s port (read from its command line)."""
    port = url.rsplit(":", 1)[1]
    for pid in children_of(serve.proc.pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"worker" in argv and port.encode() in argv:
            return pid
    raise AssertionError(f"no worker child on port {port}")


@pytest.fixture(scope="module")
def serve() -> ServeProcess:
    sp = start_serve(["--model-path", f"smollm2={MODEL}", "--model-path", f"smollm2={MODEL}"], n_workers=2)
    yield sp
    sp.stop()


async def one_stream(client: openai.AsyncOpenAI, i: int, first_token: asyncio.Event) -> str:
    """Stream one reply; returns "ok" or the error's class name. Never allowed to hang (client timeout)."""
    try:
        stream = await client.chat.completions.create(
            model=MODEL, stream=True, max_tokens=48, temperature=0.7, seed=i,
            messages=[{"role": "user", "content": f"Tell me a short story about the number {i}."}],
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first_token.set()
        return "ok"
    except openai.APIError as exc:
        return type(exc).__name__


def test_two_workers_share_load_and_a_killed_one_leaves_no_request_hanging(serve: ServeProcess) -> None:
    assert len(serve.worker_urls) == 2

    def served_by() -> list[int]:
        workers = httpx.get(serve.controller_url + "/workers").json()
        return sorted(w["queue_length"] for w in workers)

    async def scenario() -> tuple[list[str], list[str], list[int], float]:
        client = openai.AsyncOpenAI(base_url=serve.api_url, api_key="EMPTY", max_retries=0, timeout=90)
        first = asyncio.Event()
        tasks = [asyncio.create_task(one_stream(client, i, first)) for i in range(8)]
        await asyncio.wait_for(first.wait(), 60)
        await asyncio.sleep(0.5)  # let every request get dispatched and start
        loads = await asyncio.to_thread(served_by)
        victim = worker_pid(serve, serve.worker_urls[0])
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        during = await asyncio.gather(*tasks)
        settled = time.monotonic() - t0
        after = await asyncio.gather(*(one_stream(client, 100 + i, asyncio.Event()) for i in range(4)))
        await client.close()
        return during, after, loads, settled

    during, after, loads, settled = asyncio.run(scenario())
    print(f"\nqueue lengths before the kill {loads}; results during {during}; after {after}; "
          f"all settled {settled:.1f}s after the kill")
    assert all(n > 0 for n in loads), f"both workers should have work: {loads}"
    # nothing hangs: every request ended (ok, or an error for those on the killed worker)
    assert len(during) == 8 and settled < 60
    assert during.count("ok") >= 1  # the surviving worker's streams completed
    # the model is still served: new requests go to the survivor (or are retried onto it)
    assert after == ["ok"] * 4
    # serve restarts the dead worker, which registers again
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = httpx.get(serve.controller_url + "/workers").json()
        if len(rows) == 2 and all(r["reachable"] is not False for r in rows) and "restarting" in serve.output:
            break
        time.sleep(0.5)
    assert "restarting worker" in serve.output, serve.output
    assert len(rows) == 2, rows
