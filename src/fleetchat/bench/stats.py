"""Figures of one benchmark level, from per-request records. Pure functions, no clock of their own."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are seconds since the request was sent."""

    ok: bool
    ttft: float | None = None
    latency: float = 0.0
    output_tokens: int = 0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk carrying text
    error: str = ""
    tokens_from_usage: bool = False


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class LevelResult:
    concurrency: int
    requests_ok: int
    requests_failed: int
    output_tokens: int
    duration_s: float
    output_tokens_per_s: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    itl_p50_s: float | None  # gap between successive streamed chunks
    tpot_p50_s: float | None  # (latency - ttft) / (tokens - 1) per request
    latency_p50_s: float | None
    latency_p99_s: float | None
    mean_output_tokens: float
    tokens_counted_from: str  # "usage" (the server's count) or "chunks" (one per streamed chunk)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(concurrency: int, records: list[RequestRecord], duration_s: float) -> LevelResult:
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    tokens = sum(r.output_tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [b - a for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:], strict=False)]
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.ttft is not None and r.output_tokens > 1]
    latencies = [r.latency for r in ok]
    errors: list[str] = []
    for r in failed:
        if r.error not in errors:
            errors.append(r.error)
    return LevelResult(
        concurrency=concurrency,
        requests_ok=len(ok),
        requests_failed=len(failed),
        output_tokens=tokens,
        duration_s=round(duration_s, 3),
        output_tokens_per_s=round(tokens / duration_s, 2) if duration_s > 0 else 0.0,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        itl_p50_s=percentile(gaps, 50),
        tpot_p50_s=percentile(tpots, 50),
        latency_p50_s=percentile(latencies, 50),
        latency_p99_s=percentile(latencies, 99),
        mean_output_tokens=round(tokens / len(ok), 1) if ok else 0.0,
        tokens_counted_from="usage" if ok and all(r.tokens_from_usage for r in ok) else "chunks",
        errors=errors[:5],
    )
