"""Clock steps and long outages (issue 11 item 2): the engine runs on a timeline that never
runs backwards, advances by monotonic time and reads as wall time; a jump of it is
unobserved time, never uptime.

The real aggregator runs in a thread with real sockets and an injected wall clock that the
test steps (the machine's clock is never touched). The week-long outage runs on a fake clock."""
from __future__ import annotations

import threading
import time
import gc

import pytest

from aggregator.engine import Engine
from aggregator.server import Aggregator
from aggregator.settings import Settings
from aggregator.store import Store
from aggregator.timeline import Timeline
from tests.reliability import measured  # noqa: F401 - fixture
from bus.protocol import MAX_REPLY_BYTES, Publisher, decode, encode
from bus.sockets import close, dealer_socket, new_context, pub_socket
from tests.conftest import wait_for
from tests.test_engine import Clock, beat, status

BEAT = 1.0          # the probe's heartbeat interval: dead after 3 of them
DEAD_BOUND = 15.0   # 3 beats + one tick + one publish is ~4.3 s; the rest is margin for a loaded machine


class Wall:
    """time.time() plus an offset the test steps."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def aggregator(endpoints):
    """Start an in-thread aggregator with a steppable wall clock; returns (wall, publisher, asker)."""
    stop = threading.Event()
    threads, sockets = [], []
    ctx = new_context()

    def start(settings: Settings | None = None):
        wall = Wall()
        agg = Aggregator(endpoints, stop=stop, settings=settings or Settings(flush_interval=1.0), wall=wall)
        thread = threading.Thread(target=agg.run, daemon=True)
        thread.start()
        threads.append(thread)
        assert agg.ready.wait(20)
        pub = Publisher(pub_socket(ctx, endpoints.events), "probe.f")
        asker = dealer_socket(ctx, endpoints.requests)
        sockets.extend([pub.socket, asker])
        return wall, pub, asker

    try:
        yield start
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        close(*sockets)
        ctx.term()
    assert not any(t.is_alive() for t in threads)


def probe_alive_for(pub, client, seconds: float, state: str = "connected") -> float:
    """Heartbeat and report like a probe for `seconds`; returns when the last beat was sent."""
    end = time.monotonic() + seconds
    last = time.monotonic()
    while time.monotonic() < end:
        pub.send("heartbeat.probe.f", {"interval": BEAT, "services": ["x"]})
        pub.send("status.x", {"service": "x", "state": state})
        last = time.monotonic()
        client.poll(timeout_ms=200)
    return last


def record(client) -> dict:
    return client.services.get("x") or {}


def alive_and_connected(client) -> bool:
    return record(client).get("state") == "connected" and record(client).get("probe_alive") is True


def seconds_until_dead(client, last_beat: float) -> float:
    wait_for(lambda: record(client).get("state") == "unknown" and record(client).get("probe_alive") is False,
             timeout=30, client=client)
    return time.monotonic() - last_beat


def history_t(asker) -> list[float]:
    asker.send(encode("request.snapshot", "t", 0, {"id": "h", "range": "5m"}))
    assert asker.poll(20_000), "no snapshot reply"
    msg = decode(asker.recv(), max_bytes=MAX_REPLY_BYTES)
    assert msg, msg
    history = msg.body["state"]["history"]
    entry = history["services"]["x"]
    return [entry["t0"] + k * history["step_s"] for k in range(len(entry["p50_ms"]))]


def test_wall_clock_stepped_back_and_forward_an_hour(aggregator, client, measured):
    wall, pub, asker = aggregator()
    started = time.monotonic()
    wait_for(lambda: pub.send("status.x", {"service": "x", "state": "connected"}) or "x" in client.services,
             timeout=30, client=client, every=0.2)
    probe_alive_for(pub, client, 3)
    wait_for(lambda: alive_and_connected(client), timeout=20, client=client)
    t0 = history_t(asker)
    dead_after = {}

    # -- one hour back: nothing freezes ---------------------------------------------------
    wall.offset = -3600.0
    last = probe_alive_for(pub, client, 3)
    wait_for(lambda: alive_and_connected(client), timeout=20, client=client)
    dead_after["back"] = seconds_until_dead(client, last)
    t1 = history_t(asker)
    assert t1[-1] > t0[-1] + 2, "1 s buckets stopped closing after the backward step"
    up_24h = record(client)["windows"]["24h"]["up_s"]
    assert up_24h <= time.monotonic() - started + 5  # only real time was ever up

    # -- one hour forward from the real time (two hours on the injected clock) -------------
    probe_alive_for(pub, client, 2)
    wall.offset = +3600.0  # the wall clock is now an hour ahead of the timeline
    last = probe_alive_for(pub, client, 3)
    wait_for(lambda: alive_and_connected(client), timeout=20, client=client)
    dead_after["forward"] = seconds_until_dead(client, last)
    t2 = history_t(asker)
    assert t2[-1] > t1[-1] + 3000, "labels did not follow the wall clock forward"
    assert t2[-1] > t2[-2], "1 s buckets stopped closing after the forward step"
    w = record(client)["windows"]["24h"]
    assert w["up_s"] <= time.monotonic() - started + 5, w  # the jumped hour is not uptime ...
    assert w["unknown_s"] >= 3500, w                      # ... it is unobserved time
    for step, seconds in dead_after.items():
        assert seconds <= DEAD_BOUND, (step, seconds)
    measured.record("clock_steps", section="Faults", order=20,
                    case="The aggregator's wall clock stepped back an hour, then forward an hour (injected clock)",
                    required=f"a silent probe shows dead within {DEAD_BOUND:g} s after either step; 1 s buckets "
                             "keep closing; the jumped hour is never credited up (before: after the step back "
                             "the engine froze, and 10 min of silence still showed connected)",
                    measured=f"dead shown {dead_after['back']:.2f} s after its last beat (back step), "
                             f"{dead_after['forward']:.2f} s (forward step); buckets closed after both; 24 h "
                             f"window up {w['up_s']:.0f} s of {time.monotonic() - started:.0f} s real, "
                             f"unknown {w['unknown_s']:.0f} s",
                    dead_after_back_s=round(dead_after["back"], 3), dead_after_forward_s=round(dead_after["forward"], 3),
                    up_s=round(w["up_s"], 1), unknown_s=round(w["unknown_s"], 1))


def test_restored_history_ahead_of_the_clock_keeps_closing_buckets(aggregator, client, tmp_path):
    # History written while the clock read an hour ahead (then NTP stepped it back).
    ahead = Clock(time.time() + 3600)
    engine = Engine(ahead)
    store = Store(tmp_path / "data")
    for _ in range(60):
        beat(engine, "probe.f")
        status(engine, "x", "connected", src="probe.f")
        ahead.t += 1
        engine.tick()
    store.flush(engine)
    store.close()
    stored_up = engine.record("x")["windows"]["5m"]["up_s"]

    _, pub, asker = aggregator()
    wait_for(lambda: pub.send("status.x", {"service": "x", "state": "connected"}) or
             record(client).get("state") == "connected", timeout=30, client=client, every=0.2)
    t0 = history_t(asker)
    assert t0[0] >= ahead.t - 300  # the stored buckets were restored
    last = probe_alive_for(pub, client, 4)
    assert record(client)["windows"]["5m"]["up_s"] > stored_up + 2  # time is credited again
    assert history_t(asker)[-1] > t0[-1] + 2, "restored buckets ahead of the clock never close"
    assert seconds_until_dead(client, last) <= DEAD_BOUND


def test_timeline_follows_monotonic_time_and_forward_wall_steps():
    mono, wall = Clock(100.0), Clock(1_700_000_000.0)
    tl = Timeline(mono, wall)
    assert tl() == 1_700_000_000.0
    mono.t += 5
    wall.t -= 3600 - 5  # stepped back an hour
    assert tl() == 1_700_000_005.0  # keeps running on monotonic time
    mono.t -= 1  # even a monotonic source that misbehaves never takes it back
    assert tl() == 1_700_000_005.0
    mono.t += 1
    wall.t += 7200  # an hour ahead of the timeline
    assert tl() == wall.t
    tl.not_before(wall.t + 50)  # restored history ends later
    mono.t += 1
    assert tl() == wall.t + 51


def test_a_jump_of_the_engine_clock_is_unobserved_not_up():
    """A monotonic clock that counts suspend (Windows) shows a sleep as one long step."""
    clock = Clock()
    engine = Engine(clock)
    for _ in range(30):
        beat(engine)
        status(engine, "x", "disconnected")
        clock.t += 1
        engine.tick()
    down_before = engine.record("x")["down_for_s"]
    clock.t += 3600  # asleep
    engine.tick()
    r = engine.record("x")
    assert r["probe_alive"] is True and r["state"] == "disconnected"  # a clock step changes no state
    assert r["down_for_s"] == pytest.approx(down_before)  # and is no down time either
    w = r["windows"]["24h"]
    assert w["down_s"] == pytest.approx(30, abs=1) and w["unknown_s"] == pytest.approx(3600, abs=1)
    for _ in range(5):  # the probe does not come back after the wake: dead within 3 beats
        clock.t += 1
        engine.tick()
    assert engine.record("x")["probe_alive"] is False


def test_no_forward_step_makes_a_live_probe_look_dead():
    """The shell's bound (server.OBSERVED_STEP): a step is either short enough for the 3-beat
    deadline or unobserved, so the probe's last beat is as fresh after it as before."""
    from aggregator.server import OBSERVED_STEP

    for step in (0.5, 1.0, 1.5, OBSERVED_STEP, OBSERVED_STEP + 0.5, 10.0, 3600.0):
        clock = Clock()
        engine = Engine(clock, max_step=OBSERVED_STEP)
        for _ in range(5):
            beat(engine)
            status(engine, "x", "connected")
            clock.t += 1  # the probe's next beat is due: the step comes just before it
            engine.tick()
        clock.t += step
        engine.tick()
        assert engine.record("x")["probe_alive"] is True, step


