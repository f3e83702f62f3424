"""The add-on's one timer and the mirroring of the monitor's view onto the window manager.

Everything here runs on Blender's main thread: one `bpy.app.timers` callback drains the
client's sockets without waiting (a message and time budget per tick), mirrors what
changed onto the window manager, re-renders a chart only when its data changed, and tags
a redraw only then. There are no threads. Intervals run on the monotonic clock; wall time
only labels what a person reads.
"""
from __future__ import annotations

import logging
import time
from collections import deque

import bpy
from bpy.app.handlers import persistent

from . import history_window, pictures, view
from .state import RT, STATE

log = logging.getLogger(__package__)

# Regions holding the panels: only these are redrawn, never the 3D viewport itself.
REDRAW = {("VIEW_3D", "UI"), ("PROPERTIES", "WINDOW"), ("SEQUENCE_EDITOR", "UI")}
POLL_MESSAGES = 4        # per batch; batches repeat until POLL_SECONDS is spent
POLL_SECONDS = 0.001     # time budget of one tick for handling messages
HISTORY_EVERY = {"5m": 5.0, "1h": 15.0, "24h": 60.0}  # seconds between history refreshes
LOCAL_SAMPLES = 600      # trend points kept per service when the aggregator sends no history


# -- the timer --------------------------------------------------------------------------------
def tick() -> float:
    """The `bpy.app.timers` callback. Its body can never raise: an exception would
    unregister the timer and freeze the panels on stale values."""
    try:
        wm = bpy.context.window_manager
        if wm is not None and history_window.SHOWN.reopen:
            history_window.reopen(wm)  # a save closed it a moment ago
        if wm is not None and RT.client is not None:
            run_tick(RT.client, wm)
            if history_window.is_open() and history_window.resized(wm):
                history_window.update(wm)  # a resize is re-rendered at once, not a second later
            now = time.monotonic()
            if now >= RT.next_second:
                RT.next_second = now + 1.0
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
        if panels_visible(wm):  # nobody looks: no texts to build, no pictures to render
            refresh_cards(client)
            pictures.update(wm)
        history_window.update(wm)  # only while its window is open
        tag_redraw(wm)
    return changed


def _sample(client) -> None:
    """Keep a short local trend per service from live updates, for when the aggregator's
    history is not available (older aggregator, or the first seconds)."""
    for name in [n for n in RT.samples if n not in client.services]:
        del RT.samples[name]  # the monitor forgot this service (expired): so do we
    for name, rec in client.services.items():
        stats = rec.get("stats") or {}
        t = rec.get("last_check")
        buf = RT.samples.get(name)
        if buf is None:
            buf = RT.samples[name] = deque(maxlen=LOCAL_SAMPLES)
        if t and (not buf or buf[-1][0] != t):
            buf.append((t, stats.get("p50_ms"), stats.get("p95_ms"), stats.get("success_rate")))


def refresh_cards(client) -> None:
    """Build the panels' texts (view.card) for each record that is new since the last call,
    or for every record after the artist chose another range; keep the others as they are.
    Every service the panels show has a card, one the monitor has not reported (no record)
    and the language models too."""
    old, rng = RT.cards, RT.range
    RT.cards = {name: entry if (entry := old.get(name)) is not None and entry[0] is rec and entry[1] == rng
                else (rec, rng, view.card(rec, rng))
                for name in (*view.service_names(client.services), view.LLM)
                for rec in (client.services.get(name),)}


# -- mirroring ----------------------------------------------------------------------------------
_UNSET = object()
_FIELDS = ("label", "state", "required", "version", "error", "last_check")


def _put(owner, key, attr: str, value) -> bool:
    if RT.written.get(key, _UNSET) == value:
        return False
    setattr(owner, attr, value)
    RT.written[key] = value
    return True


