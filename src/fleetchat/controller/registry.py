"""The controller's worker table, as pure functions of (table, now).

The table maps a worker address to an immutable :class:`WorkerRecord`. Every operation returns a new
table, so the controller app owns one value and replaces it, and tests drive time by hand.

Liveness comes from heartbeats only: a worker whose last heartbeat is older than the expiration is
dropped (unless it registered with ``check_heart_beat=False``). Status probes (``/refresh_all_workers``,
the probe after registration) never drop a worker for being slow; a probe that cannot connect at all
marks it unreachable, which keeps it listed in ``/workers`` (so ``fleetchat status`` can explain the
wrong ``--worker-address``) but out of ``/list_models`` and dispatch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A dispatch not yet reflected in a load report counts toward the worker's load for this long.
PENDING_HORIZON_S = 10.0


@dataclass(frozen=True)
class WorkerRecord:
    address: str
    model_names: tuple[str, ...]
    speed: float = 1.0
    queue_length: int = 0
    check_heart_beat: bool = True
    multimodal: bool = False
    registered_at: float = 0.0
    last_heartbeat: float = 0.0
    last_report: float = 0.0  # when queue_length was last reported
    pending: tuple[float, ...] = ()  # dispatch times since the last load report
    reachable: bool | None = None  # last probe: None = not probed yet
    probe_error: str = ""

    def load(self, now: float) -> int:
        """Reported queue length plus recent dispatches the worker has not reported yet."""
        return self.queue_length + sum(1 for t in self.pending if now - t < PENDING_HORIZON_S)


Table = Mapping[str, WorkerRecord]


def register(
    table: Table,
    address: str,
    model_names: list[str] | tuple[str, ...],
    now: float,
    *,
    speed: float = 1.0,
    queue_length: int = 0,
    check_heart_beat: bool = True,
    multimodal: bool = False,
) -> dict[str, WorkerRecord]:
    """Add or replace a worker (a re-registration keeps its probe result)."""
    old = table.get(address)
    record = WorkerRecord(
        address=address,
        model_names=tuple(model_names),
        speed=float(speed),
        queue_length=int(queue_length),
        check_heart_beat=check_heart_beat,
        multimodal=multimodal,
        registered_at=now,
        last_heartbeat=now,
        last_report=now,
        reachable=old.reachable if old else None,
        probe_error=old.probe_error if old else "",
    )
    return {**table, address: record}


def heartbeat(table: Table, address: str, queue_length: int, now: float) -> tuple[dict[str, WorkerRecord], bool]:
    """Record a heartbeat (with its load report). Returns (table, exist); exist=False means re-register."""
    old = table.get(address)
    if old is None:
        return dict(table), False
    record = dataclasses.replace(
        old, queue_length=int(queue_length), last_heartbeat=now, last_report=now, pending=()
    )
    return {**table, address: record}, True


def expire(table: Table, now: float, expiration: float) -> tuple[dict[str, WorkerRecord], list[str]]:
    """Drop workers whose last heartbeat is older than ``expiration`` seconds. Returns (table, dropped)."""
    kept: dict[str, WorkerRecord] = {}
    dropped: list[str] = []
    for address, record in table.items():
        if record.check_heart_beat and now - record.last_heartbeat > expiration:
            dropped.append(address)
        else:
            kept[address] = record
    return kept, dropped


def remove(table: Table, address: str) -> dict[str, WorkerRecord]:
    return {a: r for a, r in table.items() if a != address}


def record_probe(
    table: Table,
    address: str,
    now: float,
    *,
    status: Mapping[str, Any] | None = None,
    error: str = "",
    unreachable: bool = False,
) -> dict[str, WorkerRecord]:
    """Apply a status probe's outcome.

    ``status``: the worker answered; its models and queue length are taken.
    ``unreachable``: nothing answers at the address (connection refused, DNS, wrong HTTP answer).
    Otherwise (e.g. a timeout) the worker is left as it was: a busy worker is not a dead one.
    """
    old = table.get(address)
    if old is None:
        return dict(table)
    if status is not None:
        record = dataclasses.replace(
            old,
            model_names=tuple(status.get("model_names", old.model_names)),
            speed=float(status.get("speed", old.speed)),
            queue_length=int(status.get("queue_length", old.queue_length)),
            last_report=now,
            pending=(),
            reachable=True,
            probe_error="",
        )
    elif unreachable:
        record = dataclasses.replace(old, reachable=False, probe_error=error)
    else:
        record = dataclasses.replace(old, probe_error=error)
    return {**table, address: record}


def record_dispatch(table: Table, address: str, now: float) -> dict[str, WorkerRecord]:
    """Count a dispatch toward the worker's load until its next report."""
    old = table.get(address)
    if old is None:
        return dict(table)
    pending = tuple(t for t in old.pending if now - t < PENDING_HORIZON_S) + (now,)
    return {**table, address: dataclasses.replace(old, pending=pending)}


def serving(table: Table) -> list[WorkerRecord]:
    """Workers that may receive requests: all but those a probe found unreachable."""
    return [r for r in table.values() if r.reachable is not False]


def candidates(table: Table, model: str) -> list[WorkerRecord]:
    return [r for r in serving(table) if model in r.model_names]


def models(table: Table, *, multimodal: bool | None = None) -> list[str]:
    """Sorted union of the served model names (FastChat returns them unsorted)."""
    names: set[str] = set()
    for r in serving(table):
        if multimodal is None or r.multimodal == multimodal:
            names.update(r.model_names)
    return sorted(names)


def describe(table: Table, now: float) -> list[dict[str, Any]]:
    """The ``/workers`` listing: one JSON object per worker, sorted by address."""
    return [
        {
            "address": r.address,
            "models": list(r.model_names),
            "queue_length": r.queue_length,
            "load": r.load(now),
            "speed": r.speed,
            "heartbeat_age_s": round(now - r.last_heartbeat, 3),
            "check_heart_beat": r.check_heart_beat,
            "multimodal": r.multimodal,
            "reachable": r.reachable,
            "probe_error": r.probe_error,
        }
        for r in sorted(table.values(), key=lambda r: r.address)
    ]


def aggregate_status(table: Table) -> dict[str, Any]:
    """The controller's own ``/worker_get_status`` (controller-as-worker, as FastChat)."""
    rs = serving(table)
    return {
        "model_names": models(table),
        "speed": sum(r.speed for r in rs),
        "queue_length": sum(r.queue_length for r in rs),
    }
