"""Alerts on a fake clock: raise after N s, no flapping, clear after M s below a lower threshold."""
from __future__ import annotations

import pytest

from aggregator import alerts as alerting
from aggregator.engine import Engine
from aggregator.settings import ConfigError, Settings, from_config
from bus.config import load
from tests.test_engine import Clock, beat, status, timing


def _engine(rules: dict) -> tuple[Engine, Clock]:
    clock = Clock()
    alerts = {"default": {"raise_after_s": 10.0, "clear_after_s": 20.0, "enabled": True, **rules}}
    return Engine(clock, Settings(alerts=alerts)), clock


def _second(engine, clock, ms=None, state="connected", **details):
    clock.t += 1
    beat(engine)
    status(engine, "x", state, **details)
    if ms is not None:
        timing(engine, "x", ms)
    engine.tick()


def _active(engine):
    return {a["name"] for a in engine.active_alerts()}


def test_p95_alert_raises_after_n_seconds_and_clears_with_hysteresis():
    engine, clock = _engine({"p95_ms": 500.0, "p95_clear_ms": 300.0})
    for _ in range(3):
        _second(engine, clock, 100.0)
    assert engine.pop_events() == [] and _active(engine) == set()
    for i in range(10):  # p95 jumps above 500 within a second or two; raise after 10 s of that
        _second(engine, clock, 2000.0)
    assert _active(engine) == set()
    for _ in range(3):
        _second(engine, clock, 2000.0)
    assert _active(engine) == {"p95"}
    events = engine.pop_events()
    assert [(t, b["active"]) for t, b in events] == [("alert.x.p95", True)]
    alert = engine.active_alerts()[0]
    assert alert["metric"] == "p95_ms" and alert["threshold"] == 500.0 and alert["value"] > 500
    assert engine.state()["alerts"] == engine.active_alerts()
    # The 5 m p95 falls only as the slow samples age out; between 300 and 500 it must not clear.
    engine2, clock2 = _engine({"p95_ms": 500.0, "p95_clear_ms": 300.0})
    for _ in range(15):
        _second(engine2, clock2, 2000.0)
    assert _active(engine2) == {"p95"}
    engine2.pop_events()
    for _ in range(320):  # 400 ms samples push the slow ones out of the 5 m window: p95 400, between
        _second(engine2, clock2, 400.0)
    assert _active(engine2) == {"p95"} and engine2.pop_events() == []  # hysteresis: no flap
    for _ in range(300 + 30):  # a full window of fast samples, then M = 20 s of "good"
        _second(engine2, clock2, 100.0)
    assert _active(engine2) == set()
    assert [(t, b["active"]) for t, b in engine2.pop_events()] == [("alert.x.p95", False)]


def test_down_alert_waits_for_t_seconds_and_brief_blips_do_not_raise():
    engine, clock = _engine({"down_s": 30.0, "clear_after_s": 5.0})
    _second(engine, clock)
    for _ in range(20):  # a 20 s outage is shorter than T
        _second(engine, clock, state="disconnected")
    _second(engine, clock)
    assert _active(engine) == set() and engine.pop_events() == []
    for _ in range(35):
        _second(engine, clock, state="error")
    assert _active(engine) == {"down"}
    for _ in range(3):
        _second(engine, clock)
    assert _active(engine) == {"down"}  # up again, but not for M seconds yet
    for _ in range(5):
        _second(engine, clock)
    assert _active(engine) == set()
    assert [b["active"] for _, b in engine.pop_events()] == [True, False]


def test_a_dead_probe_keeps_its_p95_alert_in_a_real_engine():
    engine, clock = _engine({"p95_ms": 500.0, "p95_clear_ms": 300.0})
    for _ in range(15):
        _second(engine, clock, 2000.0)
    assert _active(engine) == {"p95"}
    engine.pop_events()
    for _ in range(900):  # the probe stops: no heartbeat, status or timing for 15 minutes
        clock.t += 1
        engine.tick()
    record = engine.record("x")
    assert record["state"] == "unknown" and record["stats"]["p95_ms"] is None  # the samples have aged out
    assert _active(engine) == {"p95"} and engine.pop_events() == []


