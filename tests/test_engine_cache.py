"""The engine's caches never serve stale figures (fake clock, real Engine).

A record is cached per service, its event figures per window until events enter or leave
the window, its status-derived fields per status, and a service's alert rules are skipped
while their inputs are unchanged and no timer is due. Here an engine whose caches are warm
(records read after every event, twice) is compared with a fresh engine that replays the
same events and clock readings and builds each record once, cold: after new samples,
failures, queue depths, state changes, bucket and 10 s slot boundaries, a probe falling
silent and coming back, and wall-clock steps both ways (through the real Timeline). The
alert test compares the engine's alerts with the rules evaluated at every step, unskipped.
"""
from __future__ import annotations

import math
import random

import pytest

from aggregator import alerts as alerting
from aggregator.engine import ALERT_EVAL_EVERY, Engine
from aggregator.settings import Settings
from aggregator.timeline import Timeline
from bus.protocol import Message

T0 = 1_700_000_000.0
OBSERVED_STEP = 2.0  # the shell's bound (server.OBSERVED_STEP), so short gaps count as unobserved too
NAMES = ("a", "b", "llm")


def _no_alerts() -> Settings:
    s = Settings()
    s.alerts = {"default": {"enabled": False}}  # so tick() builds no record: the replay stays cold
    return s


def _alerting() -> Settings:
    s = Settings()
    s.alerts = {"default": {"p95_ms": 60.0, "p95_clear_ms": 40.0, "success_pct": 95.5, "success_clear_pct": 96.0,
                            "queue": 0.5, "queue_clear": 0, "down_s": 6.0, "raise_after_s": 5.0,
                            "clear_after_s": 4.0, "key_invalid": True}}
    return s


