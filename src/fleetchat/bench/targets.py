"""What a benchmark sends requests to: an OpenAI-compatible HTTP server, or an engine in this process.

Both time a request the same way (first text = first token; each chunk carrying text is one arrival)
so the API → worker path can be compared with the engine direct, figure for figure.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from fleetchat.api.upstream import StreamingClient, UpstreamError
from fleetchat.bench.stats import RequestRecord
from fleetchat.protocol.sse import iter_sse_data


class HttpTarget:
    """Streamed chat completions against ``{base_url}/chat/completions`` (base_url ends in /v1)."""

    kind = "http"

    def __init__(self, name: str, base_url: str, model: str | None, api_key: str | None, *,
                 timeout: float = 600.0, ignore_eos: bool = False) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.ignore_eos = ignore_eos
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.headers = headers
        # the streams go through the light client: the load generator shares the CPU with the server
        self.streams = StreamingClient(connect_timeout=10.0, read_timeout=timeout)
        self.client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=4096, max_keepalive_connections=4096), trust_env=False,
        )

    async def prepare(self) -> None:
        """Pick the first chat model the server lists when none was named."""
        if self.model:
            return
        r = await self.client.get("/models")
        r.raise_for_status()
        models = [m["id"] for m in r.json().get("data", [])]
        chat = [m for m in models if "minilm" not in m.lower() and "embed" not in m.lower()]
        if not chat:
            raise SystemExit(f"error: {self.base_url} lists no chat model (models: {models}); pass --model")
        self.model = chat[0]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "base_url": self.base_url, "model": self.model}

    async def send(self, prompt: str, max_tokens: int, temperature: float, seed: int | None) -> RequestRecord:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if seed is not None:
            body["seed"] = seed
        if self.ignore_eos:
            body["ignore_eos"] = True
        start = time.perf_counter()
        rec = RequestRecord(ok=False)
        chunks = 0
        resp = None
        try:
            resp = await self.streams.post(self.base_url + "/chat/completions", orjson.dumps(body),
                                           headers=self.headers)
            if resp.status != 200:
                text = (await resp.read()).decode(errors="replace")[:300]
                rec.error = f"HTTP {resp.status}: {text}"
                rec.latency = time.perf_counter() - start
                return rec
            async for data in iter_sse_data(resp.iter_raw()):
                if data == "[DONE]":
                    break
                event = orjson.loads(data)
                if "error" in event:
                    rec.error = str(event["error"].get("message", event["error"]))
                    break
                for choice in event.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        now = time.perf_counter() - start
                        if rec.ttft is None:
                            rec.ttft = now
                        rec.chunk_times.append(now)
                        chunks += 1
                usage = event.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    rec.output_tokens = int(usage["completion_tokens"])
                    rec.tokens_from_usage = True
        except (UpstreamError, orjson.JSONDecodeError) as exc:
            rec.error = f"{type(exc).__name__}: {exc}"
        finally:
            if resp is not None:
                resp.close()
        rec.latency = time.perf_counter() - start
        if not rec.tokens_from_usage:
            rec.output_tokens = chunks
        rec.ok = not rec.error and rec.ttft is not None
        if not rec.ok and not rec.error:
            rec.error = "the stream carried no text"
        return rec

    async def close(self) -> None:
        await self.client.aclose()
        await self.streams.aclose()


class EngineTarget:
    """The engine's own ``generate`` in this process: the API-free baseline (``--direct``)."""

    kind = "direct"

    def __init__(self, name: str, model_path: str, engine_settings: Any, *, ignore_eos: bool = False) -> None:
        self.name = name
        self.model_path = model_path
        self.settings = engine_settings
        self.ignore_eos = ignore_eos
        self.engine: Any = None

    async def prepare(self) -> None:
        from fleetchat.engines.registry import load_engine

        self.engine = load_engine(self.settings)
        if not hasattr(self.engine, "generate"):
            raise SystemExit(f"error: --direct {self.model_path} is not a chat model")

    def describe(self) -> dict[str, Any]:
        info = self.engine.info if self.engine is not None else None
        return {"name": self.name, "kind": self.kind, "model_path": self.model_path,
                "model": info.name if info else None, "engine": info.engine if info else None}

    async def send(self, prompt: str, max_tokens: int, temperature: float, seed: int | None) -> RequestRecord:
        from fleetchat.protocol.generation import ChatMessage, GenerateRequest, SamplingParams

        request = GenerateRequest(
            messages=[ChatMessage(role="user", content=prompt)],
            params=SamplingParams(temperature=temperature, max_new_tokens=max_tokens, seed=seed,
                                  ignore_eos=self.ignore_eos),
        )
        start = time.perf_counter()
        rec = RequestRecord(ok=False, tokens_from_usage=True)
        try:
            async for chunk in self.engine.generate(request):
                if chunk.text:
                    now = time.perf_counter() - start
                    if rec.ttft is None:
                        rec.ttft = now
                    rec.chunk_times.append(now)
                rec.output_tokens = chunk.completion_tokens
        except Exception as exc:  # noqa: BLE001 - reported per request, like an HTTP error
            rec.error = f"{type(exc).__name__}: {exc}"
        rec.latency = time.perf_counter() - start
        rec.ok = not rec.error and rec.ttft is not None
        if not rec.ok and not rec.error:
            rec.error = "the engine produced no text"
        return rec

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()