def test_a_backend_flipping_between_disconnected_and_error_raises_down_in_a_real_engine():
    engine, clock = _engine({"down_s": 30.0, "clear_after_s": 5.0})
    _second(engine, clock)
    for i in range(40):  # refused for 3 s, then HTTP 500 for 3 s, ...: down all along
        _second(engine, clock, state=("disconnected", "error")[(i // 3) % 2])
    assert _active(engine) == {"down"}
    assert [b["active"] for _, b in engine.pop_events()] == [True]


def test_queue_success_and_key_invalid_alerts():
    engine, clock = _engine({"queue": 10.0, "queue_clear": 5.0, "success_pct": 90.0, "key_invalid": True,
                             "raise_after_s": 0.0, "clear_after_s": 0.0})
    _second(engine, clock, 100.0, queue_depth=12)
    assert "queue" in _active(engine)
    _second(engine, clock, 100.0, queue_depth=8)
    assert "queue" in _active(engine)  # above the clear threshold still
    _second(engine, clock, 100.0, queue_depth=4)
    assert "queue" not in _active(engine)
    for _ in range(3):
        clock.t += 1
        beat(engine)  # a live probe: a dead one's figures are unknown and raise nothing
        timing(engine, "x", 0.0, ok=False, kind="timeout")
        engine.tick()
    assert "success" in _active(engine)
    beat(engine)
    status(engine, "x", "connected", providers={"openai": {"state": "invalid"}, "ollama": {"state": "valid"}})
    clock.t += 1
    engine.tick()
    assert "key_invalid" in _active(engine)
    msg = [a for a in engine.active_alerts() if a["name"] == "key_invalid"][0]["message"]
    assert "openai" in msg and "ollama" not in msg


class Rules:
    """alerts.conditions and Alert.step driven by hand-built records on a fake clock, the way
    the engine's evaluate_alerts drives them: pure, so each record field is set exactly."""

    def __init__(self, **rules) -> None:
        self.rules = {"raise_after_s": 10.0, "clear_after_s": 20.0, **rules}
        self.alerts: dict[str, alerting.Alert] = {}
        self.events: list[tuple[float, str, bool]] = []

    def at(self, now: float, **record) -> set[str]:
        record = {"service": "x", "state": "connected", "error_kind": "", "down_for_s": None, **record}
        for name, metric, value, _thr, bad, good, ra, ca, _msg in alerting.conditions(self.rules, record, now):
            alert = self.alerts.setdefault(name, alerting.Alert("x", name, metric))
            if alert.step(now, bad, good, ra, ca):
                self.events.append((now, name, alert.active))
        return {name for name, a in self.alerts.items() if a.active}


DEAD = {"state": "unknown", "error_kind": "probe_dead"}


def test_a_dead_probes_p95_and_success_alerts_stay_active_until_a_real_good_value():
    r = Rules(p95_ms=500.0, p95_clear_ms=300.0, success_pct=90.0)
    t = 0.0
    for t in range(15):
        active = r.at(t, stats={"p95_ms": 2000.0, "success_rate": 0.5})
    assert active == {"p95", "success"}
    # The probe dies: its 5 m window still holds the old samples, then they age out (the
    # window's p95 first falls as the slow ones leave, then there are none: None).
    for t in range(15, 315):
        assert r.at(t, stats={"p95_ms": 100.0, "success_rate": 1.0}, **DEAD) == {"p95", "success"}
    for t in range(315, 2000):
        assert r.at(t, stats={"p95_ms": None, "success_rate": None}, **DEAD) == {"p95", "success"}
    # Back, but with no requests in the window yet: still unknown, still active.
    for t in range(2000, 2100):
        assert r.at(t, stats={"p95_ms": None, "success_rate": None}) == {"p95", "success"}
    assert [(name, on) for _, name, on in r.events] == [("p95", True), ("success", True)]
    # Real good values for M = 20 s clear them, not a second sooner.
    for t in range(2100, 2120):
        assert r.at(t, stats={"p95_ms": 100.0, "success_rate": 1.0}) == {"p95", "success"}
    assert r.at(2120, stats={"p95_ms": 100.0, "success_rate": 1.0}) == set()
    assert [(t, name, on) for t, name, on in r.events][2:] == [(2120, "p95", False), (2120, "success", False)]


def test_an_unknown_value_never_raises_and_breaks_the_raise_timer():
    r = Rules(p95_ms=500.0, queue=10.0)
    for t in range(9):  # 9 s bad: not yet N = 10 s
        r.at(t, stats={"p95_ms": 2000.0}, queue={"current": 50})
    r.at(9, stats={"p95_ms": None}, queue={"current": None})  # one unknown second
    for t in range(10, 20):  # bad again from 10: the unknown second broke the timer
        assert r.at(t, stats={"p95_ms": 2000.0}, queue={"current": 50}) == set()
    assert r.at(20, stats={"p95_ms": 2000.0}, queue={"current": 50}) == {"p95", "queue"}
    for t in range(20, 400):  # a dead probe's last figures are not evidence either way
        assert r.at(t, stats={"p95_ms": 100.0}, queue={"current": 0}, **DEAD) == {"p95", "queue"}


def test_down_counts_from_when_the_state_class_became_down_across_disconnected_error_flips():
    r = Rules(down_s=60.0, clear_after_s=5.0)
    r.at(0.0)
    states = ("disconnected", "error")
    for i in range(1, 70):  # refused, then HTTP 500, then refused ... every 3 s; since_change_s resets
        t = float(i)
        active = r.at(t, state=states[(i // 3) % 2], since_change_s=float(i % 3), down_for_s=t - 1.0)
        assert active == (set() if t - 1.0 < 60.0 else {"down"}), t
    assert r.events == [(61.0, "down", True)]
    # The probe dies while the backend is down: unknown is not "up", so the alert stays.
    for t in range(70, 500):
        assert r.at(float(t), down_for_s=None, **DEAD) == {"down"}
    for t in range(500, 505):
        assert r.at(float(t)) == {"down"}
    assert r.at(505.0) == set()


def test_alert_config_is_validated_with_clear_errors(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[aggregator]\ntiers = ["1s:5m", "10s:1h", "1m:24h", "1h:7d"]\nflush_interval = 2\n'
                    '[alerts.default]\np95_ms = 800\n[alerts.comfyui]\np95_ms = 5000\np95_clear_ms = 4000\n'
                    '[prices."gpt-4o"]\ninput = 2.5\noutput = 10\n')
    s = from_config(load(good))
    assert [keep for _, keep in s.tiers] == [300, 3600, 86400, 7 * 86400]
    assert s.alert_rules("comfyui")["p95_ms"] == 5000 and s.alert_rules("rvc")["p95_ms"] == 800
    assert s.alert_rules("rvc")["down_s"] == 60.0  # defaults stay
    assert s.prices["gpt-4o"] == {"input": 2.5, "output": 10.0}
    for text, words in (
        ("[alerts.comfyui]\np95_ms = -1\n", "alerts.comfyui.p95_ms must be a number greater than 0"),
        ("[alerts.comfyui]\np95_ms = 100\np95_clear_ms = 200\n", "alerts.comfyui.p95_clear_ms must not be above"),
        ("[alerts.comfyui]\nlatency = 1\n", "alerts.comfyui.latency is not a known key"),
        ("[aggregator]\nflush_interval = 30\n", "aggregator.flush_interval must be at most 10"),
        ('[aggregator]\ntiers = ["1s:5m", "7s:1h"]\n', "aggregator.tiers"),
        ('[prices."gpt-4o"]\ninput = 2.5\n', "output is missing"),
        ("[alerts]\np95_ms = 3\n", "belongs in a per-service table"),
    ):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            from_config(load(path))
        assert words in str(err.value), str(err.value)
    path.write_text("[alerts.comfyui]\n\np95_ms = -1\n")
    with pytest.raises(ConfigError, match="line 3"):
        from_config(load(path))
