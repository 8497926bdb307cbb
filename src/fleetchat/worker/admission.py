"""Admission control of a worker: a concurrency limit plus a bounded wait queue.

A request past ``limit`` running and ``max_queue`` waiting is refused at once with OverloadedError
(HTTP 429), never left hanging. Every change of the queue length calls ``on_change`` so the worker
can push its live load to the controller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fleetchat.errors import OverloadedError


class Admission:
    def __init__(self, limit: int, max_queue: int, on_change: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.running = 0
        self.waiting = 0
        self._sem = asyncio.Semaphore(limit)
        self._listeners: list[Callable[[], None]] = [on_change] if on_change else []

    def add_listener(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    @property
    def queue_length(self) -> int:
        """FastChat's definition: running plus waiting requests."""
        return self.running + self.waiting

    def _changed(self) -> None:
        for fn in self._listeners:
            fn()

    async def acquire(self) -> None:
        """Take a slot, waiting in the bounded queue if needed; OverloadedError when the queue is full."""
        if self.running >= self.limit and self.waiting >= self.max_queue:
            raise OverloadedError(
                f"worker overloaded: {self.running} requests running (limit {self.limit}) and "
                f"{self.waiting} waiting (queue limit {self.max_queue}); retry later or add workers"
            )
        self.waiting += 1
        self._changed()
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        self._changed()

    def release(self) -> None:
        self.running -= 1
        self._sem.release()
        self._changed()
