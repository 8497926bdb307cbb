"""The batch policy: admission, decode of everyone, chunked prefill within the token budget."""

from __future__ import annotations

from fleetchat.engines.transformers.scheduler import Scheduler
from fleetchat.engines.transformers.sequence import Sequence, Status
from fleetchat.protocol.generation import SamplingParams


def seq(name: str, prompt_len: int) -> Sequence:
    return Sequence(
        request_id=name,
        prompt_ids=list(range(prompt_len)),
        params=SamplingParams(),
        max_new_tokens=16,
        stop_token_ids=frozenset(),
        emit=lambda item: None,
        loop=None,
    )


def advance(plan) -> None:
    """What the engine does after running a step: cache the fed tokens, sample one per finished prompt."""
    for s in plan.decode:
        s.num_computed += 1
        s.output_ids.append(7)
    for s, n in plan.prefill:
        s.num_computed += n
        if not s.prefilling:
            s.output_ids.append(7)


def test_admits_in_order_up_to_max_running() -> None:
    sched = Scheduler(max_running=2, max_batched_tokens=100)
    a, b, c = seq("a", 5), seq("b", 5), seq("c", 5)
    for s in (a, b, c):
        sched.add(s)
    plan = sched.schedule()
    assert plan.admitted == [a, b]
    assert plan.prefill == [(a, 5), (b, 5)]
    assert c.status is Status.WAITING and list(sched.waiting) == [c]


def test_every_step_decodes_all_running_and_admits_newcomers() -> None:
    sched = Scheduler(max_running=4, max_batched_tokens=100)
    a = seq("a", 3)
    sched.add(a)
    advance(sched.schedule())
    b = seq("b", 4)
    sched.add(b)
    plan = sched.schedule()
    assert plan.decode == [a]
    assert plan.prefill == [(b, 4)]
    assert plan.num_tokens == 5


def test_long_prompt_is_chunked_while_others_decode() -> None:
    sched = Scheduler(max_running=4, max_batched_tokens=10)
    a = seq("a", 2)
    sched.add(a)
    advance(sched.schedule())
    long = seq("long", 25)
    sched.add(long)
    chunks = []
    for _ in range(3):
        plan = sched.schedule()
        assert a in plan.decode  # a keeps streaming every step
        assert plan.num_tokens <= 10
        chunks.append(dict((s.request_id, n) for s, n in plan.prefill)["long"])
        advance(plan)
    assert chunks == [9, 9, 7]
    assert not long.prefilling and len(long.output_ids) == 1
    assert sched.schedule().decode == [a, long]


def test_finish_frees_a_place_for_the_next_waiting() -> None:
    sched = Scheduler(max_running=1, max_batched_tokens=50)
    a, b = seq("a", 3), seq("b", 3)
    sched.add(a)
    sched.add(b)
    advance(sched.schedule())
    assert sched.schedule().admitted == []
    assert sched.finish(a) is True
    assert a.status is Status.FINISHED
    plan = sched.schedule()
    assert plan.admitted == [b] and plan.decode == []


def test_abort_of_waiting_and_find() -> None:
    sched = Scheduler(max_running=1, max_batched_tokens=50)
    a, b = seq("a", 3), seq("b", 3)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    assert sched.find("b") is b and sched.find("zzz") is None
    assert sched.finish(b) is False  # it held no running place
    assert not sched.waiting
    sched.finish(a)
    assert sched.idle


def test_budget_never_starves_decode() -> None:
    sched = Scheduler(max_running=3, max_batched_tokens=1)  # raised to max_running + 1
    seqs = [seq(str(i), 1) for i in range(3)]
    for s in seqs:
        sched.add(s)
    for _ in range(3):
        advance(sched.schedule())
    assert sched.schedule().decode == seqs
