"""The benchmark's figures from request records: percentiles, throughput, TTFT, ITL, TPOT, failures."""

from __future__ import annotations

import asyncio

import pytest

from fleetchat.bench.load import run_level
from fleetchat.bench.report import table
from fleetchat.bench.stats import RequestRecord, percentile, summarise


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)


def test_summarise_a_level() -> None:
    records = [
        RequestRecord(ok=True, ttft=0.1, latency=1.1, output_tokens=11, chunk_times=[0.1, 0.2, 0.4],
                      tokens_from_usage=True),
        RequestRecord(ok=True, ttft=0.3, latency=2.3, output_tokens=21, chunk_times=[0.3, 0.5],
                      tokens_from_usage=True),
        RequestRecord(ok=False, error="HTTP 503: busy"),
        RequestRecord(ok=False, error="HTTP 503: busy"),
    ]
    r = summarise(4, records, duration_s=2.0)
    assert (r.requests_ok, r.requests_failed, r.output_tokens) == (2, 2, 32)
    assert r.output_tokens_per_s == 16.0
    assert r.ttft_p50_s == pytest.approx(0.2)
    assert r.itl_p50_s == pytest.approx(0.2)  # gaps 0.1, 0.2, 0.2
    assert r.tpot_p50_s == pytest.approx(0.1)  # (1.1-0.1)/10 and (2.3-0.3)/20
    assert r.latency_p99_s == pytest.approx(2.288)
    assert r.tokens_counted_from == "usage" and r.errors == ["HTTP 503: busy"]
    assert "target" in table([("api", r)])


def test_run_level_keeps_the_concurrency_and_the_count() -> None:
    in_flight = peak = 0

    async def send(i: int) -> RequestRecord:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return RequestRecord(ok=True, ttft=0.001, latency=0.01, output_tokens=1, chunk_times=[0.001])

    result = asyncio.run(run_level(send, 3, requests=10))
    assert result.requests_ok == 10 and peak == 3
    result = asyncio.run(run_level(send, 2, duration=0.05))
    assert result.requests_ok >= 4 and peak == 3
