"""One request's state inside the engine: its tokens, its slot, its sampling state and its output.

A sequence's tokens are ``prompt_ids + output_ids``; ``num_computed`` of them have their keys and
values in the KV cache. While ``num_computed < len(prompt_ids)`` the sequence is prefilling (in
chunks); afterwards each step feeds exactly one token, the last one sampled.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fleetchat.protocol.generation import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    stop_token_ids: frozenset[int]
    emit: Callable[[Any], None]  # puts a chunk (or an exception) in the consumer's queue; call on ``loop``
    loop: Any  # the consumer's asyncio loop (the engine thread hands items over with call_soon_threadsafe)
    generator: torch.Generator | None = (
        None  # per-request RNG: a seeded request samples the same in any batch
    )
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    slot: int = -1
    status: Status = Status.WAITING
    finish_reason: str | None = None
    detokenizer: Any = None  # IncrementalDetokenizer
    stops: Any = None  # StopMatcher
    arrival: float = 0.0

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def prefilling(self) -> bool:
        return self.num_computed < len(self.prompt_ids)

    @property
    def remaining_prompt(self) -> int:
        return max(0, len(self.prompt_ids) - self.num_computed)

    def token_at(self, index: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[index] if index < n else self.output_ids[index - n]

    def next_input(self, count: int) -> list[int]:
        """The next ``count`` tokens whose keys/values are not cached yet."""
        start = self.num_computed
        if start + count <= len(self.prompt_ids):
            return self.prompt_ids[start : start + count]
        return [self.token_at(i) for i in range(start, start + count)]
