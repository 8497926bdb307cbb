"""Benchmark output: one table row per (level, target), and the same figures as JSON."""

from __future__ import annotations

import os
import platform
from typing import Any

from fleetchat.bench.stats import LevelResult


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


COLUMNS = ("target", "conc", "ok", "fail", "out tok/s", "TTFT p50", "TTFT p99", "ITL p50", "TPOT p50",
           "lat p50", "lat p99", "tok/req", "vs first")  # "vs first": tok/s relative to the first target


def table(rows: list[tuple[str, LevelResult]]) -> str:
    """Rows in run order; 'vs first' is throughput relative to the first target's row of the same round."""
    lines = []
    first_name = rows[0][0] if rows else ""
    base = 0.0
    for name, r in rows:
        if name == first_name:
            base = r.output_tokens_per_s
        rel = f"{r.output_tokens_per_s / base * 100:.1f}%" if base else "-"
        lines.append((name, str(r.concurrency), str(r.requests_ok), str(r.requests_failed),
                      f"{r.output_tokens_per_s:.1f}", _ms(r.ttft_p50_s), _ms(r.ttft_p99_s), _ms(r.itl_p50_s),
                      _ms(r.tpot_p50_s), f"{(r.latency_p50_s or 0):.2f}s", f"{(r.latency_p99_s or 0):.2f}s",
                      f"{r.mean_output_tokens:.0f}", rel))
    widths = [max(len(c), *(len(line[i]) for line in lines)) if lines else len(c) for i, c in enumerate(COLUMNS)]
    out = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths, strict=True)))]
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))))
    out.append("(times in ms unless marked; ITL = gap between streamed chunks; TPOT = (latency - TTFT) / (tokens - 1))")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        info["loadavg_1m_5m_15m"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def to_json(config: dict[str, Any], targets: list[dict[str, Any]], rows: list[tuple[str, LevelResult]],
            load_before: Any) -> dict[str, Any]:
    results = []
    for t in targets:
        levels = [r.to_dict() for name, r in rows if name == t["name"]]
        results.append({**t, "levels": levels})
    return {"config": config, "machine": {**machine(), "loadavg_before": load_before}, "results": results}
