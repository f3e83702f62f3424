"""The CLI against a real aggregator and a real probe on the fake ComfyUI: every figure shows."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psutil

from tests.conftest import ROOT, wait_for
from tests.reliability import measured  # noqa: F401 - fixture
from tests.fakes.comfyui import FakeComfyUI


def _run(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "aggregator", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_status_compare_alerts_watch_show_every_figure(endpoints, procs, client, isolated_env):
    (isolated_env / "config.toml").write_text("[alerts.comfyui]\nqueue = 1\nraise_after_s = 0\n")
    with FakeComfyUI() as fake:
        fake.set_queue(running=1, pending=2)
        procs.aggregator()
        procs.probe("comfyui", "--url", fake.url, "--interval", "0.3")
        wait_for(lambda: client.services.get("comfyui", {}).get("stats", {}).get("count", 0) >= 4
                 and client.alerts, timeout=30, client=client)

        out = _run("status", "--json")
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)["services"]["comfyui"]
        for window in ("5m", "1h", "24h"):
            w = r["windows"][window]
            for key in ("count", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "success_rate",
                        "uptime", "unknown_ratio", "rpm", "errors_by_kind"):
                assert key in w, (window, key)
            assert w["p95_ms"] > 0 and w["success_rate"] == 1.0
        assert r["uptime"]["5m"] == 1.0 and r["queue"]["current"] == 3 and r["queue"]["peak"] == 3
        assert r["since_change_s"] is not None and r["probe_alive"] is True
        assert json.loads(out.stdout)["persistence"]["mode"] == "sqlite"

        cmp_ = _run("compare", "--window", "1h")
        assert cmp_.returncode == 0, cmp_.stderr
        assert "comfyui" in cmp_.stdout and "p95 ms" in cmp_.stdout and "uptime" in cmp_.stdout
        assert _run("compare", "nope").returncode == 2

        alerts = _run("alerts", "--json")
        assert alerts.returncode == 0
        assert [a["name"] for a in json.loads(alerts.stdout)] == ["queue"]
        assert "queue depth 3 is above 1" in _run("alerts").stdout

        try:
            watch = _run("watch", "--every", "0.5", timeout=6)
        except subprocess.TimeoutExpired as exc:
            screen = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        else:
            screen = watch.stdout
        assert "TRENDS 5m" in screen and "comfyui" in screen
        assert any(ch in screen for ch in "▁▂▃▄▅▆▇█")  # sparklines of p95 / success


def test_help_everywhere_and_offline_messages(endpoints):
    for cmd in ("run", "status", "watch", "up", "export", "compare", "alerts"):
        out = _run(cmd, "--help")
        assert out.returncode == 0 and "usage:" in out.stdout, cmd
    for cmd in ("compare", "alerts"):
        out = _run(cmd, "--wait", "0.3")
        assert out.returncode == 1 and "monitor offline" in out.stderr and "Traceback" not in out.stderr
    out = _run("export", "--wait", "0.3")
    assert out.returncode == 1 and "no history file" in out.stderr


def test_run_refuses_a_bad_config_naming_the_key(endpoints, isolated_env):
    (isolated_env / "config.toml").write_text("[aggregator]\nflush_interval = 60\n")
    out = _run("run", timeout=30)
    assert out.returncode == 2 and "aggregator.flush_interval" in out.stderr and "line 2" in out.stderr
    assert "Traceback" not in out.stderr


def test_status_table_never_cuts_a_version_silently():
    from aggregator.terminal import render

    services = {"wan2gp": {"service": "wan2gp", "state": "connected", "version": "gradio 5.29.0", "stats": {}},
                "odd": {"service": "odd", "state": "connected", "version": "gradio 5.29.0-beta.12+local", "stats": {}}}
    table = render(services, online=True, color=False)
    assert "gradio 5.29.0 " in table  # shown whole, not as "gradio 5.29."
    assert "gradio 5.29.0…" in table and "beta" not in table  # too long: cut visibly


def _children(proc: subprocess.Popen) -> list:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_up_beside_a_running_monitor_shows_it_and_starts_nothing(endpoints, procs, client, measured):
    """`make run` while Blender's local monitor runs: `md-health up` finds the aggregator on
    the endpoints, says so, shows it, and starts no aggregator and no second set of probes."""
    agg = procs.aggregator()
    wait_for(lambda: client.has_snapshot and client.aggregator.get("instance"), timeout=30, client=client)
    instance = client.aggregator["instance"]
    t0 = time.monotonic()
    up = subprocess.Popen([sys.executable, "-m", "aggregator", "up", "--every", "0.2"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=ROOT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(up.stdout.readline, b"")), daemon=True)
    reader.start()
    try:
        seen_children = []
        # The message, then the first screen of the live view of that monitor, shown online.
        wait_for(lambda: seen_children.extend(_children(up)) or
                 b"Movie Director backend health" in b"".join(lines) and b"SERVICE" in b"".join(lines),
                 timeout=30, every=0.05)
        shown = time.monotonic() - t0
        text = b"".join(lines).decode()
        assert "A monitor is already running at" in text and endpoints.requests in text
        assert "Monitor offline" not in text
        assert f"(instance {instance})" in text and "Started" not in text
        seen_children.extend(_children(up))
        assert seen_children == [], f"md-health up started {seen_children}"
        assert up.poll() is None  # still showing it
    finally:
        up.kill()
        up.wait(timeout=10)
    assert agg.poll() is None  # the running monitor is untouched
    wait_for(lambda: client.online and client.aggregator.get("instance") == instance, timeout=10, client=client)
    measured.record("up_beside_monitor", section="Faults", order=19,
                    case="`md-health up` (make run) while a monitor already holds the endpoints",
                    required="says a monitor runs (with its instance) and shows it; starts no aggregator and no "
                             "probes; the running monitor is untouched",
                    measured=f"message and first screen (online) {shown:.2f} s after start; 0 child processes; "
                             "the original aggregator still up, same instance",
                    shown_s=round(shown, 3), children=0)


def test_up_refuses_endpoints_held_by_another_program(endpoints):
    """A port held by something that is not an aggregator: say so, start nothing, exit non-zero."""
    import socket

    holders = []
    for ep in (endpoints.events, endpoints.snapshots, endpoints.requests):
        s = socket.socket()
        s.bind(("127.0.0.1", int(ep.rsplit(":", 1)[1])))
        s.listen(8)
        holders.append(s)
    try:
        up = subprocess.Popen([sys.executable, "-m", "aggregator", "up"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=ROOT)
        seen_children = []
        try:
            wait_for(lambda: seen_children.extend(_children(up)) or up.poll() is not None, timeout=60, every=0.02)
        finally:
            if up.poll() is None:
                up.kill()
        out, err = (b.decode() for b in up.communicate(timeout=10))
    finally:
        for s in holders:
            s.close()
    assert up.returncode == 3, (out, err)
    assert "nothing there answered as a Movie Director monitor" in err and endpoints.events in err
    assert "Nothing was started" in err and "Started" not in out and "Traceback" not in err
    assert seen_children == []


def _strict_json(text: str):
    """Python's json accepts NaN and Infinity; RFC 8259 (and JSON.parse) do not."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_status_json_is_strict_json_even_when_a_sender_put_nan_in_details(endpoints, procs, client):
    """A forged status with NaN and Infinity nested in `details` (contract C7): whatever the
    bus lets through, `md-health status --json` prints only strict JSON, never a traceback."""
    from bus.protocol import Publisher
    from bus.sockets import close, new_context, pub_socket

    procs.aggregator()
    ctx = new_context()
    sock = pub_socket(ctx, endpoints.events)
    pub = Publisher(sock, "probe.forged")
    body = {"service": "forged", "kind": "test", "state": "connected", "url": "", "required": False,
            "version": "", "capabilities": [], "error": "", "error_kind": "", "interval": 1.0, "timeout": 1.0,
            "details": {"a": float("nan"), "queue_depth": float("inf"), "deep": [{"b": float("-inf")}]}}
    try:
        wait_for(lambda: client.has_snapshot, timeout=30, client=client)
        # The forged status is either taken (old decoder) or refused and counted (one that checks
        # every depth); either way the heartbeat's counters move once it has been handled.
        def handled():
            pub.send("status.forged", body)
            bus = client.aggregator.get("bus") or {}
            return "forged" in client.services or sum((bus.get("rejected") or {}).values()) > 0
        wait_for(handled, timeout=30, client=client, every=0.2)
    finally:
        close(sock)
        ctx.term()
    out = _run("status", "--json", "--wait", "10")
    assert "Traceback" not in out.stderr, out.stderr
    assert "NaN" not in out.stdout and "Infinity" not in out.stdout, out.stdout
    if out.returncode == 0:
        _strict_json(out.stdout)
    else:
        assert out.returncode == 2 and "non-finite" in out.stderr and out.stdout == "", out


