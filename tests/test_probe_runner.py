"""The behaviour every probe shares: damping both ways, reconnect backoff, timing events,
required/optional on the bus, refresh (also through a real aggregator and client)."""
from __future__ import annotations

import time

import pytest

from bus.protocol import Publisher
from bus.sockets import close, pub_socket
from probes.base import MAX_BACKOFF, CheckResult, Probe, ProbeRunner, StateMachine, Timing
from tests.conftest import wait_for
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
