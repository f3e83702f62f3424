"""An idle aggregator wakes only when it has work (issue 16: idle CPU against Prometheus +
blackbox_exporter).

Measured as the voluntary context switches of all of the process's threads (each sleep in
poll/epoll that ends is one): a real `python -m aggregator run`, with no traffic, and with
one quiet service. Its own work is a heartbeat a second; the quiet service's probe adds an
event burst every 3 s (a wake of the main thread and one of libzmq's I/O thread). A loop that
polls on a short fixed timer wakes several times a second on top of that.

Voluntary switches count waits that ended, not time on the CPU, so a loaded machine (which
adds involuntary switches) does not move this figure.
"""
from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from bus.lifeline import spawn, stop as stop_child
from bus.protocol import Publisher
from bus.sockets import Endpoints, close, new_context, pub_socket

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/task/*/status")

ROOT = Path(__file__).resolve().parents[1]
# Wakes per second over the window. Measured on this machine: 1.2/s idle and 2.0/s with the
# quiet service with the loop waking when due; 8.8/s and 9.8/s with 0.2 s polls and 4 ticks a second.
MAX_WAKES_PER_S = 6.0
WINDOW = 5.0
QUIET_EVERY = 3.0  # the quiet probe's heartbeat interval, and how often it reports a check


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wakes(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # a thread that just ended
            continue
        total += int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return total


def _aggregator(tmp_path: Path, endpoints: Endpoints):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MD_HEALTH_")}
    env.update(MD_HEALTH_CONFIG=str(tmp_path / "config.toml"), MD_HEALTH_DATA_DIR=str(tmp_path / "data"),
               MD_HEALTH_EVENTS=endpoints.events, MD_HEALTH_SNAPSHOTS=endpoints.snapshots,
               MD_HEALTH_REQUESTS=endpoints.requests)
    log = open(tmp_path / "aggregator.log", "w")
    return spawn([sys.executable, "-m", "aggregator", "run"], cwd=ROOT, env=env, stdout=log, stderr=log)


def _quiet_probe(endpoints: Endpoints, stop: threading.Event) -> None:
    """One service's probe at a slow cadence: heartbeat, timing and status together."""
    ctx = new_context()
    sock = pub_socket(ctx, endpoints.events)
    pub = Publisher(sock, "probe.quiet")
    try:
        while not stop.is_set():
            pub.send("heartbeat.probe.quiet", {"interval": QUIET_EVERY, "services": ["quiet"]})
            pub.send("timing.quiet", {"service": "quiet", "endpoint": "/", "duration_ms": 12.0, "ok": True,
                                      "error_kind": None})
            pub.send("status.quiet", {"service": "quiet", "state": "connected", "interval": QUIET_EVERY})
            stop.wait(QUIET_EVERY)
    finally:
        close(sock)
        ctx.term()


def _has_service(endpoints: Endpoints, name: str, deadline: float) -> bool:
    from bus.client import MonitorClient

    client = MonitorClient(endpoints, name="test-idle")
    try:
        while time.monotonic() < deadline:
            client.poll(timeout_ms=100)
            if name in client.services:
                return True
        return False
    finally:
        client.close()


@pytest.mark.parametrize("quiet_service", [False, True], ids=["no-traffic", "one-quiet-service"])
def test_idle_aggregator_wakes_only_for_work(tmp_path, quiet_service):
    endpoints = Endpoints.on_ports(_free_port(), _free_port(), _free_port())
    proc = _aggregator(tmp_path, endpoints)
    stop = threading.Event()
    probe = threading.Thread(target=_quiet_probe, args=(endpoints, stop), daemon=True)
    try:
        deadline = time.monotonic() + 30
        if quiet_service:
            probe.start()
            # Synced through a real client: the service is in the engine, and the client
            # (which would add wakes) is gone before the window starts.
            assert _has_service(endpoints, "quiet", deadline), (tmp_path / "aggregator.log").read_text()[-2000:]
        else:
            # Started: its listening line is logged once the sockets are bound.
            while time.monotonic() < deadline and "listening" not in (tmp_path / "aggregator.log").read_text():
                assert proc.poll() is None, (tmp_path / "aggregator.log").read_text()[-2000:]
                time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "aggregator.log").read_text()[-2000:]
        time.sleep(1.0)  # the client's disconnect and the start-up work settle (not a timing bound)
        before, t0 = _wakes(proc.pid), time.monotonic()
        time.sleep(WINDOW)
        rate = (_wakes(proc.pid) - before) / (time.monotonic() - t0)
        assert proc.poll() is None
        print(f"wakes per second: {rate:.2f}")
        assert rate < MAX_WAKES_PER_S, f"the idle aggregator woke {rate:.1f} times a second"
    finally:
        stop.set()
        if probe.is_alive():
            probe.join(10)
        stop_child(proc)