def test_discover_subcommand_passes_the_rest_of_the_line_to_probes_discover(monkeypatch, capsys):
    """Contract C5: `md-health discover ...` is probes.discover.cli_main(rest), imported lazily;
    without that module it says so plainly."""
    import types

    from aggregator import cli

    monkeypatch.setitem(sys.modules, "probes.discover", None)  # as if probes/discover.py were absent
    assert cli.main(["discover", "--json"]) == 2
    assert "discover is not available" in capsys.readouterr().err

    calls = []
    fake = types.ModuleType("probes.discover")
    fake.cli_main = lambda argv: calls.append(argv) or 7
    monkeypatch.setitem(sys.modules, "probes.discover", fake)
    assert cli.main(["discover", "--host", "10.0.0.2", "--write", "--json", "-h"]) == 7
    assert cli.main(["--config", "/x/config.toml", "discover", "--json"]) == 7
    assert cli.main(["--config", "/x/config.toml", "discover", "--config", "/y.toml"]) == 7
    assert calls == [["--host", "10.0.0.2", "--write", "--json", "-h"], ["--config", "/x/config.toml", "--json"],
                     ["--config", "/y.toml"]]


def test_status_table_shows_running_and_waiting_and_every_gpu():
    from aggregator.terminal import render

    gib = 2 ** 30
    services = {
        "comfyui": {"state": "connected", "details": {
            "queue_running": 1, "queue_waiting": 3, "queue_depth": 4,
            "devices": [{"name": "cuda:0 RTX 4090", "type": "cuda", "index": 0, "vram_total": 24 * gib, "vram_free": 12 * gib},
                        {"name": "cuda:1 RTX 3090", "type": "cuda", "index": 1, "vram_total": 24 * gib, "vram_free": 20 * gib}]}},
        "wan2gp": {"state": "connected", "details": {"queue_running": None, "queue_waiting": None}},
        "rvc": {"state": "loading", "details": {"queue_running": None, "queue_waiting": 2, "queue_depth": 2}},
    }
    out = render(services, online=True, color=False, now=0.0)
    rows = {}
    for line in out.splitlines():  # the first line per service is its status row
        if line.split():
            rows.setdefault(line.split()[0], line)
    assert " 1/3 " in rows["comfyui"] and " —/2 " in rows["rvc"] and " — " in rows["wan2gp"]
    assert "RTX 4090" in out and "RTX 3090" in out and "12.0 of 24.0 GiB" in out and "20.0 of 24.0 GiB" in out
    assert "Loading" in rows["rvc"]
