"""Alerts on a fake clock: raise after N s, no flapping, clear after M s below a lower threshold."""
from __future__ import annotations

import pytest

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
        timing(engine, "x", 0.0, ok=False, kind="timeout")
        engine.tick()
    assert "success" in _active(engine)
    status(engine, "x", "connected", providers={"openai": {"state": "invalid"}, "ollama": {"state": "valid"}})
    clock.t += 1
    engine.tick()
    assert "key_invalid" in _active(engine)
    msg = [a for a in engine.active_alerts() if a["name"] == "key_invalid"][0]["message"]
    assert "openai" in msg and "ollama" not in msg


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
