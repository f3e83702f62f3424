"""The behaviour every probe shares: damping both ways, reconnect backoff, timing events,
required/optional on the bus, refresh (also through a real aggregator and client), and the
loop itself replayed on a fake clock through a week of outage."""
from __future__ import annotations

import time
from concurrent.futures import Future

import pytest

from bus.protocol import Publisher
import zmq

from bus.sockets import close, endpoint_in_use, new_context, pub_socket, sub_socket
from probes.base import (CONFIRM_DELAY, HEARTBEAT_INTERVAL, MAX_BACKOFF, CheckResult, Probe, ProbeRunner,
                         StateMachine, Timing, probe_context)
from probes.http import ProbeError
from tests.conftest import wait_for
from tests.reliability import measured  # noqa: F401 - fixture
from tests.fakes.comfyui import FakeComfyUI
from tests.fakes.tap import BusTap


class Scripted(Probe):
    """A probe whose results a test dictates."""
    kind = "scripted"

    def __init__(self, results, interval=1.0):
        super().__init__("svc", {"url": "http://127.0.0.1:9", "interval": interval, "timeout": 1.0})
        self.results = list(results)

    def check(self):
        ok = self.results.pop(0) if self.results else True
        if ok == "wrong":
            return CheckResult(False, error="wrong app", error_kind="wrong_service", reachable=True,
                               timings=[Timing("/x", 1.0, True)])
        return CheckResult(ok, error="" if ok else "refused", error_kind="" if ok else "refused",
                           timings=[Timing("/x", 1.0, ok, None if ok else "refused")])


def states(machine, outcomes):
    return [machine.update(CheckResult(ok, reachable=(ok is None))) if ok is not None
            else machine.update(CheckResult(False, reachable=True)) for ok in outcomes]


def test_damping_both_ways_with_n_3():
    m = StateMachine(3)
    seq = states(m, [True, True, True, False, True, False, False, False, True, True, True])
    assert seq == ["connecting", "connecting", "connected",   # three successes to come up
                   "connecting", "connected",                 # one blip: retrying, then fine again
                   "connecting", "connecting", "disconnected",  # three failures to go down
                   "connecting", "connecting", "connected"]   # recovery debounced the same way
    m = StateMachine(1)
    assert states(m, [True, False, None]) == ["connected", "disconnected", "error"]


@pytest.fixture
def runner(endpoints):
    tap = BusTap(endpoints)
    socks = []

    def make(probe, **kw):
        r = ProbeRunner(probe, endpoints, **kw)
        socks.append(pub_socket(tap.ctx, endpoints.events))
        r.publisher = Publisher(socks[-1], r.src)
        return r

    yield make, tap
    close(*socks)
    tap.close()


