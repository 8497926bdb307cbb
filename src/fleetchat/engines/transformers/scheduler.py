"""The batch policy: which sequences run in the next step, and how many tokens each feeds.

Pure and step-shaped (no torch, no clock): ``schedule()`` returns a :class:`StepPlan`; the engine
runs it and reports back with ``finish()``. Each step

1. decodes every running sequence that has finished its prompt (one token each), then
2. spends the rest of the token budget (``max_batched_tokens``) on prompts: first those already
   being prefilled in chunks, then waiting sequences admitted in arrival order while there are free
   slots (``max_running``).

So a newcomer starts at the next step, nobody's stream stalls for longer than one bounded step, and a
long prompt is prefilled over several steps (chunked prefill) while the others keep decoding.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fleetchat.engines.transformers.sequence import Sequence, Status


@dataclass
class StepPlan:
    decode: list[Sequence] = field(default_factory=list)
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens this step)
    admitted: list[Sequence] = field(default_factory=list)  # newly running: they need a slot

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(n for _, n in self.prefill)


class Scheduler:
    def __init__(self, max_running: int, max_batched_tokens: int) -> None:
        if max_running < 1:
            raise ValueError("max_running must be at least 1")
        self.max_running = max_running
        # a step always decodes every running sequence; the budget bounds what prefill adds to it
        self.max_batched_tokens = max(max_batched_tokens, max_running + 1)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        plan.decode = [s for s in self.running if not s.prefilling]
        budget = self.max_batched_tokens - len(plan.decode)
        for seq in self.running:
            if seq.prefilling and budget > 0:
                n = min(seq.remaining_prompt, budget)
                plan.prefill.append((seq, n))
                budget -= n
        while self.waiting and len(self.running) < self.max_running and budget > 0:
            seq = self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            plan.admitted.append(seq)
            n = min(seq.remaining_prompt, budget)
            plan.prefill.append((seq, n))
            budget -= n
        return plan

    def finish(self, seq: Sequence) -> bool:
        """Take ``seq`` out (finished or aborted). Returns True if it held a running place."""
        seq.status = Status.FINISHED
        if seq in self.running:
            self.running.remove(seq)
            return True
        try:
            self.waiting.remove(seq)
        except ValueError:
            pass
        return False

    def find(self, request_id: str) -> Sequence | None:
        for seq in self.running:
            if seq.request_id == request_id:
                return seq
        for seq in self.waiting:
            if seq.request_id == request_id:
                return seq
        return None