def scenario(seed: int, seconds: float) -> list[tuple[float, list[Message]]]:
    """(engine clock reading, events ingested at it) per 0.25 s step; a tick follows each step.

    The clock readings come from a real Timeline over a fake monotonic clock and a fake wall
    clock that is stepped forward and back now and then."""
    rng = random.Random(seed)
    mono, wall = [0.0], [T0]
    timeline = Timeline(lambda: mono[0], lambda: wall[0])
    alive = {n: True for n in NAMES}
    state = {n: "connected" for n in NAMES}
    steps, seq, k = [], 0, 0
    while mono[0] < seconds:
        k += 1
        mono[0] += 0.25
        wall[0] += 0.25
        r = rng.random()
        if r < 0.004:
            wall[0] += rng.choice([5.0, 40.0, 400.0])  # stepped forward: the timeline follows it
        elif r < 0.008:
            wall[0] -= rng.choice([5.0, 30.0])         # stepped back: the timeline keeps going
        elif r < 0.010:
            mono[0] += 1.5  # a stall shorter than the observed step
        events = []
        for i, name in enumerate(NAMES):
            if rng.random() < 0.004:
                alive[name] = not alive[name]  # the probe stops (heartbeats and all) or returns
            if rng.random() < 0.01:
                state[name] = rng.choice(["connected", "connected", "disconnected", "error", "loading", "sleeping"])
            if k % 8 != i or not alive[name]:  # a check every 2 s, services spread over it
                continue
            src = f"probe.{name}"
            slow = 4.0 if (k // 240) % 2 else 1.0  # slow phases: the p95 alert raises and clears
            bodies = [(f"heartbeat.{src}", {"interval": 2.0, "services": [name]})]
            for endpoint in ("/a", "/b"):
                ok = rng.random() > 0.05
                bodies.append((f"timing.{name}", {"service": name, "endpoint": endpoint, "ok": ok,
                                                  "duration_ms": rng.lognormvariate(3, 0.5) * slow,
                                                  "error_kind": None if ok else rng.choice(["timeout", "http_500"])}))
            # "b" reports no queue: nothing but its timings changes its windows' event figures
            details = {} if name == "b" else {"queue_depth": rng.choice([0, 0, 0, 1, 3])}
            if rng.random() < 0.1:
                details["job_time_ms"] = rng.uniform(100, 900)
            if name == "llm":
                details["providers"] = {"openai": {"state": rng.choice(["ok", "ok", "ok", "invalid"])}}
            bodies.append((f"status.{name}", {"service": name, "kind": name, "state": state[name], "url": "u",
                                              "required": True, "details": details, "interval": 2.0, "timeout": 2.0}))
            if name == "llm" and rng.random() < 0.5:
                bodies.append(("llm.usage", {"model": "gpt-4o", "tokens_in": 10, "tokens_out": 20,
                                             "latency_ms": rng.uniform(100, 900), "provider": "openai"}))
            for topic, body in bodies:
                seq += 1
                events.append(Message(topic, src, seq, 0.0, body))
        steps.append((timeline(), events))
    return steps


class Replay:
    """An engine fed a scenario's steps (events, then a tick) on the scenario's clock."""

    def __init__(self, settings: Settings) -> None:
        self.t = [-math.inf]
        self.engine = Engine(lambda: self.t[0], settings, max_step=OBSERVED_STEP)

    def step(self, t: float, events: list[Message]) -> None:
        self.t[0] = t
        for m in events:
            self.engine.ingest(m)
        self.engine.tick()

    def records(self) -> dict[str, dict]:
        return {name: self.engine.record(name) for name in sorted(self.engine.services)}


@pytest.mark.parametrize("read_every_step", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_warm_records_equal_a_fresh_engines_cold_records_at_every_checkpoint(seed, read_every_step):
    """Read after every step, a cached figure rarely survives long; read once per 10 s slot,
    as many samples leave a window as enter it between two reads, so a cache keyed on what
    merely looks the same would show."""
    steps = scenario(seed, 900.0)
    warm = Replay(_no_alerts())
    # By design a record is rebuilt when its service changed and at least once a second (a
    # bucket closes), and its coarser windows (1 h, 24 h) once per 10 s slot; in between, the
    # engine serves what it built then, state time as of then. So the checkpoints are steps
    # that crossed a slot boundary: every record and window is built at that step.
    slot = Settings().tiers[1][0]
    crossed = [i for i in range(40, len(steps))
               if math.floor(steps[i][0] / slot) > math.floor(steps[i - 1][0] / slot)]
    checkpoints = set(random.Random(seed).sample(crossed, 40)) | {crossed[-1]}
    compared = 0
    for i, (t, events) in enumerate(steps):
        warm.step(t, events)
        if read_every_step or i in checkpoints:
            first = warm.records()  # and read again: the caches are warm
            assert warm.records() == first
        if read_every_step and i % 20 == 0:
            warm.engine.history("5m")
        if i not in checkpoints:
            continue
        cold = Replay(_no_alerts())  # the same events and clock readings, no record read before now
        for t2, events2 in steps[:i + 1]:
            cold.step(t2, events2)
        assert warm.records() == cold.records(), f"step {i} (t={t})"
        assert warm.engine.history("5m") == cold.engine.history("5m"), f"step {i}"
        assert warm.engine.history("1h") == cold.engine.history("1h"), f"step {i}"
        compared += 1
    assert compared == len(checkpoints)
    states = {r["state"] for r in warm.records().values()}
    assert states  # the scenario really produced services


def test_scenario_covers_what_can_make_a_cache_stale():
    """The comparison above means something only if the scenario goes through each change."""
    steps = scenario(1, 900.0)
    replay = Replay(_no_alerts())
    seen_states, dead, jumps, back = set(), False, 0, 0
    prev = None
    for t, events in steps:
        replay.step(t, events)
        if prev is not None and t - prev > OBSERVED_STEP:
            jumps += 1
        prev = t
        for r in replay.records().values():
            seen_states.add(r["state"])
            dead |= r["error_kind"] == "probe_dead"
            if r["windows"]["5m"]["unknown_s"]:
                back += 1
    assert {"connected", "disconnected", "error", "loading", "sleeping", "unknown"} <= seen_states
    assert dead and jumps >= 1 and back


class ReferenceAlerts:
    """The alert rules evaluated on every record at every evaluation, never skipped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.alerts: dict[tuple[str, str], alerting.Alert] = {}
        self.last = -math.inf
        self.changes: list[tuple[str, str, bool]] = []

    def evaluate(self, engine: Engine, now: float, gap: float) -> None:
        if gap > OBSERVED_STEP:  # the engine's unobserved time: its timers skip the gap
            for alert in self.alerts.values():
                if alert.bad_since is not None:
                    alert.bad_since += gap
                if alert.good_since is not None:
                    alert.good_since += gap
        if now - self.last < ALERT_EVAL_EVERY:
            return
        self.last = now
        for name in engine.services:
            rules = self.settings.alert_rules(name)
            for (aname, metric, _v, _thr, bad, good, ra, ca, _msg) in alerting.conditions(rules, engine.record(name),
                                                                                           now):
                alert = self.alerts.setdefault((name, aname), alerting.Alert(name, aname, metric))
                if alert.step(now, bad, good, ra, ca):
                    self.changes.append((name, aname, alert.active))

    def active(self) -> set[tuple[str, str]]:
        return {k for k, a in self.alerts.items() if a.active}


@pytest.mark.parametrize("seed", [1, 4])
def test_skipped_alert_evaluations_change_nothing(seed):
    """The engine skips a service's rules while their inputs are unchanged and no timer is
    due; its alerts must be exactly those of the same rules evaluated every time."""
    settings = _alerting()
    replay = Replay(settings)
    reference = ReferenceAlerts(settings)
    engine_changes = []
    prev = None
    for t, events in scenario(seed, 900.0):
        replay.step(t, events)
        reference.evaluate(replay.engine, t, 0.0 if prev is None else t - prev)
        prev = t
        for topic, body in replay.engine.pop_events():
            if topic.startswith("alert."):
                engine_changes.append((body["service"], body["name"], body["active"]))
        active = {(a["service"], a["name"]) for a in replay.engine.active_alerts()}
        assert active == reference.active(), f"t={t}"
    assert engine_changes == reference.changes
    kinds = {name for _, name, _ in engine_changes}
    assert {"p95", "success", "down", "key_invalid", "queue"} <= kinds  # every rule raised or cleared


def _timing(engine: Engine, ms: float) -> None:
    engine.ingest(Message("timing.x", "probe.x", 1, 0.0, {"service": "x", "endpoint": "/", "duration_ms": ms,
                                                          "ok": True, "error_kind": None}))


def _check(engine: Engine) -> None:
    engine.ingest(Message("heartbeat.probe.x", "probe.x", 1, 0.0, {"interval": 1.0, "services": ["x"]}))
    engine.ingest(Message("status.x", "probe.x", 1, 0.0, {"service": "x", "state": "connected", "details": {}}))


def test_an_alert_raises_and_clears_on_time_while_its_inputs_stay_the_same():
    """Nothing new arrives while the p95 stays above the threshold: every evaluation sees the
    same inputs, and the alert still raises after raise_after_s and clears after clear_after_s."""
    clock = [T0]
    settings = Settings()
    settings.alerts = {"default": {"p95_ms": 100.0, "raise_after_s": 10.0, "clear_after_s": 6.0}}
    engine = Engine(lambda: clock[0], settings)
    _check(engine)
    for _ in range(5):
        _timing(engine, 500.0)
    raised_at = cleared_at = good_from = None
    bad_from = clock[0]
    while clock[0] < T0 + 400 and cleared_at is None:
        clock[0] += 0.25
        _check(engine)  # the same status again and again: the record's alert inputs do not change
        if raised_at is not None and good_from is None and clock[0] >= raised_at + 20:
            for _ in range(200):
                _timing(engine, 5.0)  # now the p95 is good, and stays the same from here on
            good_from = clock[0]
        engine.tick()
        for topic, body in engine.pop_events():
            if topic == "alert.x.p95":
                if body["active"]:
                    raised_at = clock[0]
                else:
                    cleared_at = clock[0]
    assert raised_at is not None and bad_from + 10.0 <= raised_at <= bad_from + 10.0 + ALERT_EVAL_EVERY + 0.25
    assert cleared_at is not None and good_from + 6.0 <= cleared_at <= good_from + 6.0 + ALERT_EVAL_EVERY + 0.25


def test_figures_follow_samples_that_replace_as_many_leaving_the_window():
    """One sample a second, each different: between two reads 10 s apart, ten samples enter
    the 5 m window and ten leave it, so its counts are the same and only its content differs.
    Every read equals a fresh engine's, fed the same samples."""
    def feed(engine: Engine, clock: list, upto: int, start: int = 0) -> None:
        for s in range(start, upto):
            clock[0] = T0 + s + 0.5
            _check(engine)
            _timing(engine, 10.0 + (s * 7919) % 500)  # a different latency every second
            engine.tick()

    clock = [T0]
    warm = Engine(lambda: clock[0], _no_alerts())
    done = 0
    for upto in range(400, 700, 10):
        feed(warm, clock, upto, done)
        done = upto
        got = warm.record("x")
        cold_clock = [T0]
        cold = Engine(lambda: cold_clock[0], _no_alerts())
        feed(cold, cold_clock, upto)
        assert got["windows"]["5m"] == cold.record("x")["windows"]["5m"], upto
        assert got == cold.record("x"), upto
