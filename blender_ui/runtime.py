"""The add-on's one timer, its monitor client and the local monitor it may have started.

Everything here runs on Blender's main thread: one `bpy.app.timers` callback drains the
client's sockets without waiting (a message and time budget per tick), mirrors what
changed onto the window manager, and tags a redraw only then. There are no threads.
The runtime objects (client, child processes, caches) live in this module, off bpy data.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import bpy
from bpy.app.handlers import persistent

from . import deps, view

log = logging.getLogger(__package__)

STATE = "movie_director_health"  # WindowManager property name
# Regions holding the panels: only these are redrawn, never the 3D viewport itself.
REDRAW = {("VIEW_3D", "UI"), ("PROPERTIES", "WINDOW"), ("SEQUENCE_EDITOR", "UI")}
POLL_MESSAGES = 4        # per batch; batches repeat until POLL_SECONDS is spent
POLL_SECONDS = 0.001     # time budget of one tick for handling messages
HISTORY_EVERY = {"5m": 5.0, "1h": 15.0, "24h": 60.0}  # seconds between history refreshes
LOCAL_SAMPLES = 600      # trend points kept per service when the aggregator sends no history
STOP_GRACE = 3.0


class Runtime:
    """Process-wide state of the add-on (one Blender, one add-on instance)."""

    def __init__(self) -> None:
        self.client = None
        self.endpoints = None
        self.interval = 0.05
        self.required: dict[str, str] = {}
        self.active_model = ""
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping: list[tuple[subprocess.Popen, float]] = []
        self.exit_notes: list[str] = []
        self.log_path: Path | None = None
        self.written: dict[Any, Any] = {}   # what sync() last wrote, to skip unchanged values
        self.samples: dict[str, deque] = {}
        self.range = "5m"
        self.last_second = 0
        self.next_history = 0.0
        self.errors_logged: set[str] = set()
        self.testing_until = 0.0
        self.previews = None
        self.chart_keys: dict[str, Any] = {}
        self.trace_path = os.environ.get("MD_HEALTH_UI_TRACE", "")
        self.trace_last: dict[str, str] = {}
        self.dashboard_drawn = -1e9  # monotonic time a Health Monitoring panel last drew


RT = Runtime()


# -- preferences and connection ------------------------------------------------------------
def prefs():
    addon = bpy.context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


def apply_prefs(p=None) -> None:
    """Copy what the timer needs from the preferences (reading them every tick costs)."""
    p = p or prefs()
    if p is None:
        return
    RT.interval = max(0.01, float(p.interval))
    RT.required = {name: getattr(p, f"required_{name}", "AUTO") for name, _ in view.BACKENDS}
    RT.active_model = p.active_model
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
              if not _is_loopback(ep)]
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


def _is_loopback(endpoint: str) -> bool:
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
    RT.next_history = 0.0  # fetch the new range on the next housekeeping pass
    if RT.client is not None:
        RT.client.request_snapshot(rng)


# -- the timer --------------------------------------------------------------------------------
def tick() -> float:
    """The `bpy.app.timers` callback. Its body can never raise: an exception would
    unregister the timer and freeze the panels on stale values."""
    try:
        wm = bpy.context.window_manager
        if wm is not None and RT.client is not None:
            run_tick(RT.client, wm)
            second = int(time.monotonic())
            if second != RT.last_second:
                RT.last_second = second
                housekeeping(wm)
    except Exception as exc:  # noqa: BLE001 - see docstring; logged once per kind of failure
        key = f"{type(exc).__name__}: {exc}"[:200]
        if key not in RT.errors_logged:
            RT.errors_logged.add(key)
            log.exception("Movie Director health timer: %s (the timer keeps running)", key)
    return RT.interval


def run_tick(client, wm) -> bool:
    """One tick against a client: drain within budget, mirror changes, redraw if needed.
    Also the entry point `make bench` times. Returns True if anything visible changed.

    Idle (the common case) costs one zero-timeout zmq poll, inside `client.poll`. With
    messages waiting, they are handled in batches until the time budget is spent, so a
    flood is spread over ticks (the SUB socket's high-water mark drops the excess) instead
    of freezing Blender."""
    deadline = time.perf_counter() + POLL_SECONDS
    changed = False
    while True:
        before = client.rejects.accepted
        changed |= client.poll(POLL_MESSAGES, POLL_SECONDS)
        if client.rejects.accepted - before < POLL_MESSAGES or time.perf_counter() >= deadline:
            break
    if changed:
        _sample(client)
        sync(getattr(wm, STATE), client)
        tag_redraw(wm)
    return changed


def _sample(client) -> None:
    """Keep a short local trend per service from live updates, for when the aggregator's
    history is not available (older aggregator, or the first seconds)."""
    for name, rec in client.services.items():
        stats = rec.get("stats") or {}
        t = rec.get("last_check")
        buf = RT.samples.get(name)
        if buf is None:
            buf = RT.samples[name] = deque(maxlen=LOCAL_SAMPLES)
        if t and (not buf or buf[-1][0] != t):
            buf.append((t, stats.get("p50_ms"), stats.get("p95_ms"), stats.get("success_rate")))


def _put(owner, key, attr: str, value) -> bool:
    if RT.written.get(key, _UNSET) == value:
        return False
    setattr(owner, attr, value)
    RT.written[key] = value
    return True


_UNSET = object()
_FIELDS = ("label", "state", "required", "version", "error", "last_check")


def sync(state, client) -> bool:
    """Mirror the client's view onto the window manager, writing only what changed."""
    online = client.online
    rows = []
    for name in view.service_names(client.services):
        rec = client.services.get(name)
        rows.append((name, view.label_of(name), view.state_of(rec, online),
                     view.is_required(name, rec, RT.required.get(name, "AUTO")),
                     str((rec or {}).get("version") or ""), str((rec or {}).get("error") or ""),
                     _clock_text((rec or {}).get("last_check"))))
    light, reason = view.overall([(r[1], r[2], r[3]) for r in rows], online)
    changed = _put(state, "online", "online", online)
    changed |= _put(state, "overall", "overall", light)
    changed |= _put(state, "overall_reason", "overall_reason", reason)
    changed |= _put(state, "llm_state", "llm_state", view.state_of(client.services.get(view.LLM), online))
    names = tuple(r[0] for r in rows)
    if RT.written.get("names") != names or len(state.services) != len(names):
        state.services.clear()
        for name in names:
            state.services.add().name = name
        for key in [k for k in RT.written if isinstance(k, tuple)]:
            del RT.written[key]
        RT.written["names"] = names
        changed = True
    for item, row in zip(state.services, rows):
        for attr, value in zip(_FIELDS, row[1:]):
            changed |= _put(item, (row[0], attr), attr, value)
    if changed:
        state.updates += 1
    return changed


def _clock_text(ts) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, (int, float)) and ts > 0 else ""


