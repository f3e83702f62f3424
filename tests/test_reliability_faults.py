"""Faults, with real processes and kill -9: the aggregator, a probe, and misbehaving backends.

Every figure recorded here (detection and recovery times, history lost, request
durations) goes into docs/reliability.md through the `measured` fixture.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from bus.sockets import endpoint_in_use
from probes.registry import make_probe
from tests.conftest import ROOT, wait_for
from tests.fakes.base import FakeBackend
from tests.fakes.comfyui import FakeComfyUI
from tests.reliability import measured  # noqa: F401 - fixture


def _state(client, service="comfyui"):
    return client.services.get(service, {}).get("state")


def _export_rows(client, since="10m") -> list[dict]:
    # export() returns None while the request socket is not connected (nothing is queued
    # for a dead peer): ask again, as the CLI and the add-on do.
    rid = wait_for(lambda: client.export("json", "1s", since, "comfyui"), timeout=15, client=client)
    reply = wait_for(lambda: client.replies.get(rid), timeout=15, client=client)
    assert reply["ok"], reply
    return [r for r in json.loads(reply["content"])["rows"] if r["count"]]


def test_aggregator_kill9_and_restart(endpoints, procs, client, measured):
    with FakeComfyUI() as fake:
        agg = procs.aggregator()
        probe = procs.probe("comfyui", "--url", fake.url, "--interval", "0.5")
        wait_for(lambda: _state(client) == "connected", timeout=20, client=client)
        time.sleep(14.0)  # more history than the 10 s that may be lost, and a few flushes (every 5 s)
        before = _export_rows(client)
        assert before

        old_instance = client.aggregator.get("instance")
        assert old_instance
        agg.kill()  # kill -9
        killed = time.time()
        t0 = time.monotonic()
        agg.wait(10)
        hits = sum(fake.hits.values())
        wait_for(lambda: not client.online, timeout=10, client=client)
        offline_after = time.monotonic() - t0
        # Down for a while; the probe must carry on checking meanwhile, and the CLI says so.
        t_cli = time.monotonic()
        cli = subprocess.run([sys.executable, "-m", "aggregator", "status", "--wait", "1"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
        assert cli.returncode == 1 and "monitor offline" in cli.stderr and "Traceback" not in cli.stderr, cli.stderr
        # It never blocked: it goes on checking the backend with no aggregator to publish to.
        wait_for(lambda: sum(fake.hits.values()) - hits >= 2 and time.monotonic() - t_cli >= 2.0, timeout=30)
        hits_during = sum(fake.hits.values()) - hits
        assert probe.poll() is None, probe.returncode

        procs.aggregator()
        wait_for(lambda: endpoint_in_use(endpoints.requests, timeout=0.05), timeout=30, every=0.01)
        t1 = time.monotonic()
        wait_for(lambda: client.online and client.aggregator.get("instance") not in (None, old_instance)
                 and client.has_snapshot and _state(client) == "connected"
                 and client.services["comfyui"].get("probe_alive"), timeout=30, client=client, every=0.01)
        recovered = time.monotonic() - t1
        after = _export_rows(client)

    last_before_kill = max(r["ts"] for r in before)
    kept = [r for r in after if r["ts"] <= last_before_kill]
    kept_ts = {r["ts"] for r in kept}
    missing = [r["ts"] for r in before if r["ts"] not in kept_ts]
    lost_s = killed - (max(kept_ts) + 1.0) if kept_ts else float("inf")
    assert lost_s <= 10.0, (lost_s, missing)
    assert all(ts > killed - 11.0 for ts in missing), missing  # only the tail before the kill is lost
    # The requirement is 2 s; the bound keeps 3x margin for a loaded machine (the figure is recorded).
    assert recovered <= 3 * RECOVER_WITHIN, recovered
    measured.record("aggregator_kill", section="Faults", order=10,
                    case="Aggregator killed (kill -9) and restarted",
                    required="probes never block; subscribers show offline, then recover within 2 s of the "
                             "restart; history intact, losing at most 10 s",
                    measured=f"client showed offline {offline_after:.1f} s after the kill (offline_after 3 s), "
                             f"`md-health status` said \"monitor offline\" (exit 1); the probe kept checking "
                             f"({hits_during} backend requests during the outage); recovered "
                             f"{recovered:.2f} s after the new aggregator bound its sockets; history: {len(kept)} of "
                             f"{len(before)} one-second buckets kept, last {lost_s:.1f} s before the kill lost",
                    offline_s=round(offline_after, 3), recovered_s=round(recovered, 3), lost_s=round(lost_s, 2))


RECOVER_WITHIN = 2.0  # s: subscribers recover this soon after the aggregator restarts
UNKNOWN_WITHIN = 3  # heartbeat intervals: a dead probe's service shows unknown this soon


def _write_config(path, fake_url: str, interval: float = 0.5) -> None:
    from bus.config import DEFAULT_SERVICES

    lines = [f'[services.comfyui]\nurl = "{fake_url}"\ninterval = {interval}\n']
    lines += [f"[services.{name}]\nenabled = false\n" for name in DEFAULT_SERVICES if name != "comfyui"]
    path.write_text("\n".join(lines))


def test_probe_kill9_shows_unknown_within_3_heartbeats(endpoints, procs, client, measured):
    from probes.base import HEARTBEAT_INTERVAL

    with FakeComfyUI() as fake:
        procs.aggregator()
        probe = procs.probe("comfyui", "--url", fake.url, "--interval", "0.5")
        wait_for(lambda: _state(client) == "connected" and client.services["comfyui"]["probe_alive"],
                 timeout=20, client=client)
        time.sleep(1.2)  # mid-interval kill, like any real crash
        probe.kill()  # kill -9
        t0 = time.monotonic()
        seen = set()

        def unknown():
            seen.add(_state(client))
            return _state(client) == "unknown"
        wait_for(unknown, timeout=30, client=client, every=0.01)
        unknown_after = time.monotonic() - t0
        record = client.services["comfyui"]
    assert record["probe_alive"] is False and "no heartbeat" in record["error"]
    assert seen <= {"connected", "unknown"}, seen  # never anything invented in between
    # The requirement is 3 intervals; the bound keeps 3x margin for a loaded machine (the figure
    # is recorded). "Never its last state" is the exact part, asserted above.
    assert unknown_after <= 3 * UNKNOWN_WITHIN * HEARTBEAT_INTERVAL, unknown_after
    measured.record("probe_kill", section="Faults", order=20,
                    case="Probe killed (kill -9)",
                    required="its service shows unknown/stale, never its last state, within 3 heartbeat intervals",
                    measured=f"shown unknown (\"{record['error'][:80]}\") {unknown_after:.2f} s after the kill "
                             f"(3 intervals = {3 * HEARTBEAT_INTERVAL:g} s)",
                    unknown_s=round(unknown_after, 3))


def test_supervisor_restarts_a_killed_probe(endpoints, procs, client, isolated_env, measured):
    with FakeComfyUI() as fake:
        _write_config(isolated_env / "config.toml", fake.url)
        procs.aggregator()
        supervisor = procs.start("-m", "probes", "run-all", name="supervisor")
        wait_for(lambda: _state(client) == "connected", timeout=30, client=client)
        children = wait_for(lambda: psutil.Process(supervisor.pid).children(), timeout=10)
        victim = children[0].pid
        psutil.Process(victim).kill()  # kill -9
        t0 = time.monotonic()
        fresh: dict = {}

        def restarted():
            kids = [p.pid for p in psutil.Process(supervisor.pid).children()]
            if kids and victim not in kids and "pid" not in fresh:
                fresh["pid"], fresh["t"] = kids[0], time.monotonic() - t0
            return "pid" in fresh
        wait_for(restarted, timeout=30, client=client)
        hits = sum(fake.hits.values())
        wait_for(lambda: sum(fake.hits.values()) > hits + 1 and _state(client) == "connected", timeout=30,
                 client=client)
        checking = time.monotonic() - t0
    assert "exited" in procs.output(supervisor)
    measured.record("probe_restart", section="Faults", order=25,
                    case="Probe killed (kill -9) under the supervisor (`md-probes run-all`)",
                    required="the supervisor restarts it",
                    measured=f"new probe process after {fresh['t']:.2f} s, checking the backend again and "
                             f"its service connected after {checking:.1f} s",
                    restart_s=round(fresh["t"], 3), checking_s=round(checking, 2))


# -- misbehaving backends ---------------------------------------------------------------
class Hostile(FakeBackend):
    """FakeBackend plus the cases it lacks: a 100 MB body, a redirect loop, and the wrong app."""

    def __init__(self) -> None:
        super().__init__()
        self.body_bytes_sent = 0

    def _handle(self, handler) -> None:
        if self.mode == "huge":  # 100 MB of JSON-looking bytes, streamed
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(100 << 20))
            handler.end_headers()
            chunk = b'{"system": "' + b"x" * 65500
            try:
                for _ in range((100 << 20) // len(chunk)):
                    handler.wfile.write(chunk)
                    self.body_bytes_sent += len(chunk)
            except OSError:
                pass  # the probe hung up: exactly what we want
            return
        if self.mode == "redirect":
            handler.send_response(302)
            handler.send_header("Location", handler.path)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if self.mode == "wrong_app":  # a Gradio app on ComfyUI's port
            path = handler.path.partition("?")[0]
            if path == "/config":
                return self._send(handler, 200, json.dumps({"version": "5.29.0", "mode": "blocks",
                                                            "title": "Wan2GP"}).encode())
            return self._send(handler, 404, b'{"detail": "Not Found"}')
        return super()._handle(handler)


class Silent:
    """Accepts TCP connections and never answers a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        for s in self.held:
            s.close()
        self.sock.close()


