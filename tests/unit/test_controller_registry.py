"""The controller's worker table: registration, heartbeats, expiry and probes, with time by hand."""

from fleetchat.controller import registry


def test_register_then_list_models_sorted_union():
    t = registry.register({}, "http://w1", ["b", "a"], now=0.0)
    t = registry.register(t, "http://w2", ["a", "c"], now=1.0)
    assert registry.models(t) == ["a", "b", "c"]
    assert [r.address for r in registry.candidates(t, "a")] == ["http://w1", "http://w2"]
    assert registry.candidates(t, "zzz") == []


def test_heartbeat_unknown_worker_answers_exist_false():
    t, exist = registry.heartbeat({}, "http://ghost", 3, now=5.0)
    assert exist is False and t == {}


def test_heartbeat_updates_load_and_clears_pending():
    t = registry.register({}, "http://w1", ["m"], now=0.0)
    t = registry.record_dispatch(t, "http://w1", now=1.0)
    t = registry.record_dispatch(t, "http://w1", now=1.5)
    assert t["http://w1"].load(now=2.0) == 2
    t, exist = registry.heartbeat(t, "http://w1", 7, now=2.0)
    assert exist and t["http://w1"].queue_length == 7 and t["http://w1"].load(now=2.0) == 7
    assert t["http://w1"].last_heartbeat == 2.0


def test_pending_dispatches_age_out():
    t = registry.register({}, "http://w1", ["m"], now=0.0)
    t = registry.record_dispatch(t, "http://w1", now=0.0)
    assert t["http://w1"].load(now=1.0) == 1
    assert t["http://w1"].load(now=registry.PENDING_HORIZON_S + 1) == 0


def test_expire_drops_only_stale_workers_that_check_heartbeats():
    t = registry.register({}, "http://old", ["m"], now=0.0)
    t = registry.register(t, "http://fresh", ["m"], now=0.0)
    t = registry.register(t, "http://manual", ["m"], now=0.0, check_heart_beat=False)
    t, _ = registry.heartbeat(t, "http://fresh", 0, now=80.0)
    t, dropped = registry.expire(t, now=91.0, expiration=90.0)
    assert dropped == ["http://old"]
    assert set(t) == {"http://fresh", "http://manual"}
    # exactly at the expiration it is still alive (strictly older is dropped)
    t2, dropped2 = registry.expire(t, now=170.0, expiration=90.0)
    assert dropped2 == [] and "http://fresh" in t2


def test_probe_timeout_keeps_worker_and_unreachable_hides_it():
    t = registry.register({}, "http://busy", ["m"], now=0.0)
    t = registry.record_probe(t, "http://busy", now=1.0, error="status probe timed out")
    assert t["http://busy"].reachable is None and registry.models(t) == ["m"]
    t = registry.record_probe(t, "http://busy", now=2.0, error="ConnectError", unreachable=True)
    assert registry.models(t) == [] and registry.candidates(t, "m") == []
    assert registry.describe(t, now=3.0)[0]["reachable"] is False  # still listed for `fleetchat status`
    t = registry.record_probe(t, "http://busy", now=4.0, status={"model_names": ["m", "n"], "queue_length": 2})
    assert registry.models(t) == ["m", "n"] and t["http://busy"].queue_length == 2


def test_reregistration_keeps_probe_result_and_resets_heartbeat():
    t = registry.register({}, "http://w", ["m"], now=0.0)
    t = registry.record_probe(t, "http://w", now=1.0, error="refused", unreachable=True)
    t = registry.register(t, "http://w", ["m"], now=50.0)
    assert t["http://w"].reachable is False and t["http://w"].last_heartbeat == 50.0


def test_describe_reports_heartbeat_age_and_aggregate_status():
    t = registry.register({}, "http://w1", ["a"], now=10.0, queue_length=2)
    t = registry.register(t, "http://w2", ["b"], now=12.0, queue_length=3, speed=2)
    rows = registry.describe(t, now=15.0)
    assert [(r["address"], r["heartbeat_age_s"], r["queue_length"]) for r in rows] == [
        ("http://w1", 5.0, 2),
        ("http://w2", 3.0, 3),
    ]
    assert registry.aggregate_status(t) == {"model_names": ["a", "b"], "speed": 3.0, "queue_length": 5}