def tag_redraw(wm) -> None:
    for window in wm.windows:
        for area in window.screen.areas:
            if (area.type, "UI") in REDRAW or (area.type, "WINDOW") in REDRAW:
                for region in area.regions:
                    if (area.type, region.type) in REDRAW:
                        region.tag_redraw()


def housekeeping(wm) -> None:
    """Once a second: children, history refresh, the "3 s ago" texts, test-connection result."""
    state = getattr(wm, STATE)
    client = RT.client
    # Idle ticks skip the client, so its liveness check (heartbeat lost -> offline, ask
    # again for a snapshot) runs here, once a second.
    if client.poll(POLL_MESSAGES, POLL_SECONDS):
        run_sync(wm)
    _reap_children(state)
    now = time.monotonic()
    # History (for the charts) is fetched only while a dashboard is on screen: a snapshot
    # reply with history is the one large message the add-on decodes.
    if client.online and now >= RT.next_history and now - RT.dashboard_drawn < 3.0:
        client.request_snapshot(RT.range)
        RT.next_history = now + HISTORY_EVERY.get(RT.range, 5.0)
    if RT.testing_until:
        if client.online:
            note = f"Connected: monitor {client.aggregator.get('instance', '?')} answers at {RT.endpoints.requests}"
            RT.testing_until = 0.0
            _put(state, "message", "message", note)
        elif now > RT.testing_until:
            RT.testing_until = 0.0
            _put(state, "message", "message", f"No monitor answered at {RT.endpoints.snapshots} within 3 s. "
                                              "Start the local monitor, or check the endpoints.")
    if RT.written.get("online") != client.online:
        run_sync(wm)
    elif client.online and client.services:
        tag_redraw(wm)  # the "last check N s ago" texts move on every second


