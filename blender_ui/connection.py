"""The add-on's monitor client: created from the preferences, replaced when they change."""
from __future__ import annotations

import time

import bpy

from . import deps, view
from .state import RT, prefs


def apply_prefs(p=None) -> None:
    """Copy what the timer and the panels need from the preferences (reading them every
    tick costs)."""
    p = p or prefs()
    if p is None:
        return
    RT.interval = max(0.01, float(p.interval))
    RT.required = {name: getattr(p, f"required_{name}", "AUTO") for name, _ in view.BACKENDS}
    RT.active_model = p.active_model
    RT.thresholds = {"p95_ms": float(p.p95_warn_ms), "p95_bad_ms": max(float(p.p95_warn_ms), float(p.p95_bad_ms)),
                     "success": float(p.success_warn_pct) / 100.0, "down_s": float(p.down_after_s)}
    RT.written.clear()  # required flags may have changed: rewrite everything once


def endpoints_from(p):
    return deps.sockets.Endpoints(p.events.strip(), p.snapshots.strip(), p.requests.strip())


def connect() -> str:
    """(Re)create the client for the endpoints in the preferences. Returns a problem or ""."""
    disconnect()
    if deps.MISSING:
        return deps.MISSING
    p = prefs()
    if p is None:
        return "the add-on is not enabled"
    import zmq

    RT.endpoints = endpoints_from(p)
    remote = [ep for ep in (RT.endpoints.events, RT.endpoints.snapshots, RT.endpoints.requests)
              if not is_loopback(ep)]
    if remote and not getattr(bpy.app, "online_access", True):  # 4.2+: the user's "Allow Online Access"
        return (f"{remote[0]} is not on this computer and Blender's \"Allow Online Access\" is off "
                "(Preferences > System > Network)")
    try:
        RT.client = deps.client.MonitorClient(RT.endpoints, history_range=RT.range, name="blender")
    except (zmq.ZMQError, ValueError, OSError) as exc:  # a mistyped endpoint, or a refused one
        RT.client = None
        return f"Cannot use these endpoints ({exc}); check them in the add-on preferences"
    RT.written.clear()
    return ""


def is_loopback(endpoint: str) -> bool:
    if not endpoint.startswith("tcp://"):
        return True  # ipc:// and inproc:// never leave the computer
    host = endpoint[len("tcp://"):].rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def disconnect() -> None:
    if RT.client is not None:
        RT.client.close()
        RT.client = None


def history_range_changed(rng: str) -> None:
    RT.range = rng
    RT.next_history = 0.0  # fetch the new range on the next once-a-second pass
    if RT.client is not None:
        RT.client.request_snapshot(rng)


def test_connection() -> str:
    problem = connect()
    if problem:
        return problem
    RT.testing_until = time.monotonic() + 3.0
    return f"Testing {RT.endpoints.snapshots} ..."