def test_a_backend_down_for_seven_days_with_its_probe_alive(measured):
    """Fake clock: checks 30 s apart (a probe's capped backoff), heartbeats every 10 s."""
    clock = Clock()
    engine = Engine(clock, Settings(tiers=[(1, 300), (10, 3600), (60, 86400), (3600, 7 * 86400)]))
    beat(engine, interval=10.0)
    status(engine, "x", "connected")
    clock.t += 60
    engine.tick()
    objects = {}
    week = 7 * 86400
    for i in range(week // 10):
        beat(engine, interval=10.0)
        if i % 3 == 0:
            status(engine, "x", "disconnected" if i % 2 else "error", error="refused")
        clock.t += 10
        engine.tick()
        if i in (86400 // 10, week // 10 - 1):
            gc.collect()
            objects[i] = len(gc.get_objects())
    r = engine.record("x")
    assert r["state"] in ("disconnected", "error") and r["probe_alive"] is True
    assert r["down_for_s"] == pytest.approx(week, abs=10)  # disconnected <-> error is one down span
    assert r["uptime"]["7d"] <= 60 / (week - 3600)  # at most the first minute up, then a week down
    w24 = r["windows"]["24h"]
    assert w24["down_s"] == pytest.approx(86400, abs=120) and w24["up_s"] == 0 and w24["uptime"] == 0
    assert r["windows"]["7d"]["down_s"] == pytest.approx(week, abs=3600)
    assert engine.bad_events == 0
    grown = objects[week // 10 - 1] - objects[86400 // 10]
    assert grown < 500, f"{grown} more live objects on day 7 than on day 1"
    measured.record("engine_week_outage", section="Faults", order=21,
                    case="A backend down for 7 days, flipping disconnected/error, its probe alive (engine, fake clock)",
                    required="one down span for the whole week (down_for_s), correct 24 h and 7 d windows, no "
                             "error, memory flat from day 1 to day 7",
                    measured=f"down_for_s {r['down_for_s']:.0f} s (a week is {week} s); 24 h window "
                             f"{w24['down_s']:.0f} s down, 0 up; {grown} more live objects on day 7 than day 1",
                    down_for_s=r["down_for_s"], live_objects_grown=grown)
