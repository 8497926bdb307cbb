"""Dispatch policies: pick a worker for a model. Pure functions of (workers, rng, now).

``lottery``         FastChat's: random choice weighted by ``speed``.
``shortest_queue``  FastChat's: argmin of ``queue_length / speed`` (first one on ties, as FastChat),
                    counting our own recent dispatches so a burst does not all land on one worker.
``least_load``      the default: argmin of the *live* load ``(queue_length + pending) / speed`` with a
                    random tie break. Workers push their queue length to the controller whenever it
                    changes (debounced, on top of the periodic heartbeat), and every dispatch is
                    counted as pending until the worker's next report, so the signal is fresh, not
                    a heartbeat-old number. One controller sees every dispatch, so exact
                    least-outstanding beats power-of-two choices (which helps when many balancers
                    share stale information); random ties spread equal workers evenly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from fleetchat.controller.registry import WorkerRecord

Policy = Callable[[Sequence[WorkerRecord], random.Random, float], WorkerRecord | None]


def lottery(workers: Sequence[WorkerRecord], rng: random.Random, now: float) -> WorkerRecord | None:
    weights = [max(w.speed, 0.0) for w in workers]
    if not workers or sum(weights) < 1e-4:
        return None
    return rng.choices(list(workers), weights=weights, k=1)[0]


def shortest_queue(workers: Sequence[WorkerRecord], rng: random.Random, now: float) -> WorkerRecord | None:
    usable = [w for w in workers if w.speed > 0]
    if not usable:
        return None
    return min(usable, key=lambda w: w.load(now) / w.speed)


def least_load(workers: Sequence[WorkerRecord], rng: random.Random, now: float) -> WorkerRecord | None:
    usable = [w for w in workers if w.speed > 0]
    if not usable:
        return None
    loads = [w.load(now) / w.speed for w in usable]
    best = min(loads)
    return rng.choice([w for w, load in zip(usable, loads, strict=True) if load == best])


POLICIES: dict[str, Policy] = {
    "least_load": least_load,
    "shortest_queue": shortest_queue,
    "lottery": lottery,
}


def choose(method: str, workers: Sequence[WorkerRecord], rng: random.Random, now: float) -> WorkerRecord | None:
    """Apply the named policy; None when no worker can take the request."""
    return POLICIES[method](workers, rng, now)
