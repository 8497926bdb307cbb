"""Prometheus metrics of the API server, kept in plain dicts and rendered as the text format.

Counters: requests by endpoint, model and status; prompt and completion tokens by model.
Histograms: request latency and time to first token by endpoint. Gauges: requests in flight, and the
queue length of each worker as the controller last heard it (read at scrape time).
No dependency: the text exposition format is a few lines of code.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from typing import Any

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """Owned by one API app; updated from its event loop only, so no locks."""

    def __init__(self) -> None:
        self.requests: dict[Labels, int] = defaultdict(int)
        self.prompt_tokens: dict[Labels, int] = defaultdict(int)
        self.completion_tokens: dict[Labels, int] = defaultdict(int)
        self.in_flight: dict[Labels, int] = defaultdict(int)
        self.latency: dict[Labels, _Histogram] = {}
        self.ttft: dict[Labels, _Histogram] = {}

    def started(self, endpoint: str) -> None:
        self.in_flight[(("endpoint", endpoint),)] += 1

    def finished(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        self.in_flight[(("endpoint", endpoint),)] -= 1
        self.requests[(("endpoint", endpoint), ("model", model), ("status", str(status)))] += 1
        key = (("endpoint", endpoint),)
        hist = self.latency.get(key) or self.latency.setdefault(key, _Histogram(LATENCY_BUCKETS))
        hist.observe(seconds)

    def rejected(self, endpoint: str, model: str, status: int) -> None:
        """A request refused before any work (bad input, bad key): counted, not timed."""
        self.requests[(("endpoint", endpoint), ("model", model), ("status", str(status)))] += 1

    def first_token(self, endpoint: str, seconds: float) -> None:
        key = (("endpoint", endpoint),)
        hist = self.ttft.get(key) or self.ttft.setdefault(key, _Histogram(TTFT_BUCKETS))
        hist.observe(seconds)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        key = (("model", model),)
        self.prompt_tokens[key] += prompt
        self.completion_tokens[key] += completion

    def render(self, workers: list[dict[str, Any]] | None = None) -> str:
        out: list[str] = []

        def counter(name: str, help: str, values: dict[Labels, int], kind: str = "counter") -> None:
            out.append(f"# HELP {name} {help}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in sorted(values.items()):
                out.append(f"{name}{_labels(labels)} {value}")

        def histogram(name: str, help: str, values: dict[Labels, _Histogram]) -> None:
            out.append(f"# HELP {name} {help}")
            out.append(f"# TYPE {name} histogram")
            for labels, hist in sorted(values.items()):
                running = 0
                for bound, count in zip((*hist.buckets, float("inf")), hist.counts, strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    bucket = _labels(labels, 'le="' + le + '"')
                    out.append(f"{name}_bucket{bucket} {running}")
                out.append(f"{name}_sum{_labels(labels)} {hist.sum}")
                out.append(f"{name}_count{_labels(labels)} {hist.count}")

        counter("fleetchat_api_requests_total", "Requests answered, by endpoint, model and HTTP status.",
                self.requests)
        counter("fleetchat_api_prompt_tokens_total", "Prompt tokens processed, by model.", self.prompt_tokens)
        counter("fleetchat_api_completion_tokens_total", "Completion tokens generated, by model.",
                self.completion_tokens)
        counter("fleetchat_api_requests_in_flight", "Requests being served now, by endpoint.",
                self.in_flight, kind="gauge")
        histogram("fleetchat_api_request_latency_seconds", "Time from request to last byte, by endpoint.",
                  self.latency)
        histogram("fleetchat_api_time_to_first_token_seconds", "Time from request to first token, by endpoint.",
                  self.ttft)
        if workers is not None:
            queue: dict[Labels, int] = {}
            for w in workers:
                address = str(w.get("address") or w.get("worker_address") or "")
                models = w.get("models") or w.get("model_names") or []
                names = ",".join(m if isinstance(m, str) else str(m.get("name", "")) for m in models)
                queue[(("worker", address), ("models", names))] = int(w.get("queue_length") or 0)
            counter("fleetchat_worker_queue_length",
                    "Requests running or waiting on each worker, as last reported to the controller.",
                    queue, kind="gauge")
        return "\n".join(out) + "\n"


class RequestTimer:
    """Times one request for :class:`Metrics`: ``first_token`` once, ``done`` exactly once."""

    __slots__ = ("metrics", "endpoint", "model", "start", "_first", "_done")

    def __init__(self, metrics: Metrics, endpoint: str, model: str) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.model = model
        self.start = time.perf_counter()
        self._first = False
        self._done = False
        metrics.started(endpoint)

    def first_token(self) -> None:
        if not self._first:
            self._first = True
            self.metrics.first_token(self.endpoint, time.perf_counter() - self.start)

    def done(self, status: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        if self._done:
            return
        self._done = True
        self.metrics.finished(self.endpoint, self.model, status, time.perf_counter() - self.start)
        if prompt_tokens or completion_tokens:
            self.metrics.tokens(self.model, prompt_tokens, completion_tokens)
