"""Issue 11 item 4 (engine side): active alerts survive an aggregator restart (a real history
file, two engines), and every record's down timer (contract 2) spans disconnected <-> error."""
from __future__ import annotations

import pytest

from aggregator.engine import Engine
from aggregator.settings import DEFAULT_ALERTS, Settings
from aggregator.store import Store
from tests.test_engine import Clock, beat, status

RULES = {"default": {**DEFAULT_ALERTS, "down_s": 5.0, "raise_after_s": 2.0, "clear_after_s": 3.0}}


def run(engine, clock, seconds: int, state: str | None, events: list) -> None:
    for _ in range(seconds):
        beat(engine)
        if state:
            status(engine, "x", state)
        clock.t += 1
        engine.tick()
        events.extend(engine.pop_events())


def test_an_active_alert_survives_a_restart_and_clears_when_the_service_is_back(tmp_path):
    clock = Clock()
    first = Engine(clock, Settings(alerts=RULES))
    events: list = []
    run(first, clock, 3, "connected", events)
    run(first, clock, 10, "disconnected", events)
    assert [(a["service"], a["name"]) for a in first.active_alerts()] == [("x", "down")]
    store = Store(tmp_path)
    store.flush(first)
    store.close()  # the aggregator stops (or is killed after this flush)

    clock.t += 120
    second = Engine(clock, Settings(alerts=RULES))
    store = Store(tmp_path)
    store.restore(second)
    restored = second.active_alerts()
    assert [(a["service"], a["name"]) for a in restored] == [("x", "down")]
    assert restored[0]["since"] == first.active_alerts()[0]["since"]
    events = []
    for _ in range(10):  # no probe yet: the state is unknown, which clears nothing
        clock.t += 1
        second.tick()
        events.extend(second.pop_events())
    assert events == [] and len(second.active_alerts()) == 1
    run(second, clock, 6, "connected", events)
    assert [(topic, body["active"]) for topic, body in events] == [("alert.x.down", False)]
    assert second.active_alerts() == []
    store.flush(second)
    store.close()
    third = Engine(clock, Settings(alerts=RULES))
    store = Store(tmp_path)
    store.restore(third)
    store.close()
    assert third.active_alerts() == []  # a cleared alert is not restored


def test_down_for_s_counts_from_the_start_of_the_down_class():
    clock = Clock()
    engine = Engine(clock)
    events: list = []
    run(engine, clock, 5, "connected", events)
    assert engine.record("x")["down_for_s"] is None
    run(engine, clock, 10, "disconnected", events)
    for i in range(20):  # refused, then HTTP 500, then refused ...: one down span
        run(engine, clock, 1, "error" if i % 2 == 0 else "disconnected", events)
    assert engine.record("x")["down_for_s"] == pytest.approx(30.0)
    for _ in range(5):  # the probe dies: not down, unknown
        clock.t += 1
        engine.tick()
    assert engine.record("x")["probe_alive"] is False and engine.record("x")["down_for_s"] is None
    run(engine, clock, 4, "error", events)  # back, still down: a new span from its return
    assert engine.record("x")["down_for_s"] == pytest.approx(3.0)  # (the tick after its first beat)
    run(engine, clock, 1, "connected", events)
    assert engine.record("x")["down_for_s"] is None
