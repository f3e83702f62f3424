"""Runs inside real `bpy` (the PyPI module): the add-on's timer tick and its update latency.

Started by bench/fig_blender.py with the endpoints of a running aggregator. Timers never
fire in the bpy module, so this calls the add-on's timer callback itself at the cadence
Blender would (the add-on's own interval), exactly as tests/test_blender_addon.py does,
and times each call. The empty-timer baseline is timed in the same loop, right before
each tick, so both see the same cache and scheduler conditions.

    python -m bench.bpy_tick --events EP --snapshots EP --requests EP --ticks N --updates M --out F
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import bpy  # noqa: F401 - real bpy: the add-on registers into it
import addon_utils

from bus.lifeline import spawn, stop as stop_child
from bus.protocol import Publisher
from bus.sockets import close, new_context, pub_socket
from tests.fakes.base import free_port

ADDON = "blender_ui"


def empty_timer() -> float:
    """Baseline: the cheapest timer callback Blender can call."""
    return 0.05


def _prefs():
    return bpy.context.preferences.addons[ADDON].preferences


def _use(runtime, events: str, snapshots: str, requests: str) -> None:
    p = _prefs()
    p.events, p.snapshots, p.requests = events, snapshots, requests
    from blender_ui import connection

    problem = connection.connect()
    if problem:
        raise SystemExit(f"bench: the add-on cannot connect: {problem}")


def _tick_until(runtime, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runtime.tick()
        if predicate():
            return
        time.sleep(runtime.RT.interval)
    raise SystemExit("bench: the add-on never synced with the monitor")


def timed_ticks(runtime, n: int) -> dict[str, list[float]]:
    """n timer ticks at the add-on's interval; milliseconds per call, tick and empty."""
    ticks, empties, handled = [], [], []
    client = runtime.RT.client
    for _ in range(n):
        before = client.rejects.accepted
        t0 = time.perf_counter()
        empty_timer()
        t1 = time.perf_counter()
        interval = runtime.tick()
        t2 = time.perf_counter()
        empties.append((t1 - t0) * 1000)
        ticks.append((t2 - t1) * 1000)
        handled.append(client.rejects.accepted - before)
        time.sleep(max(0.0, interval - (time.perf_counter() - t0)))
    return {"tick_ms": ticks, "empty_ms": empties, "handled": handled}


def update_latency(runtime, events: str, n: int) -> list[float]:
    """Publish a state change as a probe would; time until the add-on's property shows it,
    ticking at the add-on's interval as Blender's timer would. The service has a name of
    its own (the panel lists every service the monitor reports), so no other phase's
    traffic can touch it."""
    from bench.fig_bus import _status_body

    ctx = new_context()
    sock = pub_socket(ctx, events)
    pub = Publisher(sock, "probe.bench-ui")
    state = bpy.context.window_manager.movie_director_health
    out = []
    try:
        states = ("connected", "disconnected")
        k = 0

        def shown():
            item = state.services.get("bench-ui")
            return item.state if item else ""

        # Slow joiner: repeat the first status until the panel shows it.
        deadline = time.monotonic() + 20
        while shown() != states[0] and time.monotonic() < deadline:
            pub.send("heartbeat.probe.bench-ui", {"interval": 1.0, "services": ["bench-ui"]})
            pub.send("status.bench-ui", _status_body("bench-ui", state=states[0]))
            runtime.tick()
            time.sleep(runtime.RT.interval)
        next_tick = time.perf_counter()
        for i in range(n):
            k += 1
            want = states[k % 2]
            pub.send("heartbeat.probe.bench-ui", {"interval": 1.0, "services": ["bench-ui"]})
            # Publish at a random phase of the timer's cycle, as a real change would arrive.
            time.sleep(runtime.RT.interval * ((i * 0.618) % 1.0))
            start = time.perf_counter()
            pub.send("status.bench-ui", _status_body("bench-ui", state=want))
            next_tick = max(next_tick, start)
            while shown() != want:
                time.sleep(max(0.0, next_tick - time.perf_counter()))
                interval = runtime.tick()
                next_tick = time.perf_counter() + interval
                if time.perf_counter() - start > 10:
                    rec = runtime.RT.client.services.get("bench-ui") or {}
                    raise SystemExit(f"bench: a status change to {want} took over 10 s to reach the property "
                                     f"(shows {shown()!r}; client has {rec.get('state')!r})")
            out.append((time.perf_counter() - start) * 1000)
        return out
    finally:
        close(sock)
        ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("events", "snapshots", "requests", "out"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--ticks", type=int, default=400)
    parser.add_argument("--updates", type=int, default=100)
    args = parser.parse_args()

    mod = addon_utils.enable(ADDON, default_set=True, handle_error=None)
    if mod is None:
        raise SystemExit("bench: the add-on failed to enable")
    from blender_ui import runtime

    _use(runtime, args.events, args.snapshots, args.requests)
    _tick_until(runtime, lambda: runtime.RT.client.online and runtime.RT.client.has_snapshot, 20)
    result = {"interval_s": runtime.RT.interval, "poll_messages": runtime.POLL_MESSAGES,
              "poll_seconds": runtime.POLL_SECONDS, "python": sys.version.split()[0],
              "bpy": bpy.app.version_string}
    result["idle"] = timed_ticks(runtime, args.ticks)

    py = sys.executable
    load = spawn([py, "-m", "bench.loadgen", "probes", "--events", args.events, "--services", "5", "--rate", "1"])
    try:
        _tick_until(runtime, lambda: len(runtime.RT.client.services) >= 5, 20)
        result["services5"] = timed_ticks(runtime, args.ticks)
    finally:
        stop_child(load)

    result["update_ms"] = update_latency(runtime, args.events, args.updates)

    flood_snapshots, flood_requests = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    flood = spawn([py, "-m", "bench.loadgen", "flood", "--snapshots", flood_snapshots, "--requests", flood_requests,
                   "--rate", "10000"], stdout=subprocess.PIPE, text=True)
    try:
        _use(runtime, args.events, flood_snapshots, flood_requests)
        # Active, not just online: a syncing Clone client only buffers; the figure is for applying.
        _tick_until(runtime, lambda: runtime.RT.client.online and runtime.RT.client.state == "active", 20)
        result["flood"] = timed_ticks(runtime, args.ticks)
    finally:
        stop_child(flood)
    words = (flood.stdout.read() if flood.stdout else "").split()
    if len(words) >= 4 and words[0] == "sent":
        result["flood_rate"] = int(words[1]) / float(words[3])
    addon_utils.disable(ADDON, default_set=True, handle_error=None)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
