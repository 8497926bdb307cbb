"""``fleetchat bench`` against a real ``fleetchat serve`` and the engine direct, with tiny settings.

Checks the JSON's shape and counts only; speed is reported by the benchmark, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from serve_process import start_serve

pytestmark = pytest.mark.slow

LEVEL_FIELDS = {
    "concurrency", "requests_ok", "requests_failed", "output_tokens", "duration_s", "output_tokens_per_s",
    "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "tpot_p50_s", "latency_p50_s", "latency_p99_s",
    "mean_output_tokens", "tokens_counted_from", "errors",
}


@pytest.fixture(scope="module")
def serve():  # noqa: ANN201
    sp = start_serve(["--model-path", "smollm2"], n_workers=1)
    yield sp
    sp.stop()


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetchat.cli.main", "bench", *args],
                          capture_output=True, text=True, timeout=300)


def test_bench_api_and_direct_side_by_side(serve, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "bench.json"
    r = bench("--base-url", serve.api_url, "--direct", "smollm2", "--concurrency", "1,2", "--max-tokens", "8",
              "--requests-per-level", "2", "--ignore-eos", "--json-out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "out tok/s" in r.stdout and "TTFT p50" in r.stdout  # the table
    report = json.loads(out.read_text())
    assert report["config"]["concurrency"] == [1, 2] and report["config"]["max_tokens"] == 8
    assert report["machine"]["cpus"] >= 1
    assert [t["name"] for t in report["results"]] == ["api", "direct"]
    assert report["results"][0]["model"] == "smollm2-135m-instruct"
    for target in report["results"]:
        assert [lv["concurrency"] for lv in target["levels"]] == [1, 2]
        for lv in target["levels"]:
            assert set(lv) == LEVEL_FIELDS
            assert lv["requests_ok"] == 2 and lv["requests_failed"] == 0
            assert lv["output_tokens"] == 16  # ignore_eos: every reply is max_tokens long
            assert lv["tokens_counted_from"] == "usage"
            assert lv["output_tokens_per_s"] > 0 and lv["ttft_p50_s"] > 0
            assert lv["latency_p99_s"] >= lv["latency_p50_s"] >= lv["ttft_p50_s"]


def test_bench_reports_failures_and_exits_nonzero(serve) -> None:  # noqa: ANN001
    r = bench("--base-url", serve.api_url, "--model", "no-such-model", "--concurrency", "1", "--max-tokens", "4",
              "--requests-per-level", "1", "--warmup", "0")
    assert r.returncode == 1
    assert "0 ok, 1 failed" in r.stdout and "HTTP 404" in r.stdout