def run_sync(wm) -> None:
    if RT.client is not None and sync(getattr(wm, STATE), RT.client):
        tag_redraw(wm)


@persistent
def force_sync(*_args) -> None:
    """After loading a .blend the window manager may be new: write everything again."""
    RT.written.clear()
    wm = bpy.context.window_manager
    if wm is None:  # enabled at start-up, before a window manager exists: load_post comes later
        return
    try:
        run_sync(wm)
    except Exception:  # noqa: BLE001 - never break file loading
        log.exception("Movie Director health: resync after load failed")


def start_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=0.0, persistent=True)


def stop_timer() -> None:
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)


def test_connection() -> str:
    problem = connect()
    if problem:
        return problem
    RT.testing_until = time.monotonic() + 3.0
    return f"Testing {RT.endpoints.snapshots} ..."


# -- the local monitor (child processes) --------------------------------------------------------
def user_dir() -> Path:
    try:  # an extension (4.2+) writes into its own user directory
        return Path(bpy.utils.extension_path_user(__package__, create=True))
    except Exception:  # noqa: BLE001 - a legacy add-on, or Blender before 4.2
        return Path(bpy.utils.user_resource("CONFIG", path="movie_director_health", create=True))


def monitor_alive() -> bool:
    return any(p.poll() is None for p in RT.children.values())


