"""Dispatch policies with the clock and the random source passed in."""

import random
from collections import Counter

import pytest

from fleetchat.controller import dispatch, registry
from fleetchat.controller.registry import WorkerRecord


def w(address: str, queue: int = 0, speed: float = 1.0, pending: tuple[float, ...] = ()) -> WorkerRecord:
    return WorkerRecord(address=address, model_names=("m",), queue_length=queue, speed=speed, pending=pending)


@pytest.mark.parametrize("method", list(dispatch.POLICIES))
def test_no_workers_gives_none(method):
    assert dispatch.choose(method, [], random.Random(0), 0.0) is None


@pytest.mark.parametrize("method", list(dispatch.POLICIES))
def test_zero_speed_workers_are_never_chosen(method):
    assert dispatch.choose(method, [w("a", speed=0)], random.Random(0), 0.0) is None


def test_lottery_is_weighted_by_speed():
    rng = random.Random(1)
    workers = [w("a", speed=1), w("b", speed=3)]
    counts = Counter(dispatch.lottery(workers, rng, 0.0).address for _ in range(4000))
    assert 0.70 < counts["b"] / 4000 < 0.80


def test_shortest_queue_picks_min_queue_over_speed():
    workers = [w("a", queue=4, speed=1), w("b", queue=6, speed=3), w("c", queue=3, speed=1)]
    assert dispatch.shortest_queue(workers, random.Random(0), 0.0).address == "b"  # 6/3 = 2 < 3


def test_least_load_counts_pending_dispatches():
    now = 100.0
    workers = [w("a", queue=1), w("b", queue=0, pending=(now - 1, now - 0.5))]
    assert dispatch.least_load(workers, random.Random(0), now).address == "a"
    # pending older than the horizon no longer count
    late = now + registry.PENDING_HORIZON_S + 1
    assert dispatch.least_load(workers, random.Random(0), late).address == "b"


def test_least_load_breaks_ties_randomly_and_evenly():
    rng = random.Random(7)
    workers = [w("a"), w("b"), w("c")]
    counts = Counter(dispatch.least_load(workers, rng, 0.0).address for _ in range(3000))
    assert all(900 < counts[x] < 1100 for x in "abc")


def test_burst_through_the_table_spreads_over_workers():
    """A burst of dispatches before any load report: least_load alternates, FastChat's pure
    queue-length argmin (without pending counts) would send everything to one worker."""
    t = registry.register({}, "http://a", ["m"], now=0.0)
    t = registry.register(t, "http://b", ["m"], now=0.0)
    rng = random.Random(3)
    chosen = []
    for i in range(10):
        now = 1.0 + i * 0.01
        pick = dispatch.choose("least_load", registry.candidates(t, "m"), rng, now)
        chosen.append(pick.address)
        t = registry.record_dispatch(t, pick.address, now)
    assert Counter(chosen) == {"http://a": 5, "http://b": 5}


def test_same_seed_same_choices():
    workers = [w("a"), w("b"), w("c")]
    picks1 = [dispatch.least_load(workers, random.Random(42), 0.0).address for _ in range(5)]
    picks2 = [dispatch.least_load(workers, random.Random(42), 0.0).address for _ in range(5)]
    assert picks1 == picks2