def test_backoff_doubles_while_down_and_caps_at_30_s(runner):
    make, tap = runner
    r = make(Scripted([True, True] + [False] * 12, interval=1.0), failures_to_down=2)
    r.check_once()
    assert r.machine.state == "connecting" and r.pause == 0.25  # coming up: confirm quickly
    r.check_once()
    assert r.machine.state == "connected" and r.pause == 1.0
    r.check_once()
    assert r.machine.state == "connecting" and r.pause == 0.25  # unconfirmed: quick confirm re-check
    pauses = []
    for _ in range(8):
        r.check_once()
        pauses.append(r.pause)
    assert pauses == [2.0, 4.0, 8.0, 16.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    # Recovery resets it.
    r.probe.results = [True, True]
    r.check_once()
    r.check_once()
    assert r.machine.state == "connected" and r.pause == 1.0


def test_backoff_survives_thousands_of_failed_checks(runner):
    """8.5 h of a switched-off backend is 1024 checks; the exponent must not grow with them
    (2 ** 1024 does not fit a float: OverflowError killed the probe)."""
    make, tap = runner
    r = make(Scripted([False] * 3000, interval=1.0), failures_to_down=2)
    for _ in range(3000):
        r.check_once()
        assert 0 < r.pause <= MAX_BACKOFF
    assert r.machine.state == "disconnected" and r.machine.pace == StateMachine.BACKING_OFF
    assert r.pause == MAX_BACKOFF


class FakeClock:
    def __init__(self, t: float = 5000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recording(Publisher):
    """A real publisher (real socket) that also notes what it sent at which fake time."""

    def __init__(self, sock, src, clock) -> None:
        super().__init__(sock, src)
        self.clock, self.sent = clock, []

    def send(self, topic, body):
        self.sent.append((self.clock(), topic, body))
        return super().send(topic, body)


def run_loop(r: ProbeRunner, endpoints, clock, wait) -> None:
    """Run the real ProbeRunner.loop on `clock` until `wait` sets r.stop: a real publisher
    (nothing listens, so sends are dropped by ZeroMQ, never block) that records what it sent
    as r.publisher.sent, and checks that complete at once."""
    ctx = new_context()
    sock = pub_socket(ctx, endpoints.events)
    r.publisher = Recording(sock, r.src, clock)

    def submit(fn):
        f = Future()
        f.set_result(fn())
        return f

    try:
        r.loop(wait, submit)
    finally:
        close(sock)
        ctx.term()


def test_a_week_of_outage_on_a_fake_clock(endpoints, measured):
    """The real loop (ProbeRunner.loop) on a fake monotonic clock: the backend refuses every
    check for 7 days, then comes back. The probe stays alive, is heard (a heartbeat or a
    status) at least every HEARTBEAT_INTERVAL, checks at most 30 s apart all week, and sees
    the recovery within one backoff step."""
    week = 7 * 86400.0
    clock = FakeClock()
    t0 = clock()
    checks: list[float] = []

    class Backend(Probe):
        kind = "scripted"

        def check(self):
            checks.append(clock())
            if clock() - t0 < week:
                raise ProbeError("refused", "connection refused")
            return CheckResult(True, version="1.0")

    r = ProbeRunner(Backend("svc", {"url": "http://127.0.0.1:9", "interval": 2.0, "timeout": 2.0}),
                    endpoints, clock=clock)
    up_at: list[float] = []

    def wait(seconds):
        assert 0 <= seconds <= HEARTBEAT_INTERVAL  # never sleeps past the next beat
        if not up_at and r.machine.state == "connected":  # shown up before this wait began
            up_at.append(clock())
        clock.t += seconds
        if up_at or clock() - t0 > week + 120:
            r.stop.set()
        return False, False

    run_loop(r, endpoints, clock, wait)  # raises nothing for the whole week

    beats = [t for t, topic, _ in r.publisher.sent if topic.startswith(("heartbeat.", "status."))]
    beat_gap = max(b - a for a, b in zip(beats, beats[1:]))
    down = [c for c in checks if c - t0 < week]
    check_gap = max(b - a for a, b in zip(down, down[1:]))
    print(f"week on a fake clock: {len(down)} failed checks, {len(beats)} heartbeats or statuses, "
          f"max gap between checks {check_gap:.3f} s, between heartbeats or statuses {beat_gap:.3f} s")
    assert beats[-1] - t0 >= week and down[-1] - t0 >= week - MAX_BACKOFF
    assert beat_gap <= HEARTBEAT_INTERVAL + 1e-6
    assert check_gap <= MAX_BACKOFF + 1e-6
    assert len(down) >= week / MAX_BACKOFF  # it kept checking, never fell silent
    retry = [b["details"]["retry_in_s"] for _, topic, b in r.publisher.sent
             if topic == "status.svc" and "retry_in_s" in b["details"]]
    assert retry and max(retry) == MAX_BACKOFF
    # Back after a week: noticed at the next check (<= 30 s), confirmed a quick re-check later.
    assert up_at and up_at[0] - (t0 + week) <= MAX_BACKOFF + CONFIRM_DELAY + 0.1
    measured.record("probe_week_outage", section="Faults", order=16,
                    case="Backend switched off for 7 days (the probe loop on a fake monotonic clock)",
                    required=f"the probe stays alive, is heard every {HEARTBEAT_INTERVAL:g} s, checks at most 30 s apart, sees the "
                             "recovery within one backoff step (before: OverflowError at check 1024, 8.5 h)",
                    measured=f"{len(down)} failed checks and {len(beats)} heartbeats or statuses, nothing raised; longest "
                             f"gap between checks {check_gap:.3f} s, between two of those {beat_gap:.3f} s; back up "
                             f"{up_at[0] - (t0 + week):.2f} s after the backend returned",
                    checks=len(down), heartbeats=len(beats), max_check_gap_s=round(check_gap, 3),
                    max_beat_gap_s=round(beat_gap, 3), recovery_s=round(up_at[0] - (t0 + week), 3))


def test_status_and_timing_on_the_bus(runner):
    make, tap = runner
    r = make(Scripted(["wrong", "wrong"]), required=True, failures_to_down=2)
    tap.join(r.publisher)  # past the slow joiner
    r.check_once()
    r.check_once()
    st = tap.wait(lambda t: (s := t.last_status("svc")) and s["state"] == "error" and s)
    assert st["required"] is True and st["error"] == "wrong app" and st["details"]["retry_in_s"] == 2.0
    timing = tap.timings()[-1]
    assert timing == {"service": "svc", "endpoint": "/x", "duration_ms": 1.0, "ok": True, "error_kind": None}


def test_refresh_round_trip_through_the_aggregator(endpoints, procs, client, tmp_path, monkeypatch):
    """Blender's Refresh button path: client -> aggregator -> control.refresh -> probe ->
    status -> aggregator -> snapshot -> client. The poll interval is 60 s, so only the
    refresh can explain a fresh result."""
    with FakeComfyUI() as fake:
        cfg = tmp_path / "config.toml"
        cfg.write_text(f'[services.comfyui]\nurl = "{fake.url}"\ninterval = 60\nwebsocket = false\n')
        monkeypatch.setenv("MD_HEALTH_CONFIG", str(cfg))
        procs.aggregator()
        procs.probe("comfyui")
        wait_for(lambda: client.services.get("comfyui", {}).get("state") == "connected", timeout=30, client=client)
        fake.set_queue(0, 5)
        # A refresh for another service leaves this probe alone.
        hits = fake.hits["/system_stats"]
        client.refresh("wan2gp")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            client.poll(timeout_ms=50)
        assert fake.hits["/system_stats"] == hits
        t0 = time.monotonic()
        client.refresh("comfyui")
        wait_for(lambda: client.services["comfyui"]["details"].get("queue_depth") == 5, timeout=10, client=client)
        elapsed = time.monotonic() - t0
        print(f"refresh round trip: {elapsed * 1000:.0f} ms")
        assert elapsed < 10
        fake.set_queue(0, 1)
        client.refresh()  # every probe
        wait_for(lambda: client.services["comfyui"]["details"].get("queue_depth") == 1, timeout=10, client=client)


def test_an_idle_probe_backs_off_reconnecting_yet_a_late_aggregator_hears_it_at_once(endpoints, procs, client,
                                                                                      tmp_path, monkeypatch):
    """With no aggregator, libzmq's default retries every 100 ms forever (0.23-0.27 % of a core
    per idle probe); the probe's sockets back off to once a second. An aggregator that starts
    later (or restarts) gets the probe's current status as soon as it subscribes, not at the
    next check: the interval here is 60 s, so only that repeat can explain a quick answer."""
    ctx = probe_context()
    try:
        for sock in (pub_socket(ctx, endpoints.events), sub_socket(ctx, endpoints.snapshots)):
            assert 0 < sock.getsockopt(zmq.RECONNECT_IVL_MAX) <= 1000  # 0: no backoff at all
            close(sock)
    finally:
        ctx.term()
    with FakeComfyUI() as fake:
        cfg = tmp_path / "config.toml"
        cfg.write_text(f'[services.comfyui]\nurl = "{fake.url}"\ninterval = 60\nwebsocket = false\n')
        monkeypatch.setenv("MD_HEALTH_CONFIG", str(cfg))
        probe = procs.probe("comfyui")
        wait_for(lambda: fake.hits.get("/system_stats", 0) >= 2, timeout=30)  # checked and confirmed: connected
        # Three seconds without an aggregator: the retry interval reaches its cap (0.1+0.2+0.4+0.8 s).
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            client.poll(timeout_ms=100)
        assert not client.services
        procs.aggregator()
        wait_for(lambda: endpoint_in_use(endpoints.events, timeout=0.05), timeout=30, every=0.01)
        t0 = time.monotonic()
        wait_for(lambda: client.services.get("comfyui", {}).get("state") == "connected", timeout=30, client=client)
        elapsed = time.monotonic() - t0
        print(f"late aggregator heard the probe after {elapsed:.2f} s")
        assert elapsed < 6.0  # one retry (<= 1.1 s) and the repeat, with margin; the next check is 60 s away
        assert fake.hits["/system_stats"] == 2 and probe.poll() is None