def start_monitor() -> tuple[bool, str]:
    """Start the aggregator and every enabled probe as children of Blender."""
    if deps.MISSING:
        return False, deps.MISSING
    if monitor_alive():
        return False, "The local monitor is already running"
    p = prefs()
    ep = endpoints_from(p)
    if deps.sockets.endpoint_in_use(ep.snapshots, timeout=0.2):
        return False, f"A monitor already runs at {ep.snapshots}; the panels use it"
    python = bpy.path.abspath(p.monitor_python) if p.monitor_python.strip() else sys.executable
    if not Path(python).is_file():
        return False, f"No Python interpreter at {python!r} (see the add-on preferences)"
    env = deps.child_environment(python)
    env.update(MD_HEALTH_EVENTS=ep.events, MD_HEALTH_SNAPSHOTS=ep.snapshots, MD_HEALTH_REQUESTS=ep.requests)
    RT.log_path = user_dir() / "monitor.log"
    RT.exit_notes.clear()
    with open(RT.log_path, "a", encoding="utf-8") as logf:
        logf.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting the local monitor with {python}\n")
        logf.flush()
        kwargs = dict(env=env, cwd=str(deps.BACKEND_ROOT), stdout=logf, stderr=subprocess.STDOUT,
                      creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        try:
            RT.children = {
                "aggregator": deps.lifeline.spawn([python, "-m", "aggregator", "run"], **kwargs),
                "probes": deps.lifeline.spawn([python, "-m", "probes", "run-all"], **kwargs),
            }
        except OSError as exc:
            stop_monitor(wait=True)
            return False, f"Cannot start {python}: {exc}"
    RT.next_history = 0.0
    return True, f"Started the local monitor (log: {RT.log_path})"


def stop_monitor(wait: bool = False) -> int:
    """Stop only what this add-on started. Without `wait` it never blocks: the lifelines are
    closed now and housekeeping kills any child that overstays the grace period."""
    procs = [p for p in RT.children.values() if p.poll() is None]
    RT.children = {}
    for proc in procs:  # close every lifeline first, so the children stop in parallel
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
    if wait:
        for proc in procs + [p for p, _ in RT.stopping]:
            deps.lifeline.stop(proc, grace=STOP_GRACE)
        RT.stopping = []
    else:
        RT.stopping += [(proc, time.monotonic() + STOP_GRACE) for proc in procs]
    return len(procs)


def _reap_children(state) -> None:
    now = time.monotonic()
    keep = []
    for proc, deadline in RT.stopping:
        if proc.poll() is None:
            if now > deadline:
                proc.kill()
                proc.wait(0.5)
            else:
                keep.append((proc, deadline))
    RT.stopping = keep
    for name, proc in list(RT.children.items()):
        if proc.poll() is not None:
            del RT.children[name]
            note = f"The local {name} exited with code {proc.returncode}; see {RT.log_path}"
            RT.exit_notes.append(note)
            _put(state, "message", "message", note)
    _put(state, "monitor_running", "monitor_running", monitor_alive())


def _on_exit() -> None:
    """Quitting Blender does not unregister add-ons: stop our children here. (If Blender
    is killed instead, the children see their stdin lifeline close and stop themselves.)"""
    stop_monitor(wait=True)


# -- exports -------------------------------------------------------------------------------------
class ExportError(Exception):
    pass


EXPORT_TIER = {"5m": "1s", "1h": "10s", "24h": "1m"}


def write_export(reply: dict[str, Any], filepath: str, fmt: str) -> str:
    """Write an export reply to a file. Returns the sentence to report."""
    if not reply.get("ok"):
        raise ExportError(str(reply.get("error") or "the monitor refused the export"))
    content = reply.get("content")
    if not isinstance(content, str):
        raise ExportError("the monitor's reply has no content")
    path = Path(bpy.path.abspath(filepath))
    if path.suffix.lower() != f".{fmt}":
        path = path.with_suffix(f".{fmt}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8", newline="")
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    rows = reply.get("rows")
    return f"Exported {rows if isinstance(rows, int) else 'the'} rows as {fmt.upper()} to {path}"


# -- pictures ------------------------------------------------------------------------------------
def chart_icons(key: str, signature, size: tuple[int, int], render) -> list[int]:
    """Icon ids (square tiles, left to right) for a chart, re-rendered only when
    `signature` changed."""
    from . import charts

    pcoll = RT.previews
    if pcoll is None:
        return []
    w, h = size
    names = [f"{key}.{k}" for k in range(w // h)]
    if RT.chart_keys.get(key) != signature:
        for name, tile in zip(names, charts.tiles(render(), w, h)):
            preview = pcoll.get(name) or pcoll.new(name)
            preview.image_size = preview.icon_size = (h, h)
            preview.image_pixels_float = tile
            preview.icon_pixels_float = tile
        RT.chart_keys[key] = signature
    return [pcoll[name].icon_id for name in names if name in pcoll]


def trace(panel: str, values: dict[str, Any]) -> None:
    """When MD_HEALTH_UI_TRACE names a file, append what a panel drew (one JSON line per
    change), so a GUI test can check what was really on screen next to its screenshot."""
    if not RT.trace_path:
        return
    line = json.dumps({"panel": panel, **values}, sort_keys=True, default=str)
    if RT.trace_last.get(panel) == line:
        return
    RT.trace_last[panel] = line
    with open(RT.trace_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"t": time.time(), "panel": panel, **values}, sort_keys=True, default=str) + "\n")


# -- lifecycle -----------------------------------------------------------------------------------
def register() -> None:
    import bpy.utils.previews

    RT.previews = bpy.utils.previews.new()
    RT.chart_keys.clear()
    apply_prefs()
    problem = connect()
    state = getattr(bpy.context.window_manager, STATE, None) if bpy.context.window_manager else None
    if problem and state is not None:
        state.message = problem
    atexit.unregister(_on_exit)  # atexit cannot be queried: make sure it is there exactly once
    atexit.register(_on_exit)
    if bpy.app.handlers.load_post.count(force_sync) == 0:
        bpy.app.handlers.load_post.append(force_sync)
    force_sync()  # values left on the window manager by an earlier registration are stale
    start_timer()
    p = prefs()
    if p is not None and p.auto_start and not deps.MISSING:
        ok, note = start_monitor()
        log.info("Movie Director health: auto-start: %s", note)
        if state is not None:
            state.message = note


def unregister() -> None:
    stop_timer()
    if force_sync in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(force_sync)
    stop_monitor(wait=True)
    atexit.unregister(_on_exit)
    disconnect()
    if RT.previews is not None:
        bpy.utils.previews.remove(RT.previews)
        RT.previews = None
    RT.chart_keys.clear()
    RT.written.clear()
    RT.samples.clear()
    RT.errors_logged.clear()
    wm = bpy.context.window_manager
    if wm is not None and hasattr(wm, STATE):  # stored values would outlive the definition
        wm.property_unset(STATE)
