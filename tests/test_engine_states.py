"""Alive but not ready (issue 13, contract C1) on a fake clock: loading, sleeping and degraded
are each their own share of time in every window, bucket and export row; none is down;
uptime is (up + degraded) / (up + degraded + down)."""
from __future__ import annotations

import pytest

from aggregator import export
from aggregator.engine import Engine
from aggregator.prom import EngineCollector
from aggregator.settings import Settings
from tests.test_engine import Clock, beat, status, timing

SHARES = ("up", "down", "unknown", "loading", "sleeping", "degraded")


def _second(engine, clock, state, ms=None):
    clock.t += 1
    beat(engine)
    status(engine, "x", state)
    if ms is not None:
        timing(engine, "x", ms)
    engine.tick()


def _engine(**rules) -> tuple[Engine, Clock]:
    clock = Clock()
    alerts = {"default": {"raise_after_s": 10.0, "clear_after_s": 10.0, "enabled": True, **rules}}
    return Engine(clock, Settings(alerts=alerts)), clock


def test_loading_sleeping_and_up_each_accumulate_as_their_own_share_never_down():
    engine, clock = _engine(down_s=5.0)
    beat(engine)
    status(engine, "x", "loading")
    for _ in range(30):
        _second(engine, clock, "loading")
    for _ in range(20):
        _second(engine, clock, "sleeping")
    for _ in range(10):
        _second(engine, clock, "connected")
    for _ in range(10):
        _second(engine, clock, "disconnected")
    for _ in range(12):  # clear_after_s is 10
        _second(engine, clock, "connected")
    rec = engine.record("x")
    assert rec["state"] == "connected"
    for label in ("5m", "1h", "24h"):
        w = rec["windows"][label]
        assert w["loading_s"] == pytest.approx(30.0, abs=1.01), label
        assert w["sleeping_s"] == pytest.approx(20.0, abs=1.01), label
        assert w["up_s"] + w["degraded_s"] == pytest.approx(22.0, abs=1.01), label
        assert w["down_s"] == pytest.approx(10.0, abs=1.01), label
        assert w["degraded_s"] == 0.0
        seen = sum(w[f"{share}_s"] for share in SHARES)
        assert seen == pytest.approx(82.0, abs=1.01)  # every second of the window is in exactly one share
        assert w["unknown_ratio"] == pytest.approx(w["unknown_s"] / seen)
        # loading and sleeping are neither up nor down: uptime is up / (up + down) alone
        assert w["uptime"] == pytest.approx(w["up_s"] / (w["up_s"] + w["down_s"]))
        assert w["uptime"] == pytest.approx(22.0 / 32.0, abs=0.05)
    # a service that was loading or sleeping for longer than down_s raised no "down" alert;
    # the 10 s it was really disconnected did
    names = [(b["name"], b["active"]) for _, b in engine.pop_events()]
    assert names == [("down", True), ("down", False)]
    # the buckets carry the shares too: export rows and the history's up_ratio
    rows = engine.rows("1s", 3600)
    assert sum(r["loading_s"] for r in rows) == pytest.approx(30.0, abs=1.01)
    assert sum(r["sleeping_s"] for r in rows) == pytest.approx(20.0, abs=1.01)
    assert all(r["uptime"] is None for r in rows if r["loading_s"] + r["sleeping_s"] >= 0.999)
    content, n = export.export(engine, "csv", "1m", "1h")
    header = content.splitlines()[0].split(",")
    assert header[header.index("unknown_s") + 1:header.index("unknown_s") + 4] == ["loading_s", "sleeping_s",
                                                                                  "degraded_s"]
    collector = EngineCollector()
    collector.publish(engine.state(None))
    seconds = {(m.labels["window"], m.labels["share"]): m.value
               for fam in collector.collect() if fam.name == "md_health_state_seconds" for m in fam.samples}
    assert seconds[("5m", "loading")] == pytest.approx(30.0, abs=1.01)
    assert seconds[("1h", "sleeping")] == pytest.approx(20.0, abs=1.01)
    assert {share for _, share in seconds} == set(SHARES)
    ups = engine.history("5m")["services"]["x"]["up_ratio"]
    assert ups[1:30].count(None) == 29  # loading: no uptime evidence either way