TIMEOUT = 1.5
CASES = [  # mode, accepted error kinds, words the message must contain
    ("silent", {"timeout"}, "no answer"),
    ("slow", {"timeout"}, "no answer"),
    ("500", {"http_status"}, "500"),
    ("html", {"not_json"}, "not JSON"),
    ("truncated", {"not_json"}, "not JSON"),
    ("huge", {"too_large"}, "KiB"),
    ("redirect", {"redirect"}, "redirected"),
    ("wrong_app", {"http_status", "wrong_service"}, ""),
]


@pytest.fixture(scope="module")
def backend_results():
    results: dict[str, dict] = {}
    yield results


@pytest.mark.parametrize("mode, kinds, words", CASES, ids=[c[0] for c in CASES])
def test_misbehaving_backend(mode, kinds, words, backend_results, measured):
    if mode == "silent":
        server = Silent()
    else:
        server = Hostile().start()
        server.mode = mode
        server.delay = TIMEOUT + 3.0
    try:
        probe = make_probe("comfyui", {"url": server.url, "timeout": TIMEOUT, "interval": 2.0, "flavour": "comfyui",
                                       "websocket": False})
        durations = []
        for _ in range(2):  # every time, not just once
            t = time.monotonic()
            try:
                result = probe.check()
            except Exception as exc:  # ProbeError is how a probe reports; anything else is a bug
                from probes.http import ProbeError
                assert isinstance(exc, ProbeError), exc
                result = probe.fail(exc)
            durations.append(time.monotonic() - t)
            assert not result.healthy
            assert result.error_kind in kinds, (result.error_kind, result.error)
            assert words in result.error and len(result.error) < 300, result.error
            assert "Traceback" not in result.error
    finally:
        if mode == "silent":
            server.close()
        else:
            server.stop()
    # Each request has the whole timeout; a check makes at most one failing request.
    assert max(durations) <= TIMEOUT + 1.0, durations
    extra = f"; server got to send {server.body_bytes_sent / 1e6:.1f} MB of 100 MB" if mode == "huge" else ""
    backend_results[mode] = {"kind": result.error_kind, "ms": max(durations) * 1000, "error": result.error + extra}
    if len(backend_results) == len(CASES):
        measured.record("backend_misbehaving", section="Faults", order=30,
                        case=f"Backend misbehaving (ComfyUI probe, timeout {TIMEOUT:g} s)",
                        required="the probe stays within its timeout and reports a clear error each time",
                        measured="; ".join(f"**{m}**: {r['kind']} in {r['ms']:.0f} ms, \"{r['error'][:110]}\""
                                           for m, r in backend_results.items()),
                        **{m: round(r["ms"]) for m, r in backend_results.items()})