def sync(state, client) -> bool:
    """Mirror the client's view onto the window manager, writing only what changed."""
    online = client.online
    rows = []
    for name in view.service_names(client.services):
        rec = client.services.get(name)
        rows.append((name, view.label_of(name), view.state_of(rec, online),
                     view.is_required(name, rec, RT.required.get(name, "AUTO")),
                     str((rec or {}).get("version") or ""), view.plain(str((rec or {}).get("error") or "")),
                     _clock_text((rec or {}).get("last_check"))))
    light, reason = view.overall([(r[1], r[2], r[3]) for r in rows], online)
    changed = _put(state, "online", "online", online)
    changed |= _put(state, "overall", "overall", light)
    changed |= _put(state, "overall_reason", "overall_reason", reason)
    # Writing these words redraws the status bar too (see props._redraw_windows).
    changed |= _put(state, "overall_short", "overall_short", view.overall_short(light, [(r[2], r[3]) for r in rows]))
    changed |= _put(state, "llm_state", "llm_state", view.state_of(client.services.get(view.LLM), online))
    names = tuple(r[0] for r in rows)
    if RT.written.get("names") != names or len(state.services) != len(names):
        shown = {item.name for item in state.services if item.show_details}
        state.services.clear()
        for name in names:
            item = state.services.add()
            item.name = name
            item.show_details = name in shown  # the artist's open details survive a new service list
        for key in [k for k in RT.written if isinstance(k, tuple)]:
            del RT.written[key]
        RT.written["names"] = names
        changed = True
    for item, row in zip(state.services, rows):
        for attr, value in zip(_FIELDS, row[1:]):
            changed |= _put(item, (row[0], attr), attr, value)
    changed |= _monitor_fields(state, online)
    if changed:
        state.updates += 1
    return changed


def _monitor_fields(state, online: bool) -> bool:
    mon = RT.monitor
    changed = _put(state, "monitor_state", "monitor_state", mon.update(online))
    return changed | _put(state, "monitor_note", "monitor_note", mon.note)


def monitor_state(wm) -> None:
    """Mirror the local monitor's state now (the Start and Stop operators call this, so
    the panel is current right after a click, not a second later)."""
    state = getattr(wm, STATE, None)
    if state is not None and _monitor_fields(state, bool(RT.client and RT.client.online)):
        tag_redraw(wm)


def _clock_text(ts) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, (int, float)) and ts > 0 else ""


def tag_redraw(wm) -> None:
    for window in wm.windows:
        for area in window.screen.areas:
            for region in area.regions:
                if (area.type, region.type) in REDRAW:
                    region.tag_redraw()


def panels_visible(wm) -> bool:
    """Is an editor that shows the panels on screen? (History is fetched only then: a
    snapshot with history is the one large message the add-on decodes.) Without windows
    (scripts, tests) the answer is yes, so what a script asks for is there."""
    windows = list(wm.windows)
    if not windows or history_window.is_open():
        return True
    for window in windows:
        for area in window.screen.areas:
            space = area.spaces.active
            if area.type in ("VIEW_3D", "SEQUENCE_EDITOR") and getattr(space, "show_region_ui", False):
                return True
            if area.type == "PROPERTIES" and getattr(space, "context", "") == "SCENE":
                return True
    return False


def housekeeping(wm) -> None:
    """Once a second: the local monitor, history refresh, the "3 s ago" texts, the
    moving time axis of the charts, the test-connection result, Find Backends' answer."""
    state = getattr(wm, STATE)
    client = RT.client
    # Idle ticks skip the client, so its liveness check (heartbeat lost -> offline, ask
    # again for a snapshot) runs here, once a second.
    client.poll(POLL_MESSAGES, POLL_SECONDS)
    now = time.monotonic()
    if client.online and now >= RT.next_history and panels_visible(wm):
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
    changed = sync(state, client)
    changed |= RT.discovery.poll()  # Find Backends' child: collected once it has exited
    if panels_visible(wm):
        refresh_cards(client)  # a range chosen since the last change
        changed |= pictures.update(wm)
    history_window.update(wm)  # the time axis moves; the artist may have closed the window
    if changed or (client.online and client.services):
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