def test_degraded_appears_with_a_p95_alert_on_a_connected_service_and_clears_with_it():
    engine, clock = _engine(p95_ms=500.0, p95_clear_ms=300.0, queue=5)
    beat(engine)
    for _ in range(20):
        _second(engine, clock, "connected", 100.0)
    assert engine.record("x")["state"] == "connected"
    for _ in range(12):
        _second(engine, clock, "connected", 2000.0)
    assert {a["name"] for a in engine.active_alerts()} == {"p95"}
    rec = engine.record("x")
    assert rec["state"] == "degraded" and rec["since_change_s"] == pytest.approx(0.0, abs=1.01)
    collector = EngineCollector()
    collector.publish(engine.state(None))
    metrics = {m.name: m for m in collector.collect()}
    state_set = {s.labels["md_health_state"]: s.value for s in metrics["md_health_state"].samples}
    assert state_set["degraded"] == 1 and state_set["connected"] == 0
    assert metrics["md_health_probe_success"].samples[0].value == 1.0  # degraded still answers
    for _ in range(20):
        _second(engine, clock, "connected", 2000.0)
    w = engine.record("x")["windows"]["5m"]
    assert w["degraded_s"] == pytest.approx(20.0, abs=1.01)
    assert w["uptime"] == 1.0  # degraded counts as up
    # A probe-reported state other than connected wins over degraded, and comes back to it.
    _second(engine, clock, "loading", 2000.0)
    assert engine.record("x")["state"] == "loading"
    _second(engine, clock, "connected", 2000.0)
    assert engine.record("x")["state"] == "degraded"
    # p95 falls back (the slow samples age out of the 5 m window), the alert clears, and so does degraded
    for _ in range(340):
        _second(engine, clock, "connected", 100.0)
        if not engine.active_alerts():
            break
    assert not engine.active_alerts()
    assert engine.record("x")["state"] == "connected"
    degraded_before = engine.record("x")["windows"]["24h"]["degraded_s"]
    for _ in range(10):
        _second(engine, clock, "connected", 100.0)
    assert engine.record("x")["windows"]["24h"]["degraded_s"] == pytest.approx(degraded_before, abs=0.01)


def test_degraded_by_a_queue_alert_and_stored_per_bucket():
    engine, clock = _engine(queue=5)
    beat(engine)
    for _ in range(15):
        clock.t += 1
        beat(engine)
        status(engine, "x", "connected", queue_depth=9)
        engine.tick()
    assert engine.record("x")["state"] == "degraded"
    for _ in range(10):
        clock.t += 1
        beat(engine)
        status(engine, "x", "connected", queue_depth=9)
        engine.tick()
    rows = engine.rows("1s", 300)
    assert sum(r["degraded_s"] for r in rows) == pytest.approx(
        engine.record("x")["windows"]["5m"]["degraded_s"], abs=0.01)
    assert sum(r["degraded_s"] for r in rows) >= 9.0


def test_liveness_due_is_when_a_silent_probe_turns_unknown():
    """What the aggregator's loop sleeps until: it must be exactly the moment tick() marks
    the probe dead, and say so while one is dead (a heartbeat may bring it back)."""
    engine, clock = _engine()
    assert engine.liveness_due() == (float("inf"), False)
    beat(engine, interval=2.0)
    status(engine, "x", "connected")
    due, dead = engine.liveness_due()
    assert (due, dead) == (clock.t + 3 * 2.0, False)
    clock.t = due  # silent for exactly three intervals: not dead yet
    engine.tick()
    assert engine.record("x")["state"] == "connected"
    clock.t = due + 0.001
    engine.tick()
    assert engine.record("x")["state"] == "unknown"
    assert engine.liveness_due() == (float("inf"), True)
    beat(engine, interval=2.0)
    engine.tick()
    assert engine.liveness_due() == (clock.t + 6.0, False)


def test_a_status_proves_its_probe_alive_as_a_heartbeat_does():
    """A probe beats only when it sent nothing else for an interval: its status after each
    check is the beat. So one heartbeat, then a status every 2 s for a minute: alive all along,
    and the deadline runs from the last status; silent for over 3 intervals after it: unknown.
    A status from another source (a second probe of the same service) proves nothing for this one."""
    engine, clock = _engine()
    beat(engine, interval=2.0)
    for _ in range(30):
        clock.t += 2.0
        status(engine, "x", "connected")
        engine.tick()
        assert engine.record("x")["state"] == "connected"
    assert engine.liveness_due() == (clock.t + 3 * 2.0, False)
    clock.t += 3 * 2.0 + 0.001
    engine.tick()
    record = engine.record("x")
    assert (record["state"], record["error_kind"]) == ("unknown", "probe_dead")
    assert "no heartbeat, no status" in record["error"]
    status(engine, "x", "connected")  # it speaks again: alive again
    engine.tick()
    assert engine.record("x")["state"] == "connected"
    clock.t += 3 * 2.0 + 0.001
    status(engine, "y", "connected", src="probe.other")
    engine.tick()
    assert engine.record("x")["state"] == "unknown"
