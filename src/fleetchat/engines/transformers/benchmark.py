"""In-process engine benchmark: N concurrent streams straight into the engine (no HTTP).

    python -m fleetchat.engines.transformers.benchmark --concurrency 1,8,32 --max-tokens 256

prints a table and a JSON list. ``run_engine_benchmark`` is what ``fleetchat bench --direct`` calls.
Each level starts ``concurrency`` streaming chat requests at once (greedy, ``ignore_eos`` so every
stream produces exactly ``max_tokens``) and measures aggregate output tokens/s, time to first token
p50/p99 and inter-token latency p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from fleetchat.engines.base import EngineSettings

DEFAULT_PROMPT = "Write a short story about a robot who learns to paint."


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _one_stream(engine: Any, prompt: str, max_tokens: int) -> dict[str, Any]:
    from fleetchat.protocol.generation import ChatMessage, GenerateRequest, SamplingParams

    request = GenerateRequest(
        messages=[ChatMessage(role="user", content=prompt)],
        params=SamplingParams(temperature=0.0, max_new_tokens=max_tokens, ignore_eos=True),
    )
    start = time.perf_counter()
    first = None
    stamps: list[float] = []
    tokens = 0
    async for chunk in engine.generate(request):
        now = time.perf_counter()
        if chunk.token_ids:
            if first is None:
                first = now - start
            stamps.append(now)
        tokens = chunk.completion_tokens
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"tokens": tokens, "ttft": first or 0.0, "gaps": gaps, "latency": time.perf_counter() - start}


async def benchmark_engine(
    engine: Any, concurrency_levels: list[int], max_tokens: int, prompt: str
) -> list[dict]:
    """Run the sweep against an already loaded engine (the same event loop must own it)."""
    results = []
    for level in concurrency_levels:
        start = time.perf_counter()
        runs = await asyncio.gather(*[_one_stream(engine, prompt, max_tokens) for _ in range(level)])
        elapsed = time.perf_counter() - start
        tokens = sum(r["tokens"] for r in runs)
        ttfts = [r["ttft"] for r in runs]
        gaps = [g for r in runs for g in r["gaps"]]
        latencies = [r["latency"] for r in runs]
        results.append(
            {
                "concurrency": level,
                "requests_ok": len(runs),
                "requests_failed": 0,
                "output_tokens": tokens,
                "seconds": round(elapsed, 3),
                "output_tokens_per_s": round(tokens / elapsed, 1) if elapsed else 0.0,
                "per_stream_tokens_per_s": round(
                    statistics.mean(r["tokens"] / r["latency"] for r in runs), 1
                ),
                "ttft_p50_s": round(_percentile(ttfts, 50), 3),
                "ttft_p99_s": round(_percentile(ttfts, 99), 3),
                "itl_p50_ms": round(_percentile(gaps, 50) * 1000, 1),
                "latency_p50_s": round(_percentile(latencies, 50), 3),
                "latency_p99_s": round(_percentile(latencies, 99), 3),
            }
        )
    return results


def run_engine_benchmark(
    settings: EngineSettings,
    concurrency_levels: list[int],
    max_tokens: int = 256,
    prompt: str = DEFAULT_PROMPT,
) -> list[dict]:
    """Load the engine from ``settings``, run the sweep in-process, close it; one dict per level.

    Blocking (it runs its own event loop): call it from a thread when inside one.
    """
    from fleetchat.engines.transformers import load_transformers_engine

    async def main() -> list[dict]:
        engine = load_transformers_engine(settings)
        try:
            await benchmark_engine(engine, [1], 8, prompt)  # warm-up, not reported
            return await benchmark_engine(engine, concurrency_levels, max_tokens, prompt)
        finally:
            await engine.close()

    return asyncio.run(main())


def format_table(results: list[dict]) -> str:
    header = f"{'conc':>5} {'ok':>4} {'tok/s':>8} {'tok/s/stream':>13} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8}"
    lines = [header]
    for r in results:
        lines.append(
            f"{r['concurrency']:>5} {r['requests_ok']:>4} {r['output_tokens_per_s']:>8.1f} "
            f"{r['per_stream_tokens_per_s']:>13.1f} {r['ttft_p50_s']:>8.3f}s {r['ttft_p99_s']:>8.3f}s "
            f"{r['itl_p50_ms']:>6.1f}ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from fleetchat.settings import add_arguments, from_args

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32", help="comma list of concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    add_arguments(parser, EngineSettings)
    args = parser.parse_args(argv)
    settings = from_args(EngineSettings, args)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    results = run_engine_benchmark(settings, levels, args.max_tokens, args.prompt)
    print(format_table(results))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(json.dumps({"results": results, "loadavg": load}, indent=None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
