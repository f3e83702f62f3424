"""End to end through real processes: fake ComfyUI -> probe -> bus -> aggregator -> clients."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import zmq

from bus.client import MonitorClient
from bus.lifeline import spawn, stop as stop_child
from bus.protocol import decode, encode
from bus.sockets import close, dealer_socket, new_context
from tests.conftest import ROOT, wait_for
from tests.fakes.base import free_port
from tests.fakes.comfyui import FakeComfyUI


def _state(client, service="comfyui"):
    return client.services.get(service, {}).get("state")


def test_comfyui_goes_disconnected_connected_disconnected(endpoints, procs, client):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs.aggregator()
    procs.probe("comfyui", "--url", url, "--interval", "0.5", "--timeout", "1")

    wait_for(lambda: _state(client) == "disconnected", timeout=15, client=client)
    record = client.services["comfyui"]
    assert f"connection refused on 127.0.0.1:{port}" in record["error"]
    assert "is ComfyUI running?" in record["error"]
    assert record["required"] is True

    fake = FakeComfyUI(port)
    fake.set_queue(running=1, pending=2)
    with fake:
        wait_for(lambda: _state(client) == "connected", timeout=10, client=client)
        record = client.services["comfyui"]
        assert record["version"] == fake.version
        assert record["details"]["queue_depth"] == 3
        assert record["details"]["devices"][0]["vram_total"] == 25_386_352_640
        assert record["error"] == ""
        assert record["stats"]["p95_ms"] is not None
    wait_for(lambda: _state(client) == "disconnected", timeout=10, client=client)


def test_service_errors_are_told_apart(endpoints, procs, client):
    with FakeComfyUI() as fake:
        procs.aggregator()
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.3", "--timeout", "0.5")
        wait_for(lambda: _state(client) == "connected", timeout=15, client=client)
        for mode, words in (("500", "HTTP 500"), ("html", "not JSON"), ("hang", "no answer"),
                            ("truncated", "not JSON")):
            fake.mode = mode
            wait_for(lambda: _state(client) in ("error", "disconnected")
                     and words in client.services["comfyui"]["error"], timeout=10, client=client)
            fake.mode = "ok"
            wait_for(lambda: _state(client) == "connected", timeout=10, client=client)


def test_late_joiner_gets_full_state_from_one_request(endpoints, procs, client):
    with FakeComfyUI() as fake:
        procs.aggregator()
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.5")
        wait_for(lambda: _state(client) == "connected", timeout=15, client=client)

        # A brand-new client asks once and the reply alone carries the whole state.
        ctx = new_context()
        dealer = dealer_socket(ctx, endpoints.requests)
        try:
            def ask():
                try:
                    dealer.send(encode("request.snapshot", "late", 0, {"id": "x", "range": "5m"}), zmq.NOBLOCK)
                except zmq.Again:
                    return None
                if dealer.poll(2000):
                    reply = decode(dealer.recv())
                    # A reply may be up to 0.5 s old (the aggregator reuses it; its seq says
                    # which updates are newer): ask again until it includes the connection.
                    services = reply.body.get("state", {}).get("services", {})
                    return reply if services.get("comfyui", {}).get("state") == "connected" else None
            reply = wait_for(ask, timeout=10)
            assert reply.topic == "reply.snapshot" and reply.body["ok"] is True
            assert reply.body["id"] == "x"
            record = reply.body["state"]["services"]["comfyui"]
            assert record["state"] == "connected" and record["version"] == fake.version
        finally:
            close(dealer)
            ctx.term()

        late = MonitorClient(endpoints, name="late")
        try:
            wait_for(lambda: late.has_snapshot, timeout=10, client=late)
            assert late.services["comfyui"]["state"] == "connected"
        finally:
            late.close()


def test_probe_death_is_unknown_not_down(endpoints, procs, client):
    with FakeComfyUI() as fake:
        procs.aggregator()
        probe = procs.probe("comfyui", "--url", fake.url, "--interval", "0.5")
        # Connected and heard from: the first status can arrive before the first heartbeat.
        wait_for(lambda: _state(client) == "connected" and client.services["comfyui"]["probe_alive"],
                 timeout=15, client=client)
        probe.kill()  # kill -9: no goodbye message
        wait_for(lambda: _state(client) == "unknown", timeout=10, client=client)
        record = client.services["comfyui"]
        assert record["probe_alive"] is False
        assert "no heartbeat" in record["error"]


def test_status_cli_json_and_offline_message(endpoints, procs):
    run = lambda *a: subprocess.run([sys.executable, "-m", "aggregator", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=60, cwd=ROOT)
    offline = run("status", "--wait", "0.5")
    assert offline.returncode == 1
    assert "monitor offline" in offline.stderr and endpoints.requests in offline.stderr
    assert "Traceback" not in offline.stderr

    with FakeComfyUI() as fake:
        procs.aggregator()
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.5")
        def connected():
            out = run("status", "--json", "--wait", "3")
            return out.returncode == 0 and json.loads(out.stdout)["services"].get("comfyui", {}).get("state") == "connected"
        wait_for(connected, timeout=20, every=0.2)
        table = run("status")
        assert "comfyui" in table.stdout and "Connected" in table.stdout


def test_second_aggregator_refuses_clearly(endpoints, procs, client):
    procs.aggregator()
    wait_for(lambda: client.online, timeout=10, client=client)
    second = subprocess.run([sys.executable, "-m", "aggregator", "run"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert second.returncode == 3
    assert "already in use" in second.stderr and "Traceback" not in second.stderr
    client.poll(timeout_ms=1500)
    assert client.online  # the first one is untouched


def test_example_subscriber_prints_full_state_at_once(endpoints, procs, client):
    with FakeComfyUI() as fake:
        procs.aggregator()
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.5")
        wait_for(lambda: _state(client) == "connected", timeout=15, client=client)
        out = subprocess.run([sys.executable, "examples/subscriber.py", "--once"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert "comfyui" in out.stdout and "connected" in out.stdout and fake.version in out.stdout


def test_up_starts_everything_and_stops_without_orphans(endpoints, tmp_path):
    env = {**os.environ, "MD_HEALTH_COMFYUI_URL": f"http://127.0.0.1:{free_port()}",
           "XDG_STATE_HOME": str(tmp_path)}
    up = spawn([sys.executable, "-m", "aggregator", "up"], stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    try:
        with MonitorClient(endpoints, name="up-test") as c:
            wait_for(lambda: "comfyui" in c.services, timeout=20, client=c)
        parent = psutil.Process(up.pid)
        descendants = parent.children(recursive=True)
        assert len(descendants) >= 3  # aggregator, supervisor, comfyui probe
    finally:
        stop_child(up, grace=10)
    gone, alive = psutil.wait_procs(descendants, timeout=10)
    assert not alive, f"orphans left: {[p.cmdline() for p in alive]}"
